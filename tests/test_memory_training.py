"""Protects the memory-saving training options: activation checkpointing and the chunked loss give the
plain losses and gradients for every encoding, keep less for the backward, and train the same curve."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from posbench.common.distributed import wrap_ddp
from posbench.encodings import ENCODINGS
from posbench.jobs.train import train
from posbench.model.backends import ByBlocks
from posbench.model.loss import IGNORE, NextTokenLoss, token_nll
from posbench.model.transformer import Transformer
from tests import test_model
from tests.conftest import REPO
from tests.test_distributed import SMOKE, losses
from tests.test_distributed import run as run_cli

VOCAB, T = 64, 40
OPTIONS = {"checkpointing": (0, True), "chunked": (7, False), "both": (7, True)}  # (loss chunk, AC)


def tiny_model(encoding: str, attention: str = "auto", dropout: float = 0.1) -> Transformer:
    """test_model's model (learned encoding parameters away from their init), in training mode: dropout on."""
    return test_model.tiny_model(encoding, attention, dropout=dropout).train()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, VOCAB, (2, T), generator=g), torch.randint(0, VOCAB, (2, T), generator=g)
    y[0, :5] = IGNORE  # a task's inputs carry no loss
    return x, y


def loss_and_grads(model: Transformer, chunk: int, checkpointing: bool) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks for every variant
    loss = NextTokenLoss(model, chunk, checkpointing)(*batch())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(reference: tuple[float, dict], other: tuple[float, dict]) -> None:
    assert other[0] == pytest.approx(reference[0], rel=1e-6, abs=1e-6)
    assert sorted(other[1]) == sorted(reference[1])  # the same parameters get gradients
    for name, grad in reference[1].items():
        torch.testing.assert_close(other[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_options_give_the_plain_loss_and_gradients(encoding, option):
    """With dropout (checkpointing restores its RNG state) and ignored targets, on the path ``auto``
    picks: SDPA with a learned bias's mask for T5, FIRE and KERPLE, FoX's key bias, CoPE's scores."""
    model = tiny_model(encoding)
    assert_same(loss_and_grads(model, 0, False), loss_and_grads(model, *OPTIONS[option]))


@pytest.mark.parametrize("attention", ["sdpa", "eager", "blockwise", "linear"])  # flex: no CPU backward
@pytest.mark.parametrize("encoding", ["alibi", "t5", "fire", "fox", "cope", "rope"])
def test_checkpointing_on_every_requested_path(encoding, attention):
    model = tiny_model(encoding, attention)
    assert_same(loss_and_grads(model, 0, False), loss_and_grads(model, 7, True))


@pytest.mark.parametrize("encoding", ["rope", "t5"])
def test_checkpointing_under_bf16_autocast(encoding):
    """The recomputation runs under the forward's autocast (else its tensors differ from the forward's
    and checkpointing refuses). The blocks' gradients are the plain ones exactly; the chunked head's
    gradient is summed over chunks of bf16 products, so it agrees to bf16 precision."""
    model = tiny_model(encoding, dropout=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, checkpointed = loss_and_grads(model, 0, False), loss_and_grads(model, 0, True)
        both = loss_and_grads(model, 7, True)
    assert_same(plain, checkpointed)
    assert both[0] == pytest.approx(plain[0], rel=1e-3)
    for name, grad in plain[1].items():
        assert (both[1][name] - grad).norm() <= 2**-7 * grad.norm(), name


def saved_for_backward(model: Transformer, chunk: int, checkpointing: bool) -> int:
    """The number of elements autograd keeps for the backward outside checkpointed regions, parameters
    left out."""
    params = {p.data_ptr() for p in model.parameters()}
    kept: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        NextTokenLoss(model, chunk, checkpointing)(*batch())
    return sum(t.numel() for t in kept if t.data_ptr() not in params)


def test_checkpointing_keeps_only_block_inputs():
    """Without it every layer's activations are kept; with it a block keeps its input alone, beside
    what a model of no layers keeps (the embedding's and the loss's)."""
    model = tiny_model("alibi", dropout=0.0)
    plain, kept = saved_for_backward(model, 0, False), saved_for_backward(model, 0, True)
    layers, block_input = len(model.blocks), 2 * T * model.cfg.d_model
    model.blocks = model.blocks[:0]
    assert kept <= saved_for_backward(model, 0, False) + layers * block_input < plain


def test_chunked_loss_keeps_no_logits():
    """The plain loss keeps the (B·T, V) logits and their log-softmax; the chunked one neither."""
    model = tiny_model("rope", dropout=0.0)
    logits = 2 * T * VOCAB
    plain, chunked = saved_for_backward(model, 0, False), saved_for_backward(model, 7, False)
    assert chunked <= plain - 2 * logits


def test_token_nll_equals_the_whole_logits_without_gradients():
    model = tiny_model("t5", dropout=0.0).eval()
    x, y = batch()
    with torch.no_grad():
        whole = F.cross_entropy(model(x).transpose(1, 2), y, reduction="none")  # (B, T), 0 where ignored
        chunked = token_nll(model(x, hidden=True), model.lm_head, y, chunk=9)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="at least 1 token"):
        token_nll(model(x, hidden=True), model.lm_head, y, chunk=0)


def test_hidden_states_by_query_blocks_give_the_logits():
    """FIRE's bias at evaluation runs one query block at a time through all layers (``ByBlocks``)."""
    model = tiny_model("fire", "blockwise", dropout=0.0).eval()
    x, _ = batch()
    with torch.no_grad():
        assert isinstance(model.attention_plan(T, needs_grad=False), ByBlocks)
        hidden = model(x, hidden=True)
        assert hidden.shape == (2, T, model.cfg.d_model)
        torch.testing.assert_close(model.lm_head(hidden), model(x), rtol=1e-6, atol=1e-6)


def test_all_targets_ignored_is_nan_as_plain():
    model = tiny_model("nope", dropout=0.0)
    x, y = batch()
    y[:] = IGNORE
    plain, chunked = NextTokenLoss(model)(x, y), NextTokenLoss(model, 7, True)(x, y)
    assert torch.isnan(plain) and torch.isnan(chunked)


def test_training_with_the_options_gives_the_same_loss_curve(smoke_run, tmp_path):
    """Dropout and gradient accumulation on; every logged step's loss agrees."""
    steps = ["train.max_steps=6", "train.grad_accum=2", "model.dropout=0.1", "train.val_every=0"]
    steps += ["eval.enabled=false", "train.log_every=1"]
    plain = train(smoke_run(*steps), tmp_path / "plain")["losses"]
    both = ["train.activation_checkpointing=true", "train.loss_chunk=100"]
    saving = train(smoke_run(*steps, *both), tmp_path / "saving")["losses"]
    assert sorted(saving) == sorted(plain) == list(range(1, 7))
    for step, loss in plain.items():
        assert saving[step] == pytest.approx(loss, rel=1e-5), step


def test_a_negative_loss_chunk_is_refused_in_one_line(smoke_run):
    with pytest.raises(ValueError, match=r"^train\.loss_chunk=-1 must be at least 0 \(tokens"):
        smoke_run("train.loss_chunk=-1")


@pytest.mark.parametrize("encoding", ["rope", "layers"])  # layers: DDP looks for unused parameters
def test_checkpointing_under_ddp_gives_the_plain_gradients(encoding, tmp_path):
    model = tiny_model(encoding)
    plain = loss_and_grads(model, 0, False)
    all_used = model.encoding.uses_every_parameter()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        objective = wrap_ddp(NextTokenLoss(model, 7, True), torch.device("cpu"), all_used)
        assert isinstance(objective, torch.nn.parallel.DistributedDataParallel)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = objective(*batch())
        loss.backward()
    finally:
        dist.destroy_process_group()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_same(plain, (loss.item(), grads))


@pytest.mark.slow
def test_torchrun_two_ranks_with_the_options_equal_one_plain_process(tmp_path):
    """The options under DDP's all-reduce across two ranks (gloo, CPU): the plain one-process losses."""
    steps = [*SMOKE, "model.dropout=0.0"]
    run_cli([sys.executable, "-m", "posbench", *steps, f"run_root={tmp_path / 'one'}"], tmp_path)
    options = ["train.activation_checkpointing=true", "train.loss_chunk=100"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run_cli([*torchrun, "-m", "posbench", *steps, *options, f"run_root={tmp_path / 'two'}"], tmp_path)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-4), step


@pytest.mark.slow
def test_bench_memory_prints_every_configuration_with_ratios_to_plain():
    args = ["--seq-len", "64", "--vocabs", "64", "--loss-chunk", "16", "--steps", "1"]
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_memory.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = {line.split()[1]: line.split() for line in out.stdout.splitlines()[2:]}
    assert sorted(rows) == ["both", "checkpointing", "chunked", "plain"]
    assert rows["plain"][3] == rows["plain"][5] == rows["plain"][7] == "1.00"
    assert len({row[8] for row in rows.values()}) == 1  # the same first loss
    assert all(float(row[2]) > 0 and row[-1] == "sdpa" for row in rows.values())


def test_fires_blocks_keep_64_rows_at_128k_and_the_budget_at_short_lengths():
    """ByBlocks runs each block through all layers: at 128K the 8 MB budget alone would leave
    4-row blocks; their floor is 64 rows, and short windows keep the budget."""
    from posbench.model.blocks import BLOCK_BIAS_BYTES

    for T in (2048, 131072):
        spans = list(ByBlocks(torch.arange(T), None, 1024, 4).spans())
        assert spans[0][0] == 0 and spans[-1][1] == T
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
        rows = [end - start for start, end in spans[:-1]]
        assert min(rows) >= 64
        assert max(4 * 4 * (end - start) * end for start, end in spans) <= max(
            BLOCK_BIAS_BYTES, 4 * 4 * T * 64
        )
