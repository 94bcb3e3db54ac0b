"""Protects the attention diagnostics (entropy and sink weight per layer and query position): equal
to the probabilities the eager path computes, bounded memory, and their results files and plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from posbench.config import EvalConfig, Precision
from posbench.encodings import ENCODINGS
from posbench.encodings.remap import SelfExtendConfig
from posbench.encodings.schedule import LayersConfig
from posbench.encodings.temperature import LogNConfig
from posbench.evaluation.evaluator import evaluate_length
from posbench.jobs.train import train
from posbench.model import diagnostics
from posbench.model.blocks import BLOCK_BIAS_BYTES
from posbench.model.diagnostics import AttentionProbe, attention_statistics
from posbench.model.transformer import Transformer
from posbench.reports.results import ATTENTION_CSV, load_results
from tests.conftest import tiny_model

VOCAB = 64


def model(encoding_cfg, attention: str = "auto") -> Transformer:
    """Learned encodings away from their init, so their biases show."""
    return tiny_model(encoding_cfg, attention, vocab=VOCAB, perturb=True)


class CheckedProbe(AttentionProbe):
    """Also computes each layer's attention probabilities with the eager path (values = the identity,
    so the output is the probability matrix) and compares."""

    def __init__(self, net: Transformer, length: int):
        super().__init__(net.cfg.n_layers, length, block=5)
        self.net, self.checked = net, 0

    def __call__(self, q, k, scale, layer, key_bias=None):
        super().__call__(q, k, scale, layer, key_bias)
        T = q.shape[-2]
        eager = model_plan(self.net, T)
        eye = torch.eye(T).expand(q.shape[0], q.shape[1], T, T)
        extra = {} if key_bias is None else {"key_bias": key_bias}
        p = eager(q, k, eye, scale, layer, **extra).double()  # (B, H, T, T): row i is query i's weights
        entropy = -(p * p.clamp(min=1e-300).log()).sum(-1)
        got_entropy, got_sink = attention_statistics(
            q, k, self.pos, self.layer_scores[layer], scale, layer, 5, key_bias
        )
        torch.testing.assert_close(got_entropy.double(), entropy, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got_sink.double(), p[..., 0], rtol=1e-4, atol=1e-6)
        self.checked += 1


def model_plan(net: Transformer, T: int):
    eager = model(net.encoding.cfg, "eager")
    eager.load_state_dict(net.state_dict())
    return eager.attention_plan(T, needs_grad=False)


def encoding_cases():
    """Every registered encoding (a new one is checked without editing this list), with a few variants."""
    cases = {name: ENCODINGS.schema(name)() for name in ENCODINGS}
    cases["learned"] = ENCODINGS.schema("learned")(max_positions=64)
    cases["layers"] = LayersConfig(pattern=["rope", "alibi"], window=7, window_kind="sliding")
    rope = ENCODINGS.schema("rope")()
    rope.temperature = LogNConfig(base_length=8)
    cases["rope+logn"] = rope
    cases["rope+self_extend"] = ENCODINGS.schema("rope")(remap=SelfExtendConfig(window=6, group=3))
    return cases


@pytest.mark.parametrize("case", sorted(encoding_cases()))
def test_entropy_and_sink_equal_the_eager_probabilities(case):
    net = model(encoding_cases()[case])
    probe = CheckedProbe(net, 23)
    with torch.no_grad():
        net(torch.randint(0, VOCAB, (2, 23)), probe=probe)
    assert probe.checked == net.cfg.n_layers
    scores = net.encoding.scores()
    kernel = [
        diagnostics.kernel_applies(torch.zeros(1), layer, torch.zeros(1) if layer.key_bias else None)
        for layer in scores.layers or (scores,)
    ]
    flash = ("nope", "rope", "alibi", "learned", "sinusoidal", "hybrid", "layers", "rope+logn")
    assert any(kernel) == (case in flash)  # the flash kernel: no bias, or a linear one (hybrid: +alibi)
    entropy, sink = probe.mean()
    assert entropy[:, 0].abs().max() < 1e-6 and (sink[:, 0] - 1).abs().max() < 1e-6  # one key: certain
    assert (entropy <= torch.log(torch.arange(23.0) + 1)[None] + 1e-5).all()  # at most uniform's


def test_the_probe_never_holds_the_square(monkeypatch):
    shapes = []
    real = diagnostics.causal_bias

    def recording(bias, q_idx, k_idx, dtype):
        shapes.append((q_idx.numel(), k_idx.numel()))
        return real(bias, q_idx, k_idx, dtype)

    monkeypatch.setattr(diagnostics, "causal_bias", recording)
    B, H, T = 1, 4, 4096
    q, k = torch.randn(B, H, T, 8), torch.randn(B, H, T, 8)
    scores = encoding_cases()["t5"]  # explicit logits (ALiBi takes the kernel: no (rows, prefix) tensor)
    net = model(scores)
    attention_statistics(q, k, torch.arange(T), net.encoding.scores(), 0.3, 0, 256)
    assert sum(rows for rows, _ in shapes) == T
    assert max(rows * keys * B * H * 4 for rows, keys in shapes) <= BLOCK_BIAS_BYTES
    assert max(rows for rows, _ in shapes) < T // 8


def test_evaluation_writes_the_diagnostics_beside_the_position_loss():
    net = model(ENCODINGS.schema("alibi")())
    stream = np.random.default_rng(0).integers(0, VOCAB, 400)
    cfg = EvalConfig(lengths=[64], max_tokens=128, position_buckets=4, diagnostics_windows=2)
    row = evaluate_length(net, stream, 64, cfg, torch.device("cpu"), progress=False).to_dict()
    curves = row["attention"]
    assert curves["windows"] == 2 and len(curves["entropy"]) == net.cfg.n_layers
    assert curves["start"] == row["position_curve"]["start"]
    assert curves["uniform_entropy"][0] == 0.0 and all(
        layer[0] == pytest.approx(1.0) for layer in curves["sink"]
    )
    assert all(math.isfinite(e) for layer in curves["entropy"] for e in layer)


def test_a_run_writes_them_to_results_csv_plot_and_tracker(smoke_run, tmp_path):
    run = smoke_run("train.max_steps=2", "train.val_every=0", "eval.lengths=[128,256]", "eval.max_tokens=256")
    train(run, tmp_path / "run")
    document = load_results(tmp_path / "run")
    curves = document["results"][1]["attention"]
    assert len(curves["entropy"]) == run.model.n_layers and curves["windows"] == 1
    lines = (tmp_path / "run" / ATTENTION_CSV).read_text().splitlines()
    assert lines[0].split(",")[3:] == [
        "length",
        "layer",
        "bucket_start",
        "bucket_end",
        "entropy",
        "uniform_entropy",
        "sink",
    ]
    assert len(lines) == 1 + sum(
        run.model.n_layers * len(r["attention"]["start"]) for r in document["results"]
    )
    assert (tmp_path / "run" / "attention.png").stat().st_size > 0
    summary = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    last = sum(layer[-1] for layer in curves["entropy"]) / run.model.n_layers
    assert summary["summary"]["eval/attn_entropy@256"] == pytest.approx(last)


def test_no_diagnostics_when_asked_for_none():
    net = model(ENCODINGS.schema("rope")())
    stream = np.random.default_rng(0).integers(0, VOCAB, 200)
    cfg = EvalConfig(lengths=[32], max_tokens=64, diagnostics_windows=0)
    assert evaluate_length(net, stream, 32, cfg, torch.device("cpu"), progress=False).attention is None


@pytest.mark.parametrize("encoding", ["alibi", "rope", "fire"])
def test_diagnostics_riding_the_scoring_forwards_equal_their_own_forwards(encoding, monkeypatch):
    """The probe rides the scoring forwards (FIRE's by-blocks evaluation excepted) and sees exactly
    the first eval.diagnostics_windows windows, also when a batch carries more: the curves equal
    those of forwards of its own; its time is kept apart from the scoring time."""
    from posbench.evaluation import evaluator

    net = model(ENCODINGS.schema(encoding)(), "blockwise")  # FIRE: by query blocks through all layers
    stream = np.random.default_rng(0).integers(0, VOCAB, 400)
    cfg = EvalConfig(lengths=[64], max_tokens=320, batch_size=3, position_buckets=4, diagnostics_windows=2)
    riding = evaluate_length(net, stream, 64, cfg, torch.device("cpu"), progress=False)
    assert evaluator.probe_rides_along(net, 64, Precision.fp32) == (encoding != "fire")
    monkeypatch.setattr(evaluator, "probe_rides_along", lambda *a: False)
    own = evaluate_length(net, stream, 64, cfg, torch.device("cpu"), progress=False)
    assert riding.windows == 5 and riding.attention["windows"] == own.attention["windows"] == 2
    for key in ("entropy", "sink"):
        np.testing.assert_allclose(riding.attention[key], own.attention[key], rtol=1e-5, atol=1e-6)
    assert riding.nll == own.nll and riding.diagnostics_wall_time_s > 0 and riding.wall_time_s > 0


def test_the_kernels_sink_weight_is_a_probability_despite_rounding():
    """p_i0 = exp(s_i0 - lse_i) from the kernel's log-sum-exp: s_i0 recomputed apart can pass lse_i by
    rounding (a first query, whose only key is the sink, gave 1.0000076 here), which results.json's
    schema refuses."""
    from posbench.model.diagnostics import kernel_statistics

    torch.manual_seed(0)
    for _ in range(5):
        q, k = torch.randn(1, 4, 512, 16) * 3, torch.randn(1, 4, 512, 16) * 3
        entropy, sink = kernel_statistics(q, k, torch.arange(512), None, 16**-0.5)
        assert sink.max() <= 1 and entropy.min() >= 0
