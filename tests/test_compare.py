"""Protects `posbench compare` from averaging what is not seeds, dropping runs without a word, and
writing anything before its inputs are read and its arguments checked."""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

import posbench.reports.compare as cmp
from posbench.reports.compare import Section, compare, find_results, gather
from posbench.reports.results import WriteError, validate_results
from tests.conftest import REPO


def row(length: int, ppl: float | None, protocol: str, stride: int | None) -> dict:
    ok = {"start": [0], "end": [length], "nll": [1.0], "tokens": [length]}
    return {
        "length": length,
        "protocol": protocol,
        "stride": stride,
        "status": "ok",
        "reason": None,
        "nll": None if ppl is None else math.log(ppl),
        "ppl": ppl,
        "tokens_scored": length,
        "windows": 1,
        "backend": "sdpa",
        "wall_time_s": 0.1,
        "position_curve": ok,
    }


def results_doc(
    seed: int,
    ppls: dict[int, float | None],
    *,
    encoding: str = "rope",
    train_len: int = 128,
    protocol: str = "nonoverlapping",
    stride: int | None = None,
    max_tokens: int = 2048,
    created: str = "2026-01-01T00:00:00Z",
    step: int = 100,
    overrides: dict | None = None,
    diverged: dict | None = None,
    lr: float = 0.001,
) -> dict:
    """A schema-valid results.json of a seedless experiment that depends on ``encoding`` and ``lr``."""
    doc = {
        "schema_version": 2,
        "created_utc": created,
        "posbench_version": "test",
        "run_name": f"{encoding}-L{train_len}-s{seed}",
        "encoding": encoding,
        "train_seq_len": train_len,
        "step": step,
        "model": {"name": "tiny", "parameters": 1, "non_embedding_parameters": 1},
        "device": "cpu",
        "protocol": {
            "name": protocol,
            "stride": stride,
            "max_tokens_per_length": max_tokens,
            "position_buckets": 1,
            "bucket_kind": "log",
            **dict.fromkeys(("stream", "bos", "scored", "aggregation", "position_curve"), "-"),
        },
        "eval_config": {
            "lengths": list(ppls),
            "protocol": protocol,
            "max_tokens": max_tokens,
            "position_buckets": 1,
        },
        "config": {"encoding": {"name": encoding}, "train": {"seed": seed, "lr": lr, "seq_len": train_len}},
        "results": [row(n, p, protocol, stride) for n, p in ppls.items()],
    }
    if overrides is not None:
        doc.update(checkpoint="runs/x/checkpoints/last.pt", overrides=overrides)
    if diverged is not None:
        doc["diverged"] = diverged
    validate_results(doc)
    return doc


def put(root: Path, name: str, doc: dict) -> Path:
    (root / name).mkdir(parents=True)
    path = root / name / "results.json"
    path.write_text(json.dumps(doc))
    return path


def test_protocols_strides_and_budgets_are_rows_never_seeds(tmp_path):
    for seed, base in ((0, 10.0), (1, 12.0)):
        put(tmp_path, f"train_s{seed}", results_doc(seed, {128: base, 256: base + 1}))
        put(tmp_path, f"slide_s{seed}", results_doc(seed, {128: base - 1}, protocol="sliding", stride=64))
        put(tmp_path, f"budget_s{seed}", results_doc(seed, {128: base + 5}, max_tokens=4096))
    table = gather(find_results([tmp_path])).table
    nonoverlapping = (
        Section("", 128),
        "rope (eval.max_tokens=2048, eval.protocol=nonoverlapping, eval.stride=None)",
    )
    sliding = (Section("", 128), "rope (eval.max_tokens=2048, eval.protocol=sliding, eval.stride=64)")
    budget = (Section("", 128), "rope (eval.max_tokens=4096, eval.protocol=nonoverlapping, eval.stride=None)")
    assert sorted(table) == sorted([nonoverlapping, sliding, budget])
    assert table[nonoverlapping][128].values == [10.0, 12.0] and sorted(table[nonoverlapping][128].seeds) == [
        0,
        1,
    ]
    assert table[sliding][128].mean == pytest.approx(10.0) and sorted(table[sliding][128].seeds) == [0, 1]
    assert table[budget][128].mean == pytest.approx(16.0)
    text = compare([tmp_path])
    assert "over 2 seeds" in text and "over 4 seeds" not in text and "over 6 seeds" not in text
    # keeping one protocol leaves one experiment of that name: no label suffix needed for it alone
    only = gather(find_results([tmp_path]), "sliding").table
    assert sorted(only) == [(Section("", 128), "rope")] and only[(Section("", 128), "rope")][128].values == [
        9.0,
        11.0,
    ]


def test_one_checkpoint_evaluated_twice_is_one_seed_and_the_newest_counts(tmp_path):
    put(tmp_path, "train_s0", results_doc(0, {128: 10.0}, created="2026-01-01T00:00:00Z"))
    put(tmp_path, "train_s1", results_doc(1, {128: 14.0}, created="2026-01-01T00:00:00Z"))
    # posbench eval of seed 0's checkpoint, the same way; a logger override changes no number
    logger = {"logger": {"name": "jsonl"}, "model": {"attention": "eager"}}
    again = put(
        tmp_path, "eval_s0", results_doc(0, {128: 10.5}, created="2026-01-02T00:00:00Z", overrides=logger)
    )
    table = gather(find_results([tmp_path])).table
    assert list(table) == [(Section("", 128), "rope")]
    cell = table[(Section("", 128), "rope")][128]
    assert sorted(cell.seeds) == [0, 1] and sorted(cell.values) == [10.5, 14.0]  # not three "seeds"
    text = compare([tmp_path])
    assert "| rope | 12.25 ± 2.47 |" in text and "over 2 seeds" in text
    assert f"evaluated 2 times, the newest value of each length kept: rope-L128-s0 (128 from {again})" in text


def test_an_older_evaluation_still_gives_the_lengths_a_newer_one_lacks(tmp_path):
    """One checkpoint evaluated at [128, 512], then again at [128] only: 512 is not dropped, 128 is the
    newer file's, and the note says which file each came from."""
    first = put(tmp_path, "eval_a", results_doc(0, {128: 10.0, 512: 20.0}, created="2026-01-01T00:00:00Z"))
    second = put(tmp_path, "eval_b", results_doc(0, {128: 11.0}, created="2026-01-02T00:00:00Z"))
    cells = gather(find_results([tmp_path])).table[(Section("", 128), "rope")]
    assert cells[128].values == [11.0] and cells[512].values == [20.0]
    text = compare([tmp_path])
    assert f"rope-L128-s0 (128 from {second}; 512 from {first})" in text


def test_overrides_laid_over_a_checkpoint_make_another_row(tmp_path):
    put(tmp_path, "train_s0", results_doc(0, {128: 10.0}))
    # the evaluated config says base=500 as a run trained with it would; the weights are not that run's
    base = {"encoding": {"base": 500}, "logger": {"name": "jsonl"}}
    put(tmp_path, "eval_s0", results_doc(0, {128: 30.0}, overrides=base, created="2026-01-02T00:00:00Z"))
    table = gather(find_results([tmp_path])).table
    assert table[(Section("", 128), "rope (no overrides)")][128].values == [10.0]
    assert table[(Section("", 128), "rope (overrides: encoding.base=500)")][128].values == [30.0]


def test_an_evaluation_of_an_earlier_checkpoint_is_not_a_seed(tmp_path):
    put(tmp_path, "final_s0", results_doc(0, {128: 10.0}, step=100))
    put(tmp_path, "early_s1", results_doc(1, {128: 20.0}, step=40))
    assert sorted(gather(find_results([tmp_path])).table) == [
        (Section("", 128), "rope (step=100)"),
        (Section("", 128), "rope (step=40)"),
    ]


def test_diverged_and_non_finite_runs_are_named_not_dropped(tmp_path):
    put(tmp_path, "s0", results_doc(0, {128: 10.0, 256: 11.0}))
    put(tmp_path, "s1", results_doc(1, {128: 12.0, 256: None}))  # a non-finite value at one length
    diverged = {"step": 3, "last_finite_loss": 4.2101, "checkpoint": None}
    put(tmp_path, "s2", results_doc(2, {128: None, 256: None}, step=3, diverged=diverged))
    lost = {"step": 7, "last_finite_loss": None, "checkpoint": "x.pt"}
    put(tmp_path, "other", results_doc(0, {64: None}, train_len=64, step=7, diverged=lost))
    comparison = gather(find_results([tmp_path]))
    assert comparison.table[(Section("", 128), "rope")][256].values == [11.0]
    assert comparison.notes[Section("", 128)] == [
        "not finite, not averaged: rope-L128-s1 at 256",
        "diverged, not averaged: rope-L128-s2 (step 3, last finite loss 4.21)",
    ]
    text = compare([tmp_path])
    assert "| rope | 11.00 ± 1.41 | 11.00 |" in text
    assert "- diverged, not averaged: rope-L128-s2 (step 3, last finite loss 4.21)" in text
    assert "- not finite, not averaged: rope-L128-s1 at 256" in text
    assert "### Trained at L = 64" in text and "(no run to average)" in text
    assert "- diverged, not averaged: rope-L64-s0 (step 7, no finite loss)" in text


def test_a_diverged_run_is_named_by_the_row_of_its_experiment(tmp_path):
    put(tmp_path, "a", results_doc(0, {128: 10.0}, lr=0.001))
    put(tmp_path, "b", results_doc(0, {128: 20.0}, lr=0.002))
    diverged = {"step": 5, "last_finite_loss": 3.0, "checkpoint": None}
    put(tmp_path, "c", results_doc(1, {128: None}, lr=0.002, step=5, diverged=diverged))
    notes = gather(find_results([tmp_path])).notes[Section("", 128)]
    assert notes == ["diverged, not averaged: rope (train.lr=0.002) seed 1 (step 5, last finite loss 3.00)"]


def posbench_compare(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "posbench", "compare", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_bogus_protocol_is_refused_in_one_line_before_anything_is_written(tmp_path):
    put(tmp_path, "s0", results_doc(0, {128: 10.0}))
    before = b"# an earlier comparison\n"
    (tmp_path / "comparison.md").write_bytes(before)
    result = posbench_compare(str(tmp_path), "--protocol", "bogus")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: unknown --protocol 'bogus'; valid protocols: nonoverlapping, sliding, truncated"
    ]
    assert (tmp_path / "comparison.md").read_bytes() == before
    assert not (tmp_path / "comparison.png").exists()
    with pytest.raises(
        ValueError, match="none of the 1 results files has sliding results; they hold: nonoverl"
    ):
        compare([tmp_path], protocol="sliding")  # a valid protocol that no file has
    assert (tmp_path / "comparison.md").read_bytes() == before


def test_every_bad_results_file_is_named_and_nothing_is_written(tmp_path):
    put(tmp_path, "good", results_doc(0, {128: 10.0}))
    broken = put(tmp_path, "broken", results_doc(1, {128: 10.0}))
    broken.write_text('{"schema_version": 2, ')  # cut short
    invalid_doc = results_doc(2, {128: 10.0})
    invalid_doc["results"][0]["ppl"] = "ten"
    invalid = put(tmp_path, "invalid", invalid_doc)
    (tmp_path / "comparison.md").write_text("old")
    with pytest.raises(ValueError) as err:
        compare([tmp_path])
    message = str(err.value)
    assert "2 of 3 results files cannot be read, nothing written" in message and "\n" not in message
    assert f"{broken}: Expecting" in message
    assert f"{invalid}: results document breaks schema version 3 at results/0/ppl" in message
    assert (tmp_path / "comparison.md").read_text() == "old" and not (tmp_path / "comparison.png").exists()
    result = posbench_compare(str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert str(broken) in result.stderr and str(invalid) in result.stderr and "Traceback" not in result.stderr


def test_disk_full_writing_the_comparison_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    put(tmp_path, "s0", results_doc(0, {128: 10.0}))
    (tmp_path / "comparison.png").write_bytes(b"old png")
    real = cmp.atomic_write

    @contextmanager
    def full_disk(path, mode="w"):
        with real(path, mode) as handle:
            if Path(path).name == "comparison.png":
                handle.write(b"half a")
                raise OSError(errno.ENOSPC, "No space left on device")
            yield handle

    monkeypatch.setattr(cmp, "atomic_write", full_disk)
    with pytest.raises(WriteError) as err:
        compare([tmp_path])
    assert str(err.value) == (
        f"no space left on the device while writing {tmp_path / 'comparison.png'} (the previous "
        "comparison.png is kept); free space there or pass --out DIR on another disk"
    )
    assert (tmp_path / "comparison.png").read_bytes() == b"old png"
    assert "| rope | 10.00 |" in (tmp_path / "comparison.md").read_text()  # written whole before it
    assert not list(tmp_path.glob(".tmp-*"))


def test_an_override_counts_by_the_value_it_resolved_to(tmp_path):
    """``original_max_position`` written as ``${train.seq_len}`` in one evaluation and as another
    interpolation in the next is one setting: both seeds share a row."""
    for seed, spelled in ((0, "${train.seq_len}"), (1, "${posbench_trained_length:null,${train.seq_len}}")):
        doc = results_doc(seed, {128: 10.0 + seed})
        doc["overrides"] = {"encoding": {"scaling": {"kind": "yarn", "original_max_position": spelled}}}
        doc["config"]["encoding"]["scaling"] = {"kind": "yarn", "original_max_position": 128}
        put(tmp_path, f"s{seed}", doc)
    table = gather(find_results([tmp_path])).table
    assert len(table) == 1 and next(iter(table.values()))[128].values == [10.0, 11.0]


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda d: d["results"][0].update(ppl=-3.0), "at length 128 ppl -3.0 is not exp(nll"),
        (lambda d: d["results"].append(dict(d["results"][0])), "length 128 appears twice"),
    ],
)
def test_a_hand_edited_file_that_contradicts_itself_is_refused_naming_it(edit, expected, tmp_path):
    put(tmp_path, "good", results_doc(0, {128: 10.0, 256: 11.0}))
    bad = results_doc(1, {128: 12.0, 256: 13.0})
    edit(bad)
    path = put(tmp_path, "edited", bad)
    with pytest.raises(ValueError, match=re.escape(f"{path}: the results contradict themselves: {expected}")):
        compare([tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_dangling_results_link_is_named_not_skipped(tmp_path):
    put(tmp_path, "good", results_doc(0, {128: 10.0}))
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "results.json").symlink_to(tmp_path / "nowhere" / "results.json")
    with pytest.raises(ValueError, match=r"1 results.json link\(s\) point at nothing.*gone/results.json"):
        compare([tmp_path], tmp_path / "out")


def test_not_evaluated_cannot_evaluate_and_not_finite_read_apart(tmp_path):
    """A length a row was never evaluated at shows –, one it could not be evaluated at n/a (its reason
    below), one whose every value is null 'not finite'; a table of only null values is still written,
    with its plot."""
    put(tmp_path, "short", results_doc(0, {128: 10.0}, encoding="alibi"))
    doc = results_doc(0, {128: 12.0, 256: 13.0, 512: None})
    doc["results"][1].update(
        status="n/a",
        reason="past the learned table",
        nll=None,
        ppl=None,
        windows=0,
        tokens_scored=0,
        position_curve=None,
        backend=None,
    )
    put(tmp_path, "rope", doc)
    text = compare([tmp_path], tmp_path / "out")
    assert "| alibi | 10.00 | – | – |" in text and "| rope | 12.00 | n/a | not finite |" in text
    only_null = tmp_path / "null"
    put(only_null, "s0", results_doc(0, {128: None}))
    text = compare([only_null], only_null / "out")
    assert "| rope | not finite |" in text and (only_null / "out" / "comparison.png").stat().st_size > 0


def test_a_protocol_filter_says_what_it_left_out(tmp_path):
    put(tmp_path, "slide", results_doc(0, {128: 9.0}, protocol="sliding", stride=64))
    put(tmp_path, "plain", results_doc(0, {128: 10.0}))
    text = compare([tmp_path], tmp_path / "out", protocol="sliding")
    assert text.startswith("--protocol sliding left out 1 results files: 1 with no sliding numbers")


def test_a_protocol_filter_names_the_task_results_it_leaves_out(tmp_path):
    task = Path(__file__).parents[1] / "experiments/synthetic-tasks/grid/copy/copy_rope_L16_s0_c20116"
    (tmp_path / "copy").mkdir()
    shutil.copy(task / "results.json", tmp_path / "copy" / "results.json")
    put(tmp_path, "plain", results_doc(0, {128: 10.0}))
    assert "### copy, trained on lengths up to 16" in compare([tmp_path], tmp_path / "all")
    text = compare([tmp_path], tmp_path / "out", protocol="nonoverlapping")
    assert text.startswith(
        "--protocol nonoverlapping left out 1 results files: 1 of tasks (scored by accuracy, "
        "not by a perplexity protocol)"
    )
    assert "### copy" not in text and "| rope | 10.00 |" in text


def test_a_row_with_another_seed_count_is_named_in_the_heading(tmp_path):
    for seed in (0, 1, 2):
        put(tmp_path, f"rope_s{seed}", results_doc(seed, {128: 10.0 + seed}))
    for seed in (0, 1):
        put(tmp_path, f"nope_s{seed}", results_doc(seed, {128: 11.0}, encoding="nope"))
        put(tmp_path, f"t5_s{seed}", results_doc(seed, {128: 12.0}, encoding="t5"))
    put(tmp_path, "alibi_s0", results_doc(0, {128: 9.0}, encoding="alibi"))
    text = compare([tmp_path], tmp_path / "out")  # most rows have 2 seeds: the heading says 2
    assert "(perplexity, mean ± std over 2 seeds; other counts: alibi (1), rope (3))" in text
