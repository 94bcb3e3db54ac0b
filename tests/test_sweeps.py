"""Protects the sweep workflow: multirun lands in one sweep folder, compare aggregates it, launcher configs
compose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posbench.reports.compare import Section, collect, compare, find_results
from posbench.reports.results import load_results
from posbench.runs.identity import RunIdentity
from tests.conftest import compose_config, compose_run, posbench_cli

# a smoke-sized multirun through the CLI, as a user types it (``posbench_cli``)
TRAIN_M = ["train", "-m", "debug=smoke", "logger=jsonl"]


def identity_folder(*overrides: str) -> str:
    return RunIdentity.of(compose_run(*overrides)).folder


def fake_results(
    path: Path,
    encoding: str,
    train_len: int,
    seed: int,
    ppls: dict[int, float | None],
    train: dict | None = None,
) -> None:
    path.mkdir(parents=True)
    rows = [
        {
            "length": n,
            "protocol": "nonoverlapping",
            "status": "ok" if p else "n/a",
            "ppl": p,
            "reason": None if p else "table ends",
        }
        for n, p in ppls.items()
    ]
    doc = {
        "encoding": encoding,
        "train_seq_len": train_len,
        "config": {"train": {"seed": seed, **(train or {})}},
        "results": rows,
    }
    (path / "results.json").write_text(json.dumps(doc))


def test_compare_aggregates_seeds_per_encoding_and_train_length(tmp_path, monkeypatch):
    import posbench.reports.compare as cmp

    monkeypatch.setattr(cmp, "load_results", lambda p: json.loads(Path(p).read_text()))
    fake_results(tmp_path / "a", "alibi", 128, 0, {128: 10.0, 256: 12.0})
    fake_results(tmp_path / "b", "alibi", 128, 1, {128: 14.0, 256: 12.0})
    fake_results(tmp_path / "c", "learned", 128, 0, {128: 9.0, 256: None})
    fake_results(tmp_path / "d", "alibi", 64, 0, {64: 20.0})
    table = collect(find_results([tmp_path]))
    cell = table[(Section("", 128), "alibi")][128]
    assert cell.mean == pytest.approx(12.0) and cell.std == pytest.approx(2.8284271, rel=1e-6)
    assert sorted(cell.seeds) == [0, 1]
    assert table[(Section("", 128), "learned")][256].missing == "table ends"
    text = compare([tmp_path])
    assert "| alibi | 12.00 ± 2.83 | 12.00 ± 0.00 |" in text
    assert "| learned | 9.00 | n/a |" in text
    assert "Trained at L = 64" in text and "Trained at L = 128" in text
    assert (tmp_path / "comparison.png").stat().st_size > 1000
    assert (tmp_path / "comparison.md").read_text() == text


def test_compare_without_results_says_so(tmp_path):
    result = posbench_cli("compare", str(tmp_path))
    assert result.returncode == 2 and "no results.json" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_multirun_two_encodings_by_two_lengths_then_compare(tmp_path):
    grid = "encoding=alibi,nope train.seq_len=32,64 train.max_steps=2 train.val_every=0"
    evaluation = "eval.lengths=[64,128] eval.max_tokens=256"
    where = [f"run_root={tmp_path}", "experiment_name=sweep"]
    result = posbench_cli(*TRAIN_M, *grid.split(), *evaluation.split(), *where, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "sweep").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [job.rsplit("_", 1)[0] for job in jobs] == [
        "alibi_L32_s0",
        "alibi_L64_s0",
        "nope_L32_s0",
        "nope_L64_s0",
    ]
    assert jobs == sorted(
        identity_folder("debug=smoke", f"encoding={e}", f"train.seq_len={n}", "train.max_steps=2")
        for e in ("alibi", "nope")
        for n in (32, 64)
    )
    out = posbench_cli("compare", str(sweep), cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Trained at L = 32" in out.stdout and "| nope |" in out.stdout
    assert (sweep / "comparison.png").exists() and (sweep / "comparison.md").exists()


@pytest.mark.parametrize(
    "launcher,target",
    [
        ("slurm", "hydra_plugins.posbench_launchers.SlurmLauncher"),
        ("submitit_local", "hydra_plugins.posbench_launchers.LocalLauncher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("local", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
    ],
)
def test_launcher_configs_compose_to_their_launcher(launcher, target):
    from hydra import compose, initialize_config_dir

    from posbench.cli import CONFIG_DIR

    compose_config()  # the schemas and resolvers registered
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        overrides = [f"hydra/launcher={launcher}", "experiment=train_length_sweep"]
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target and cfg.experiment_name == "train_length_sweep"


def test_slurm_launcher_fields():
    from hydra import compose, initialize_config_dir

    from posbench.cli import CONFIG_DIR
    from posbench.config import register_schemas
    from posbench.runs.resolvers import register_resolvers

    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)


def test_sweep_experiments_declare_their_grid():
    cfg = compose_config("experiment=train_length_sweep")
    from hydra import compose, initialize_config_dir

    from posbench.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        full = compose("train", overrides=["experiment=train_length_sweep"], return_hydra_config=True)
    params = full.hydra.sweeper.params
    assert params["encoding"] == "sinusoidal,rope,alibi,t5,nope"
    assert params["train.seq_len"] == "512,1024,2048"
    assert cfg.eval.lengths[-1] == 16384


def test_wandb_run_is_named_and_grouped_for_comparison(smoke_run, tmp_path, monkeypatch):
    import posbench.jobs.train as loop
    from posbench.tracking import NullTracker

    seen = {}

    def fake_tracker(cfg, run_dir, config, name, group=None, rank=0, job_type="train", resume_step=None):
        seen.update(name=name, group=group, config=config)
        return NullTracker()

    monkeypatch.setattr(loop, "build_tracker", fake_tracker)
    run = smoke_run(
        "encoding=rope", "train.seed=3", "train.max_steps=1", "eval.enabled=false", "experiment_name=study"
    )
    loop.train(run, tmp_path / "run", choices={"encoding": "rope", "model": "tiny"})
    assert seen["name"] == "rope-L128-s3" and seen["group"] == "study"
    assert seen["config"]["choices"]["encoding"] == "rope" and seen["config"]["train"]["seq_len"] == 128


# ---- one run identity: folders, resume and compare keys agree ----------------------------------

VARIANTS = [("none", 0), ("none", 1), ("yarn", 0), ("yarn", 1)]  # rope and rope+yarn, two seeds each


def resolved_sweep_subdir(*overrides: str) -> str:
    """What Hydra names a sweep job's folder, through the resolver configs/train.yaml uses."""
    from hydra import compose, initialize_config_dir

    from posbench.cli import CONFIG_DIR
    from posbench.config import register_schemas
    from posbench.runs.resolvers import register_resolvers

    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return str(cfg.hydra.sweep.subdir)


def test_variants_and_seeds_of_one_experiment_get_distinct_folders():
    folders = [
        resolved_sweep_subdir(
            "debug=smoke", "encoding=rope", f"encoding/scaling={kind}", f"train.seed={seed}"
        )
        for kind, seed in VARIANTS
    ]
    assert len(set(folders)) == 4
    assert [f.rsplit("_", 1)[0] for f in folders] == [
        "rope_L128_s0",
        "rope_L128_s1",
        "rope+yarn_L128_s0",
        "rope+yarn_L128_s1",
    ]
    assert folders[0] == identity_folder(
        "debug=smoke", "encoding=rope", "encoding/scaling=none", "train.seed=0"
    )
    lr = resolved_sweep_subdir("debug=smoke", "encoding=rope", "train.lr=0.01")
    assert (
        lr.startswith("rope_L128_s0_") and lr != folders[0]
    )  # same label, length and seed: another experiment
    logging_only = resolved_sweep_subdir(
        "debug=smoke", "encoding=rope", "train.log_every=1", "train.device=cpu"
    )
    assert logging_only == folders[0]  # how a run is logged or where it runs is not its identity


@pytest.mark.slow
def test_identity_splits_experiment_keys_from_execution_keys():
    base = RunIdentity.of(compose_run("debug=smoke", "encoding=rope"))
    seed = RunIdentity.of(compose_run("debug=smoke", "encoding=rope", "train.seed=1"))
    yarn = RunIdentity.of(compose_run("debug=smoke", "encoding=rope", "encoding/scaling=yarn"))
    assert (base.name, yarn.name, seed.name) == ("rope-L128-s0", "rope+yarn-L128-s0", "rope-L128-s1")
    assert seed.seedless_digest == base.seedless_digest and seed.digest != base.digest
    assert yarn.seedless_digest != base.seedless_digest
    for same in (
        "train.resume=true",
        "train.stop_after_steps=2",
        "train.ckpt_every=1",
        "train.val_every=0",
        "train.val_tokens=64",
        "train.compile=true",
        "train.activation_checkpointing=true",
        "train.loss_chunk=64",
        "eval.lengths=[64]",
        "logger=none",
        "experiment_name=x",
        "model.attention=blockwise",
        "model.attention_block=64",
    ):
        assert RunIdentity.of(compose_run("debug=smoke", "encoding=rope", same)) == base, same
    for other in (
        "train.lr=0.01",
        "train.max_steps=7",
        "model.n_layers=3",
        "encoding.base=500",
        "train.batch_size=8",
    ):
        assert (
            RunIdentity.of(compose_run("debug=smoke", "encoding=rope", other)).seedless_digest
            != base.seedless_digest
        ), other


def test_compare_keeps_experiments_that_share_a_label_apart(tmp_path, monkeypatch):
    import posbench.reports.compare as cmp

    monkeypatch.setattr(cmp, "load_results", lambda p: json.loads(Path(p).read_text()))
    fake_results(tmp_path / "a", "rope", 128, 0, {128: 10.0}, {"lr": 0.001})
    fake_results(tmp_path / "b", "rope", 128, 1, {128: 12.0}, {"lr": 0.001})
    fake_results(tmp_path / "c", "rope", 128, 0, {128: 20.0}, {"lr": 0.002})
    fake_results(tmp_path / "d", "rope+yarn", 128, 0, {128: 30.0}, {"lr": 0.001})
    table = collect(find_results([tmp_path]))
    assert sorted(table) == [
        (Section("", 128), "rope (train.lr=0.001)"),
        (Section("", 128), "rope (train.lr=0.002)"),
        (Section("", 128), "rope+yarn"),
    ]
    assert table[(Section("", 128), "rope (train.lr=0.001)")][128].mean == pytest.approx(
        11.0
    )  # its two seeds
    assert table[(Section("", 128), "rope (train.lr=0.002)")][128].values == [20.0]
    text = compare([tmp_path])
    assert "| rope (train.lr=0.001) | 11.00 ± 1.41 |" in text and "| rope+yarn | 30.00 |" in text


@pytest.mark.slow
def test_a_joblib_sweep_of_rope_and_yarn_by_two_seeds_writes_four_folders_and_compares_apart(tmp_path):
    grid = "encoding=rope encoding/scaling=none,yarn train.seed=0,1 train.max_steps=2 train.val_every=0"
    rest = "eval.lengths=[128] eval.max_tokens=256 hydra/launcher=joblib hydra.launcher.n_jobs=2"
    where = [f"run_root={tmp_path}", "experiment_name=variants"]
    result = posbench_cli(*TRAIN_M, *grid.split(), *rest.split(), *where, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "variants").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "results.json").is_file())
    assert jobs == sorted(
        identity_folder(
            "debug=smoke",
            "encoding=rope",
            f"encoding/scaling={kind}",
            f"train.seed={seed}",
            "train.max_steps=2",
        )
        for kind, seed in VARIANTS
    )
    text = compare([sweep])
    assert "| rope | " in text and "| rope+yarn | " in text and "over 2 seeds" in text


def job_nlls(sweep: Path) -> dict[str, dict[int, float]]:
    return {
        p.parent.name: {row["length"]: row["nll"] for row in load_results(p)["results"]}
        for p in sweep.glob("*/results.json")
    }


@pytest.mark.slow
def test_a_sweep_stopped_mid_job_and_rerun_equals_an_uninterrupted_one_and_a_rerun_of_it_runs_nothing(
    tmp_path,
):
    """train.resume=auto with a fixed hydra.sweep.dir: the rerun resumes each stopped job from its own
    checkpoint; a rerun of a finished sweep trains nothing and says so for every job."""
    grid = "encoding=alibi,nope train.max_steps=6 train.ckpt_every=2 train.val_every=0 train.resume=auto"
    common = [*TRAIN_M, *grid.split(), "eval.lengths=[64,128]", "eval.max_tokens=256"]

    def sweep(name: str, *extra: str):
        where = [f"run_root={tmp_path / name}", f"hydra.sweep.dir={tmp_path / name / 'sweep'}"]
        result = posbench_cli(*common, *where, *extra, cwd=tmp_path, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    sweep("whole")
    sweep("stopped", "train.stop_after_steps=3")
    assert not list((tmp_path / "stopped").rglob("results.json"))  # every job stopped mid-way
    sweep("stopped")
    whole, rerun = job_nlls(tmp_path / "whole" / "sweep"), job_nlls(tmp_path / "stopped" / "sweep")
    assert sorted(whole) == sorted(rerun) and len(whole) == 2
    for job in whole:
        for length in whole[job]:
            assert rerun[job][length] == pytest.approx(whole[job][length], rel=1e-6), (job, length)
    before = {p: p.read_bytes() for p in (tmp_path / "stopped").rglob("results.json")}
    again = sweep("stopped")
    assert again.stdout.count("already finished") == 2
    assert {p: p.read_bytes() for p in before} == before


def test_a_results_file_from_before_an_eval_key_existed_still_counts_as_finished():
    """A committed study's results.json records the eval group as it was; keys added to posbench since
    (at their defaults) must not make a sweep rerun retrain the finished job."""
    import dataclasses

    from posbench.config import EvalConfig, to_plain_dict
    from posbench.training.resume import scored_as_configured

    run = compose_run("eval.lengths=[64,128]")
    recorded = {k: v for k, v in to_plain_dict(run.eval).items() if k not in ("add_bos", "documents")}
    assert scored_as_configured({"eval_config": recorded}, run)
    bos = dataclasses.replace(run, eval=dataclasses.replace(run.eval, add_bos=True))
    assert not scored_as_configured({"eval_config": recorded}, bos)  # a new key set: scored otherwise
    other = {**recorded, "max_tokens": 7}
    assert not scored_as_configured({"eval_config": other}, run)
    assert not scored_as_configured({}, run) and EvalConfig().add_bos is False
