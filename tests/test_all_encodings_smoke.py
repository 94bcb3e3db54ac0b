"""Protects "one config file away": every encoding and scaling kind trains on debug=smoke and evaluates at
4x its length."""

from __future__ import annotations

import math

import pytest

from posbench.encodings import ENCODINGS, SCALINGS, TEMPERATURES
from posbench.jobs.train import train

# two steps of two sequences, one 512-token window scored: enough to run every path, not to learn
FAST = [
    "train.max_steps=2",
    "train.batch_size=2",
    "train.val_every=0",
    "train.ckpt_every=0",
    "eval.max_tokens=512",
    "eval.lengths=[512]",
]

VARIANTS = (
    [[f"encoding={name}"] for name in ENCODINGS]
    + [["encoding=rope", f"encoding/scaling={kind}"] for kind in SCALINGS if kind != "none"]
    + [
        ["encoding=rope", "encoding.random_positions_max=1024", "encoding.rotary_dim=0.5"],
        ["encoding=sinusoidal", "encoding.random_positions_max=1024"],
        ["encoding=xpos", "encoding/scaling=dynamic_yarn"],
        ["encoding=rope", "encoding.p_rope=0.5", "encoding.resonance=true", "encoding/scaling=yarn"],
        ["encoding=layers", "encoding.window=32", "encoding.window_kind=sliding"],
        ["encoding=layers", "encoding/temperature@encoding.options.nope.temperature=llama4"],
    ]
    + [["encoding=nope", f"encoding/temperature={kind}"] for kind in TEMPERATURES if kind != "none"]
)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: "-".join(x.split("=")[-1] for x in o))
def test_trains_and_evaluates_at_four_times_its_length(smoke_run, tmp_path, overrides):
    run = smoke_run(*FAST, *overrides)
    assert run.train.seq_len == 128
    metrics = train(run, tmp_path / "run")
    assert all(math.isfinite(loss) for loss in metrics["losses"].values())
    rows = {row["length"]: row for row in metrics["results"]["results"]}
    if run.encoding.name == "learned":
        assert rows[512]["status"] == "n/a" and "learned positions end at 128" in rows[512]["reason"]
    else:
        assert rows[512]["status"] == "ok" and math.isfinite(rows[512]["ppl"]), rows[512]
        assert rows[512]["attention"]["windows"] == 1  # the diagnostics ran on its path
