"""The benchmark scripts run end to end at toy sizes and print their ratio tables; the training
benchmark's plain-GPT reference row is counted with the same FLOPs as the model it is compared to."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real subprocesses end to end; make test runs them

REPO = Path(__file__).resolve().parents[1]


def script(name: str):
    if str(REPO / "scripts") not in sys.path:  # as `python scripts/NAME.py` has it: bench_variants
        sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, *args: str) -> list[list[str]]:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return [line.split() for line in out.stdout.splitlines() if line.strip()]


def test_plain_gpt_reference_counts_the_same_flops_as_nope():
    from posbench.config import Precision

    bench = script("bench_train")
    nope, plain = (
        bench.Trainee(name, Precision.fp32, bench.torch.device("cpu"), 1, 128)
        for name in ("nope", bench.PLAIN)
    )
    assert nope.flops_per_token == plain.flops_per_token
    cfg = nope.model.cfg
    assert (
        nope.flops_per_token
        == 6 * (cfg.n_layers * 12 * cfg.d_model**2 + 256 * cfg.d_model) + 6 * cfg.n_layers * 128 * cfg.d_model
    )


def test_bench_train_prints_ratios_to_nope_and_the_reference_row():
    rows = {
        row[0]: row
        for row in run(
            "bench_train",
            "--encodings",
            "t5",
            "fox",
            "rope+logn",
            "--rounds",
            "2",
            "--seq-len",
            "64",
            "--batch",
            "1",
        )
    }
    assert set(rows) >= {"nope", "t5", "fox", "rope+logn", "plain-gpt"}
    assert rows["nope"][2] == "1.00"
    for name in ("nope", "t5", "plain-gpt"):
        assert float(rows[name][1].replace(",", "")) > 0 and 0 < float(rows[name][3].rstrip("%")) < 100


def test_bench_eval_prints_time_and_memory_ratios_to_nope():
    rows = {
        row[0]: row
        for row in run(
            "bench_eval",
            "--lengths",
            "256",
            "--encodings",
            "alibi",
            "layers",
            "rope+self_extend",
            "--repeats",
            "1",
        )
    }
    assert rows["nope"][3] == "1.00" and rows["nope"][5] == "1.00"
    assert rows["alibi"][1] == "256" and float(rows["alibi"][3]) > 0 and rows["alibi"][-1] == "sdpa"
    assert rows["rope+self_extend"][-1] == "remap" and rows["layers"][-1] == "sdpa"


def test_bench_diagnostics_prints_the_probe_against_explicit_logits():
    rows = {row[0]: row for row in run("bench_diagnostics", "--length", "512", "--encodings", "rope", "t5")}
    for name in ("rope", "t5"):
        forward, probe, explicit, ratio = (float(x) for x in rows[name][1:])
        assert forward > 0 and probe > 0 and explicit > 0 and ratio > 0


def test_bench_eval_appends_its_rows_and_resumes_from_them(tmp_path):
    """--out: every row lands in the file as it is measured; a second run reads them back (the file
    keeps one row per encoding) and prints the same table; a new encoding is measured and added."""
    out = tmp_path / "rows.jsonl"
    args = ("bench_eval", "--lengths", "128", "--repeats", "1", "--out", str(out), "--encodings")
    first = run(*args, "alibi")
    assert len(out.read_text().splitlines()) == 2  # nope and alibi
    assert run(*args, "alibi") == first and len(out.read_text().splitlines()) == 2
    third = {row[0]: row for row in run(*args, "alibi", "t5")}
    assert len(out.read_text().splitlines()) == 3 and third["alibi"] == first[-1]


def percent(cell: str) -> float:
    return float(cell.rstrip("%")) / 100


def test_bench_tasks_prints_throughput_and_where_a_step_goes():
    """--quick: each batch's row has tokens/s, MFU and a step breakdown whose shares add up, and the
    profiled forward+backward's shares add up too."""
    rows = [row for row in run("bench_tasks", "--quick") if row[0] == "toy-2x32"]
    eager, kernels = rows[:2], rows[2:]
    assert [row[1] for row in eager] == ["4", "16"] and len(kernels) == 1
    for row in eager:
        tokens_per_s, mfu, step_ms = float(row[3].replace(",", "")), percent(row[5]), float(row[6])
        assert tokens_per_s > 0 and 0 < mfu < 1 and step_ms > 0
        assert abs(sum(map(percent, row[7:12])) - 1) < 0.005  # data, fwd+bwd, clip, host, optim
    assert abs(sum(map(percent, kernels[0][2:6])) - 1) < 0.005  # attention, matmuls, other, outside


def test_bench_hf_memory_measures_a_slope_and_that_depth_does_not_add_to_it():
    pytest.importorskip("transformers")
    lines = run("bench_hf_memory", "--shapes", "tiny", "--lengths", "256", "512")
    rows = [r for r in lines if r[0] == "tiny"]
    assert [(r[1], r[2]) for r in rows] == [("2", "256"), ("2", "512"), ("4", "256")]
    text = [" ".join(r) for r in lines]
    assert any(t.startswith("per token") for t in text) and any(
        "estimate, whole model in bf16" in t for t in text
    )
