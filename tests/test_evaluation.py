"""Protects the extrapolation evaluator: which tokens each protocol scores, token-weighted perplexity, the
per-position curve, and `posbench eval` reproducing a run's own numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from posbench.config import EvalConfig, Protocol
from posbench.evaluation.buckets import bucket_edges, position_curve
from posbench.evaluation.evaluator import evaluate_length, evaluate_lengths
from posbench.evaluation.protocol import count_windows, windows
from posbench.jobs.evaluate import evaluate_checkpoint
from posbench.jobs.train import train
from posbench.model.transformer import Transformer
from posbench.runs.checkpoint import load_checkpoint
from posbench.runs.identity import RunIdentity
from posbench.runs.resolvers import UNREADABLE, checkpoint_folder
from tests.conftest import REPO, compose_config, compose_run
from tests.conftest import tiny_model as shared_tiny_model

VOCAB = 17
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores shared with other jobs: a second OpenMP thread spin-waits and makes these tiny
    forwards ~100x slower, so evaluate on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scored_targets(
    stream_len: int, length: int, protocol: str, stride=None, max_tokens=None
) -> list[tuple[int, int]]:
    """(stream index of the target, tokens of context it was predicted from) for every scored target."""
    out = []
    for w in windows(stream_len, length, protocol, stride, max_tokens):
        out += [(w.start + 1 + i, i + 1) for i in range(w.score_from, length)]
    return out


@pytest.mark.parametrize("stream_len,length", [(100, 10), (101, 10), (99, 10), (1000, 7), (11, 10), (10, 10)])
def test_nonoverlapping_scores_every_token_of_whole_windows_exactly_once(stream_len, length):
    targets = [t for t, _ in scored_targets(stream_len, length, "nonoverlapping")]
    full_windows = (stream_len - 1) // length  # the stream's first token is context only
    assert len(targets) == len(set(targets))
    assert targets == list(range(1, 1 + full_windows * length))
    assert count_windows(stream_len, length, "nonoverlapping") == full_windows


@pytest.mark.parametrize("length,stride", [(10, 10), (10, 5), (10, 3), (10, 1), (16, 7)])
def test_sliding_scores_each_token_once_with_at_least_L_minus_S_context(length, stride):
    stream_len = 203
    scored = scored_targets(stream_len, length, "sliding", stride)
    targets = [t for t, _ in scored]
    assert len(targets) == len(set(targets)) and targets == list(range(1, 1 + len(targets)))
    assert stream_len - 1 - targets[-1] < stride  # only a tail shorter than one step is left
    after_first = [context for t, context in scored if t > length]
    assert min(after_first) >= length - stride


def test_sliding_with_stride_equal_to_length_is_nonoverlapping():
    assert list(windows(500, 32, "sliding", 32)) == list(windows(500, 32, "nonoverlapping"))


def test_token_budget_stops_after_the_window_that_reaches_it():
    for protocol, stride in (("nonoverlapping", None), ("sliding", 4)):
        scored = len(scored_targets(10_000, 16, protocol, stride, max_tokens=100))
        per_window = 16 if protocol == "nonoverlapping" else 4
        assert 100 <= scored < 100 + per_window


def test_bad_strides_are_refused_before_any_work():
    with pytest.raises(ValueError, match="exceeds the window length"):
        list(windows(100, 8, "sliding", stride=9))
    with pytest.raises(ValueError, match=r"eval.protocol=sliding"):
        list(windows(100, 8, "nonoverlapping", stride=4))
    model = tiny_model("rope")
    cfg = EvalConfig(lengths=[64, 8], protocol=Protocol.sliding, stride=16, max_tokens=64)
    with pytest.raises(ValueError, match="exceeds the window length 8"):
        evaluate_lengths(model, np.zeros(1000, dtype=np.int64), cfg, CPU, progress=False)


@pytest.mark.parametrize("kind", ["log", "linear"])
@pytest.mark.parametrize("length,buckets", [(1, 4), (7, 3), (128, 16), (1000, 9), (64, 1)])
def test_buckets_cover_every_position_and_average_to_the_overall_nll(kind, length, buckets):
    edges = bucket_edges(length, buckets, kind)
    assert edges[0] == 0 and edges[-1] == length and edges == sorted(set(edges))
    assert len(edges) - 1 <= max(buckets, 1)
    rng = np.random.default_rng(length)
    counts = rng.integers(0, 5, size=length)
    counts[0] = 1
    nll_sum = rng.random(length) * counts
    curve = position_curve(nll_sum, counts, buckets, kind)
    assert sum(curve["tokens"]) == counts.sum()
    weighted = sum(n * t for n, t in zip(curve["nll"], curve["tokens"])) / sum(curve["tokens"])
    assert weighted == pytest.approx(nll_sum.sum() / counts.sum(), rel=1e-12)


def test_linear_buckets_are_equal_widths():
    assert bucket_edges(100, 4, "linear") == [0, 25, 50, 75, 100]


def tiny_model(encoding: str, max_positions: int = 512) -> Transformer:
    return shared_tiny_model(encoding, block=1024, vocab=VOCAB, max_positions=max_positions)


def synthetic_stream(n: int = 400) -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, size=n).astype(np.uint16)


@torch.no_grad()
def brute_force_nll(
    model: Transformer, stream: np.ndarray, length: int, protocol: str, stride: int, max_tokens
) -> tuple[float, int]:
    """Token-weighted mean NLL written from the protocol's definition, one window and one target at a time."""
    step = length if protocol == "nonoverlapping" else stride
    total, count, start = 0.0, 0, 0
    while start + length + 1 <= len(stream) and (max_tokens is None or count < max_tokens):
        tokens = torch.tensor(stream[start : start + length + 1].astype(np.int64))
        log_probs = torch.log_softmax(model(tokens[None, :-1])[0].double(), dim=-1)  # (L, V)
        first = 0 if start == 0 else length - step
        for i in range(first, length):
            total -= log_probs[i, tokens[i + 1]].item()
            count += 1
        start += step
    return total / count, count


@pytest.mark.parametrize(
    "encoding,protocol,stride,max_tokens",
    [
        ("alibi", "nonoverlapping", None, None),
        ("rope", "nonoverlapping", None, 100),
        ("rope", "sliding", 12, None),
        ("learned", "sliding", 5, 90),
    ],
)
@pytest.mark.parametrize("loss_chunk", [0, 7])  # the whole logits at once; 7 tokens' at a time
def test_token_weighted_ppl_equals_brute_force(encoding, protocol, stride, max_tokens, loss_chunk):
    model, stream = tiny_model(encoding), synthetic_stream()
    cfg = EvalConfig(
        lengths=[32],
        protocol=Protocol(protocol),
        stride=stride,
        max_tokens=max_tokens,
        batch_size=3,
        position_buckets=6,
        loss_chunk=loss_chunk,
    )
    result = evaluate_length(model, stream, 32, cfg, CPU, progress=False)
    nll, count = brute_force_nll(model, stream, 32, protocol, stride, max_tokens)
    assert result.status == "ok" and result.tokens_scored == count
    assert result.nll == pytest.approx(nll, rel=1e-6)
    assert result.ppl == pytest.approx(np.exp(nll), rel=1e-6)
    curve = result.position_curve
    assert sum(curve["tokens"]) == result.tokens_scored
    weighted = sum(n * t for n, t in zip(curve["nll"], curve["tokens"])) / result.tokens_scored
    assert weighted == pytest.approx(result.nll, rel=1e-9)


def test_a_diverged_model_still_counts_its_tokens():
    model = tiny_model("rope")
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    cfg = EvalConfig(lengths=[16], max_tokens=64)
    result = evaluate_length(model, synthetic_stream(), 16, cfg, CPU, progress=False)
    assert result.tokens_scored == 64 and np.isnan(result.nll)


def test_lengths_a_model_cannot_take_are_na_with_a_reason():
    model, stream = tiny_model("learned", max_positions=16), synthetic_stream(100)
    cfg = EvalConfig(lengths=[16, 32], max_tokens=32)
    ok, past_table = evaluate_lengths(model, stream, cfg, CPU, progress=False)
    assert ok.status == "ok" and ok.tokens_scored == 32
    assert past_table.status == "n/a" and "learned positions end at 16" in past_table.reason
    assert past_table.tokens_scored == 0 and past_table.nll is None
    too_long = evaluate_length(tiny_model("rope"), stream, 100, cfg, CPU, progress=False)
    assert too_long.status == "n/a" and "fewer than one window" in too_long.reason


# ---- posbench eval of a checkpoint ----------------------------------------------------------

EVAL_ARGS = ("eval.lengths=[64,128,256]", "eval.max_tokens=512")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A debug=smoke run that evaluated itself at the end of training."""
    root = tmp_path_factory.mktemp("trained")
    run = compose_run(
        "debug=smoke",
        "logger=jsonl",
        f"run_root={root}",
        "train.max_steps=2",
        "train.val_every=0",
        *EVAL_ARGS,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_thread
    try:
        train(run, root / "run")
    finally:
        torch.set_num_threads(before)
    return root / "run"


def nlls(document: dict) -> dict[int, float]:
    return {row["length"]: row["nll"] for row in document["results"]}


@pytest.mark.slow
def test_posbench_eval_reproduces_the_end_of_training_numbers(trained, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable,
        "-m",
        "posbench",
        "eval",
        f"checkpoint={trained}",
        f"run_root={tmp_path}",
        *EVAL_ARGS,
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    [out_dir] = (tmp_path / "eval").iterdir()
    folder = RunIdentity.from_config(load_checkpoint(trained)["config"]).folder
    # the folder says what was evaluated
    assert folder.startswith("alibi_L128_s0_") and out_dir.name.endswith(f"_{folder}")
    evaluated = json.loads((out_dir / "results.json").read_text())
    at_training = json.loads((trained / "results.json").read_text())
    assert nlls(evaluated) == pytest.approx(nlls(at_training), rel=1e-9)
    assert evaluated["checkpoint"] == str(trained) and evaluated["step"] == 2
    assert (out_dir / "eval_config.yaml").read_text().count("max_tokens: 512") == 1
    assert "Perplexity of alibi trained at 128" in done.stdout


def eval_config(checkpoint, *overrides: str):
    return compose_config(
        f"checkpoint={checkpoint}", "logger=jsonl", *EVAL_ARGS, *overrides, config_name="eval"
    )


@pytest.mark.slow
def test_inference_time_overrides_apply_and_others_are_refused(trained, tmp_path):
    document = evaluate_checkpoint(
        eval_config(trained, "+model.attention=eager", "eval.lengths=[64]"), tmp_path / "a"
    )
    assert document["results"][0]["backend"] == "eager"
    assert document["overrides"]["model"] == {"attention": "eager"}
    reference = json.loads((trained / "results.json").read_text())
    assert document["results"][0]["nll"] == pytest.approx(nlls(reference)[64], rel=1e-5)
    for refused, message in [
        ("+encoding.name=rope", "encoding.name"),
        ("+model.n_layers=3", "model.n_layers"),
        ("+data.name=hf", "cannot override 'data'"),
        ("+encoding.base=2", r"encoding\.base is not an option"),
    ]:
        with pytest.raises(ValueError, match=message):
            evaluate_checkpoint(eval_config(trained, refused), tmp_path / "b")


def test_the_folder_label_of_an_unreadable_checkpoint_leaves_the_error_to_the_job(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert checkpoint_folder(str(tmp_path / "bad.pt")) == UNREADABLE
    assert checkpoint_folder(str(tmp_path / "missing.pt")) == UNREADABLE


def test_every_scored_target_is_counted_once_per_position():
    """The per-position counts are the protocol's: each window adds one target per scored index."""
    model, stream = tiny_model("alibi"), synthetic_stream(300)
    cfg = EvalConfig(lengths=[20], protocol=Protocol.sliding, stride=6, position_buckets=20)
    curve = evaluate_length(model, stream, 20, cfg, CPU, progress=False).position_curve
    expected = Counter(context - 1 for _, context in scored_targets(len(stream), 20, "sliding", 6))
    for lo, hi, n in zip(curve["start"], curve["end"], curve["tokens"]):
        assert n == sum(expected[p] for p in range(lo, hi))


# ---- BOS and the truncated protocol ----------------------------------------------------------------


@torch.no_grad()
def window_nll(model: Transformer, tokens: torch.Tensor, first: int) -> tuple[float, int]:
    """Summed NLL of targets tokens[first + 1:], the window's own, one target at a time."""
    log_probs = torch.log_softmax(model(tokens[None, :-1])[0].double(), dim=-1)  # (L, V)
    return -sum(log_probs[i, tokens[i + 1]].item() for i in range(first, len(tokens) - 1)), len(
        tokens
    ) - 1 - first


@pytest.mark.parametrize("protocol,stride", [("nonoverlapping", None), ("sliding", 12)])
def test_bos_windows_equal_their_definition(protocol, stride):
    """With a BOS every window is BOS + the next L-1 stream tokens, predicting L of them."""
    model, stream, bos, length = tiny_model("rope"), synthetic_stream(), VOCAB - 1, 32
    cfg = EvalConfig(
        lengths=[length], protocol=Protocol(protocol), stride=stride, max_tokens=None, batch_size=2
    )
    result = evaluate_length(model, stream, length, cfg, CPU, progress=False, bos_id=bos)
    step, total, count, start = stride or length, 0.0, 0, 1  # BOS stands in for stream[0]
    while start + length <= len(stream):
        tokens = torch.tensor([bos, *stream[start : start + length].astype(np.int64)])
        nll, n = window_nll(model, tokens, 0 if start == 1 else length - step)
        total, count, start = total + nll, count + n, start + step
    assert result.tokens_scored == count
    assert result.nll == pytest.approx(total / count, rel=1e-6)
    plain = evaluate_length(model, stream, length, cfg, CPU, progress=False)
    assert plain.nll != pytest.approx(result.nll, rel=1e-6)  # the BOS changed what was scored


def documents_stream(lengths: list[int], separator: int = 0) -> np.ndarray:
    rng = np.random.default_rng(1)
    parts = [[separator, *rng.integers(1, VOCAB, size=n)] for n in lengths]
    return np.array([t for part in parts for t in part], dtype=np.uint16)


@pytest.mark.parametrize("documents,least", [(None, None), (2, None), (None, 40)])
def test_truncated_scores_the_first_L_tokens_of_each_long_enough_document(documents, least):
    model, length = tiny_model("rope"), 24
    sizes = [30, 10, 50, 24, 45, 60]  # documents of 10 and (with least=40) 24 and 30 are left out
    stream = documents_stream(sizes)
    cfg = EvalConfig(
        lengths=[length],
        protocol=Protocol.truncated,
        documents=documents,
        min_document_tokens=least,
        max_tokens=None,
        batch_size=2,
    )
    result = evaluate_length(model, stream, length, cfg, CPU, progress=False, separator_id=0)
    starts = np.cumsum([0] + [n + 1 for n in sizes[:-1]]) + 1  # each document's first token
    kept = [s for s, n in zip(starts, sizes) if n >= max(length, least or length)][:documents]
    total = sum(
        window_nll(model, torch.tensor(stream[s - 1 : s + length].astype(np.int64)), 0)[0] for s in kept
    )
    assert result.windows == len(kept) and result.tokens_scored == len(kept) * length
    assert result.nll == pytest.approx(total / (len(kept) * length), rel=1e-6)
    # posbench's models take the separator as BOS: the same windows, the same numbers
    with_bos = evaluate_length(model, stream, length, cfg, CPU, progress=False, separator_id=0, bos_id=0)
    assert with_bos.nll == pytest.approx(result.nll, rel=1e-9)


def test_truncated_picks_the_same_documents_at_every_length_and_says_when_none_is_long_enough():
    model, stream = tiny_model("rope"), documents_stream([30, 70, 20, 80])
    cfg = EvalConfig(lengths=[16, 64, 100], protocol=Protocol.truncated, max_tokens=None)
    short, long, too_long = evaluate_lengths(model, stream, cfg, CPU, progress=False, separator_id=0)
    assert short.windows == 0 and short.status == "n/a"  # the default minimum is the longest length
    assert too_long.status == "n/a" and "no validation document has 100 tokens" in too_long.reason
    cfg = EvalConfig(lengths=[16, 64], protocol=Protocol.truncated, max_tokens=None)
    short, long = evaluate_lengths(model, stream, cfg, CPU, progress=False, separator_id=0)
    assert short.windows == long.windows == 2  # the 70- and 80-token documents at both lengths


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"documents": 3}, "add eval.protocol=truncated"),
        ({"min_document_tokens": 100}, "add eval.protocol=truncated"),
        ({"protocol": Protocol.truncated, "documents": 0}, "eval.documents=0 must be at least 1"),
    ],
)
def test_document_options_outside_their_protocol_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(lengths=[16], **settings)


def test_length_ranges_double_or_step_as_the_yarn_repository_does():
    from posbench.runs.resolvers import length_range

    assert length_range(2048, 16384) == [2048, 4096, 8192, 16384]
    assert length_range(2048, 10000, 2048) == [2048, 4096, 6144, 8192]
    with pytest.raises(ValueError, match="needs 1 <= MIN <= MAX"):
        length_range(4096, 2048)


def test_the_yarn_preset_composes_to_its_protocol():
    cfg = compose_config("checkpoint=x", "eval=yarn", config_name="eval")
    assert cfg.eval.protocol == "truncated" and cfg.eval.add_bos and cfg.eval.documents == 10
    assert list(cfg.eval.lengths) == [2048, 4096, 8192, 16384, 32768, 65536, 131072]
