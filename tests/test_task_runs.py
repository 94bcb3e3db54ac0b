"""Task runs end to end: a tiny model learns to copy, greedy decoding agrees with the teacher-forced
exact match, every task composes with every encoding, and task results flow into compare."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from posbench.encodings import ENCODINGS
from posbench.evaluation.tasks import answer_scores, evaluate_task
from posbench.jobs.train import train
from posbench.model.transformer import Transformer
from posbench.reports.compare import Section, collect, compare, find_results
from posbench.reports.results import load_results
from posbench.runs.identity import RunIdentity
from posbench.tasks import TASKS, VOCAB_SIZE, Bucket, Decoding, TaskBatches, build_task, fixed_examples
from tests.conftest import compose_run, posbench_cli

COPY = [
    "task=copy",
    "task.train_lengths=[1,6]",
    "task.test_lengths=[6,12]",
    "task.test_examples=64",
    "train.max_steps=150",
    "train.batch_size=32",
    "train.lr=3e-3",
    "train.warmup_steps=10",
    "train.val_every=100",  # at step 100 and at the last
    "train.ckpt_every=0",
    "encoding=rope",
]


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    """A 2-layer model trained on copy at lengths 1..6 (a few seconds), with its results."""
    root = tmp_path_factory.mktemp("copy")
    run = compose_run("debug=smoke", "logger=jsonl", f"run_root={root}", *COPY)
    metrics = train(run, root / "run")
    return run, root / "run", metrics


def test_a_tiny_model_learns_to_copy_at_its_training_length(copy_run):
    _, _, metrics = copy_run
    losses = metrics["losses"]
    assert losses[150] < 0.3 * losses[1]
    inside = metrics["results"]["results"][0]
    assert (inside["length_min"], inside["length"]) == (1, 6)
    # chance is 1/2 per answer token and 2^-2n per answer of n symbols
    assert inside["token_accuracy"] > 0.9 and inside["accuracy"] > 0.5, inside


def test_greedy_decoding_gives_the_teacher_forced_exact_match(copy_run):
    run, _, _ = copy_run
    task = build_task(run.task)
    model = Transformer(run.model, run.encoding, VOCAB_SIZE)
    state = torch.load(copy_run[1] / "checkpoints" / "last.pt", weights_only=False)
    model.load_state_dict(state["model"])
    model.eval()
    for bucket in (Bucket(1, 6), Bucket(7, 12)):
        examples = fixed_examples(task, bucket)[:32]
        forced = answer_scores(model, examples, Decoding.teacher_forced, "cpu")
        greedy = answer_scores(model, examples, Decoding.greedy, "cpu")
        assert ((forced[:, 0] == forced[:, 1]) == (greedy[:, 0] == greedy[:, 1])).all()
        assert (greedy[:, 1] == forced[:, 1]).all()


def test_task_results_files_and_metrics(copy_run):
    _, run_dir, _ = copy_run
    document = load_results(run_dir)
    assert document["task"]["name"] == "copy" and document["identity"]["task"] == "copy"
    assert document["run_name"] == "copy-rope-L6-s0" and document["train_seq_len"] == 6
    header = (run_dir / "results.csv").read_text().splitlines()[0]
    assert "accuracy" in header and "token_accuracy" in header
    assert (run_dir / "accuracy.png").stat().st_size > 0
    eval_rows = [json.loads(line)["eval"] for line in (run_dir / "metrics.jsonl").open() if '"eval"' in line]
    assert [row["length"] for row in eval_rows] == [6, 12]
    assert all("accuracy" in row and "by_depth" not in row for row in eval_rows)


def test_validation_scores_the_training_range_as_its_final_result_does(copy_run):
    """The trainer's validation of a task logs the in-range exact match and per-token accuracy; at the
    last step (the same weights) they equal the first test bucket's, whose lengths are the training
    range's, and the answer loss falls from the first validation to the last."""
    _, run_dir, metrics = copy_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    validations = [r for r in records if "val/exact_match" in r]
    assert [r["step"] for r in validations] == [100, 150]
    inside = metrics["results"]["results"][0]
    assert validations[-1]["val/exact_match"] == pytest.approx(inside["accuracy"], abs=1e-12)
    assert validations[-1]["val/token_accuracy"] == pytest.approx(inside["token_accuracy"], abs=1e-12)
    assert validations[-1]["val/loss"] < validations[0]["val/loss"]


def test_a_finished_task_run_is_not_scored_again_unless_its_test_settings_change(copy_run):
    """train.resume=auto into a finished task run's folder returns its results untouched; other test
    settings (another task.test_examples) score it again, from its checkpoint, without training."""
    trained, run_dir, _ = copy_run
    run = dataclasses.replace(trained, train=dataclasses.replace(trained.train, resume="auto"))
    before = (run_dir / "results.json").read_bytes()
    again = train(run, run_dir)
    assert again["skipped"] and (run_dir / "results.json").read_bytes() == before
    other = dataclasses.replace(run, task=dataclasses.replace(run.task, test_examples=32))
    rescored = train(other, run_dir)["results"]
    assert rescored["step"] == 150 and rescored["train_wall_time_from_step"] == 150
    assert rescored["results"][0]["examples"] == 32
    train(run, run_dir)  # scored as the module's other tests expect again


def test_identity_of_a_task_run_ignores_the_corpus_and_the_test_settings():
    base = RunIdentity.of(compose_run("task=reverse", "encoding=alibi"))
    assert base.folder.startswith("reverse_alibi_L40_s0_") and base.train_len == 40
    same = [
        compose_run("task=reverse", "encoding=alibi", "data.val_plays=[hamlet]"),
        compose_run("task=reverse", "encoding=alibi", "task.test_lengths=[40,400]", "task.decoding=greedy"),
    ]
    assert all(RunIdentity.of(run).digest == base.digest for run in same)
    other = RunIdentity.of(compose_run("task=reverse", "encoding=alibi", "task.train_lengths=[1,20]"))
    assert other.digest != base.digest
    lm = RunIdentity.of(compose_run("encoding=alibi"))
    assert lm.task is None and "task" not in lm.to_dict()


@pytest.mark.parametrize(
    "name",
    [pytest.param(t, marks=[] if t == "copy" else pytest.mark.slow) for t in sorted(TASKS)],
)
def test_every_task_composes_with_every_encoding(name):
    """One training step and one small test bucket of each (task, encoding) pair: finite numbers."""
    overrides = {"passkey": [120, 240], "niah": [170, 240], "var_track": [120, 240], "binary_add": [3, 8]}
    lo, hi = overrides.get(name, [1, 8])
    for encoding in sorted(ENCODINGS):
        run = compose_run(
            "debug=smoke",
            f"encoding={encoding}",
            f"task={name}",
            f"task.train_lengths=[{lo},{hi}]",
            f"task.test_lengths=[{hi},{2 * hi}]",
            "task.test_examples=2",
            "task.depth_buckets=2",
            *(["encoding.max_positions=1024"] if encoding == "learned" else []),
        )
        torch.manual_seed(0)
        model = Transformer(run.model, run.encoding, VOCAB_SIZE)
        task = build_task(run.task)
        x, y = TaskBatches(task, 4, seed=0).next()
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        assert math.isfinite(loss.item()), (name, encoding)
        results = evaluate_task(model, task, "cpu")
        for result in results:
            assert result.status == "ok", (name, encoding, result.reason)
            assert 0 <= result.accuracy <= result.token_accuracy <= 1


def test_a_length_the_encoding_cannot_take_is_na_with_its_reason(tmp_path):
    run = compose_run(
        "debug=smoke",
        "logger=jsonl",
        f"run_root={tmp_path}",
        "encoding=learned",
        "encoding.max_positions=40",
        "task=copy",
        "task.train_lengths=[1,8]",
        "task.test_lengths=[8,40]",
        "train.max_steps=2",
    )
    rows = train(run, tmp_path / "run")["results"]["results"]
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "n/a" and "learned positions end at 40" in rows[1]["reason"]
    assert rows[1]["accuracy"] is None


def test_compare_tables_task_accuracy_apart_from_perplexity(tmp_path):
    for seed in (0, 1):
        run = compose_run(
            "debug=smoke",
            "logger=jsonl",
            f"run_root={tmp_path}",
            "task=parity",
            "task.train_lengths=[1,8]",
            "task.test_lengths=[8,16]",
            "task.test_examples=8",
            f"train.seed={seed}",
            "train.max_steps=2",
        )
        train(run, tmp_path / "sweep" / f"s{seed}")
    table = collect(find_results([tmp_path / "sweep"]))
    cells = table[(Section("parity", 8), "alibi")]
    assert sorted(cells) == [8, 16] and cells[16].seeds == [0, 1] and cells[16].length_min == 9
    text = compare([tmp_path / "sweep"])
    assert "### parity, trained on lengths up to 8 (exact-match accuracy, mean ± std over 2 seeds)" in text
    assert "per-token accuracy" in text and "9-16 (2L)" in text


@pytest.mark.slow
def test_eval_of_a_task_checkpoint_takes_new_test_lengths(copy_run, tmp_path):
    _, run_dir, _ = copy_run
    done = posbench_cli(
        "eval",
        f"checkpoint={run_dir}",
        "+task.test_lengths=[6,24]",
        "+task.decoding=greedy",
        f"run_root={tmp_path}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (results,) = tmp_path.rglob("results.json")
    document = load_results(results)
    assert [row["length"] for row in document["results"]] == [6, 24] and document["task"][
        "decoding"
    ] == "greedy"
    refused = posbench_cli(
        "eval", f"checkpoint={run_dir}", "+task.train_lengths=[1,9]", f"run_root={tmp_path}"
    )
    assert refused.returncode == 2 and "task.train_lengths" in refused.stderr


def test_test_buckets_take_the_planned_attention_paths():
    """A task bucket runs on whatever path the planner picks, as perplexity does: the memory-linear
    blockwise path gives the same accuracies as the whole-matrix one, and is what results record."""
    overrides = [
        "debug=smoke",
        "encoding=t5",
        "task=copy",
        "task.train_lengths=[1,8]",
        "task.test_lengths=[8,60]",
    ]
    runs = [
        compose_run(*overrides, f"model.attention={path}", "model.attention_block=32")
        for path in ("auto", "blockwise")
    ]
    torch.manual_seed(0)
    model = Transformer(runs[0].model, runs[0].encoding, VOCAB_SIZE)
    blockwise = Transformer(runs[1].model, runs[1].encoding, VOCAB_SIZE)
    blockwise.load_state_dict(model.state_dict())
    whole, by_blocks = (evaluate_task(m, build_task(runs[0].task), "cpu") for m in (model, blockwise))
    assert [r.backend for r in whole] == ["sdpa", "sdpa"] and [r.backend for r in by_blocks] == [
        "blockwise"
    ] * 2
    assert by_blocks[1].longest_tokens > 32
    for a, b in zip(whole, by_blocks):
        assert (a.accuracy, a.token_accuracy) == pytest.approx((b.accuracy, b.token_accuracy))


def test_what_a_task_run_cannot_honour_is_refused_before_training(tmp_path):
    from posbench.jobs.workload import workload_of

    scaled = compose_run("task=copy", "encoding=rope", "encoding/scaling=yarn")
    with pytest.raises(ValueError, match="RoPE scaling reads a training length in tokens"):
        workload_of(scaled)
    padded = compose_run("task=copy", "encoding=rope_randpos", "task.length_sampling=per_sequence")
    with pytest.raises(ValueError, match="use per_batch"):
        workload_of(padded)
    more_lengths = compose_run("task=copy", "train.val_lengths=[64]")
    with pytest.raises(ValueError, match=r"leave train\.val_lengths empty"):
        workload_of(more_lengths)
    sliding = compose_run("task=copy", "eval.protocol=sliding", "eval.stride=4")
    with pytest.raises(ValueError, match=r"scored by accuracy .*drop them"):
        workload_of(sliding)
