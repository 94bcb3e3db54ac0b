"""Protects the results of an evaluation: results.json against its schema, the CSVs, the printed table, the
plots, and what reaches the tracker (n/a and diverged lengths included)."""

from __future__ import annotations

import copy
import csv
import errno
import json

import numpy as np
import pytest
import torch

from posbench.evaluation.report import ReportTarget, evaluate_and_report, run_metadata
from posbench.model.transformer import Transformer
from posbench.reports.plots import plot_extrapolation, plot_position_loss
from posbench.reports.results import (
    CSV_FIELDS,
    POSITION_CSV_FIELDS,
    RESULTS_SCHEMA_VERSION,
    format_table,
    load_results,
    validate_results,
)
from posbench.runs.identity import RunIdentity
from tests.conftest import compose_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LENGTHS = [8, 16, 32]  # the learned table ends at 16: 32 is n/a


class RecordingTracker:
    def __init__(self):
        self.eval_rows, self.images, self.summaries, self.closed = [], {}, [], False

    def log(self, metrics, step=None):
        raise AssertionError("evaluation logs through log_eval, never log()")

    def log_eval(self, rows):
        self.eval_rows += rows

    def log_image(self, key, path):
        self.images[key] = path

    def summary(self, values):
        self.summaries.append(values)

    def close(self):
        self.closed = True


@pytest.fixture(autouse=True)
def one_thread():
    """Shared cores: a second OpenMP thread spin-waits and slows tiny forwards ~100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def evaluate(tmp_path, diverged: bool = False, *overrides: str):
    """evaluate_and_report of a smoke-sized learned-position model on a synthetic stream."""
    run = compose_run(
        "debug=smoke",
        "logger=jsonl",
        "encoding=learned",
        "train.seq_len=16",
        f"eval.lengths=[{','.join(map(str, LENGTHS))}]",
        "eval.max_tokens=64",
        "eval.position_buckets=4",
        *overrides,
    )
    torch.manual_seed(0)
    model = Transformer(run.model, run.encoding, 32).eval()
    if diverged:
        with torch.no_grad():
            model.lm_head.weight.fill_(float("nan"))
    stream = np.random.default_rng(0).integers(0, 32, size=500).astype(np.uint16)
    tracker = RecordingTracker()
    meta = run_metadata(
        run,
        RunIdentity.of(run),
        model,
        {"corpus": "synthetic"},
        {"run_name": "learned-L16-s0", "step": 0, "tokens_seen": 0},
    )
    target = ReportTarget(tmp_path, tracker, torch.device("cpu"), meta)
    document = evaluate_and_report(model, stream, 0, run.eval, run.train.precision, target)
    return document, tracker


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("evaluated")
    torch.set_num_threads(1)  # set up before one_thread
    try:
        document, tracker = evaluate(out)
    finally:
        torch.set_num_threads(before)
    return out, document, tracker


def test_results_json_validates_and_states_its_protocol(evaluated):
    out, document, _ = evaluated
    loaded = load_results(out)  # validates against posbench/schemas/results.schema.json
    assert loaded == document and loaded["schema_version"] == RESULTS_SCHEMA_VERSION
    assert [row["length"] for row in loaded["results"]] == LENGTHS
    assert loaded["encoding"] == "learned" and loaded["train_seq_len"] == 16
    assert loaded["protocol"]["name"] == "nonoverlapping" and "BOS" in loaded["protocol"]["bos"]
    assert loaded["eval_config"]["max_tokens"] == 64 and loaded["device"] == "cpu"
    ok, na = loaded["results"][1], loaded["results"][2]
    assert ok["tokens_scored"] == 64 and ok["backend"] and ok["wall_time_s"] >= 0
    assert na["status"] == "n/a" and "learned positions end at 16" in na["reason"]


def read_csv(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_csvs_hold_every_length_and_every_bucket(evaluated):
    out, document, _ = evaluated
    fields, rows = read_csv(out / "results.csv")
    assert tuple(fields) == CSV_FIELDS
    assert [int(r["length"]) for r in rows] == LENGTHS
    for row, result in zip(rows, document["results"]):
        assert row["encoding"] == "learned" and int(row["train_seq_len"]) == 16
        assert (float(row["ppl"]) if row["ppl"] else None) == (
            pytest.approx(result["ppl"]) if result["ppl"] else None
        )
    assert rows[2]["status"] == "n/a" and rows[2]["ppl"] == "" and "learned positions" in rows[2]["reason"]
    fields, buckets = read_csv(out / "position_loss.csv")
    assert tuple(fields) == POSITION_CSV_FIELDS
    for result in document["results"][:2]:
        mine = [b for b in buckets if int(b["length"]) == result["length"]]
        assert sum(int(b["tokens"]) for b in mine) == result["tokens_scored"]


def test_plots_are_written_and_non_empty(evaluated):
    out, _, tracker = evaluated
    for name in ("extrapolation.png", "position_loss.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert set(tracker.images) == {"plots/extrapolation", "plots/position_loss", "plots/attention"}


def test_tracker_gets_rows_per_length_and_a_summary(evaluated):
    _, document, tracker = evaluated
    assert [row["length"] for row in tracker.eval_rows] == LENGTHS
    assert all("position_curve" not in row for row in tracker.eval_rows)
    assert tracker.eval_rows[1]["x_train"] == 1.0
    [summary] = tracker.summaries
    assert summary["eval/ppl@16"] == document["results"][1]["ppl"] == summary["eval/ppl_at_train_len"]
    assert "eval/ppl@32" not in summary  # n/a


def test_printed_table_shows_ppl_tokens_and_na(tmp_path, capsys):
    document, _ = evaluate(tmp_path)
    out = capsys.readouterr().out
    assert "Perplexity of learned trained at 16 (nonoverlapping windows)" in out
    assert format_table(document["results"], 16) in out
    na_line = next(line for line in out.splitlines() if line.lstrip().startswith("32 "))
    assert "n/a" in na_line and "learned positions end at 16" in na_line


def test_a_diverged_model_gives_null_numbers_and_still_valid_files(tmp_path):
    document, _ = evaluate(tmp_path, True)
    row = document["results"][0]
    assert row["status"] == "ok" and row["nll"] is None and row["ppl"] is None and row["tokens_scored"] == 64
    json.loads((tmp_path / "results.json").read_text())  # strict JSON: no NaN literal
    load_results(tmp_path)
    assert (tmp_path / "extrapolation.png").stat().st_size > 0
    assert "nan" in format_table(document["results"], 16)


def test_sliding_results_carry_their_stride(tmp_path):
    document, _ = evaluate(tmp_path, False, "eval.protocol=sliding", "eval.stride=4")
    assert [row["stride"] for row in document["results"]] == [4, 4, 4]
    assert document["protocol"]["stride"] == 4
    load_results(tmp_path)


@pytest.mark.parametrize(
    "breakage,where",
    [
        (lambda d: d.pop("encoding"), "encoding"),
        (lambda d: d.update(schema_version=1), "schema_version"),
        (lambda d: d["results"][2].update(ppl=3.0), "results/2"),
        (lambda d: d["results"][0].update(position_curve=None), "results/0"),
        (lambda d: d["results"][0].update(stride=4), "results/0"),
        (lambda d: d["results"][0]["position_curve"].update(tokens=[0]), "results/0"),
        (lambda d: d["results"][1].update(extra=1), "results/1"),
    ],
)
def test_schema_rejects_broken_documents(evaluated, breakage, where):
    _, document, _ = evaluated
    broken = copy.deepcopy(document)
    breakage(broken)
    with pytest.raises(ValueError, match=where):
        validate_results(broken)


def test_plots_of_only_na_lengths_and_of_several_runs(evaluated, tmp_path):
    _, document, _ = evaluated
    only_na = copy.deepcopy(document)
    only_na["results"] = [document["results"][2]]
    assert plot_extrapolation([only_na], tmp_path / "a.png").stat().st_size > 0
    assert plot_position_loss(only_na, tmp_path / "b.png").stat().st_size > 0
    other = {**copy.deepcopy(document), "run_name": "other", "train_seq_len": 8}
    assert plot_extrapolation([document, other], tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)


def test_disk_full_while_plotting_names_the_file_and_keeps_the_results_whole(
    evaluated, tmp_path, monkeypatch
):
    from matplotlib.figure import Figure

    from posbench.reports.plots import write_plots
    from posbench.reports.results import WriteError, write_results

    _, document, _ = evaluated
    rows = document["results"]
    meta = {k: v for k, v in document.items() if k not in ("results", "schema_version", "created_utc")}
    write_results(tmp_path, rows, meta)
    (tmp_path / "extrapolation.png").write_bytes(b"earlier plot")

    def full_disk(self, handle, **kw):
        handle.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(WriteError) as err:
        write_plots(document, tmp_path)
    assert str(err.value) == (
        f"no space left on the device while writing {tmp_path / 'extrapolation.png'} (the previous "
        "extrapolation.png is kept); free space there or point run_root=... at another disk"
    )
    assert isinstance(err.value, ValueError)  # the CLI prints ValueErrors in one line, exit 2
    assert (tmp_path / "extrapolation.png").read_bytes() == b"earlier plot"
    assert load_results(tmp_path)["results"] == rows  # results written before stay valid
    assert not list(tmp_path.glob(".tmp-*"))

    def read_only(self, handle, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Figure, "savefig", read_only)
    with pytest.raises(WriteError, match=r"could not write .*position_loss.png: Permission denied$"):
        plot_position_loss(document, tmp_path / "position_loss.png")


def test_disk_full_while_writing_results_names_the_file(evaluated, tmp_path, monkeypatch):
    import posbench.reports.results as results
    from posbench.reports.results import WriteError, write_results

    _, document, _ = evaluated
    meta = {k: v for k, v in document.items() if k not in ("results", "schema_version", "created_utc")}
    write_results(tmp_path, document["results"], meta)
    before = (tmp_path / "results.json").read_bytes()

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "atomic_write_text", full_disk)
    with pytest.raises(
        WriteError, match=r"while writing .*results\.json \(the previous results\.json is kept\)"
    ):
        write_results(tmp_path, document["results"], meta)
    assert (tmp_path / "results.json").read_bytes() == before
