"""Accuracy at every test bucket of a task: exact match and per-token, by depth for retrieval.

Every bucket's fixed test set (``tasks/testset.py``) is run in batches of examples of one token
length (no padding), without autograd as the perplexity evaluation is, so long buckets take the
same memory-linear attention paths. Scoring reads the argmax at every answer token:
- ``teacher_forced``: one forward over prompt and true answer. An example's answer is exactly right
  iff every answer token is the argmax given the true tokens before it, which is exactly when greedy
  decoding would emit it (by induction over the answer tokens), so the exact-match accuracy is
  greedy decoding's; the per-token accuracy is that of each token given the true ones before it.
- ``greedy``: the answer tokens are generated, one forward per answer position, each prediction fed
  back in place of the true token; the per-token accuracy is then that of the generated answer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from posbench.common.runtime import Precision, autocast
from posbench.model.transformer import Transformer
from posbench.tasks import Bucket, Decoding, Example, Task, collate, fixed_examples, length_buckets
from posbench.tasks.batches import IGNORE


@dataclass
class TaskResult:
    length: int  # the bucket's upper end (its lengths are length_min..length, in the task's unit)
    length_min: int
    status: str  # "ok" or "n/a"
    reason: Optional[str] = None
    accuracy: Optional[float] = None  # exact match: the share of examples whose whole answer is right
    token_accuracy: Optional[float] = None  # the share of answer tokens right, averaged over examples
    examples: int = 0
    answer_tokens: int = 0
    longest_tokens: int = 0  # the longest example of the bucket, in tokens
    backend: Optional[str] = None  # the attention path of the longest forward
    wall_time_s: float = 0.0
    by_depth: Optional[dict] = None  # retrieval: {"start", "end", "accuracy", "token_accuracy", "examples"}

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def greedy_predictions(model: Transformer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The argmax at every answer position, each fed back as the next input. -> (B, T) int64

    The positions of the whole sequence are drawn once and sliced for each prefix, so randomized
    positions give every forward the positions the teacher-forced one gets."""
    tokens, predictions = x.clone(), torch.full_like(y, IGNORE)
    pos = model.encoding.positions(x.shape[1], x.device)
    for t in torch.nonzero((y != IGNORE).any(0)).flatten().tolist():
        rows = y[:, t] != IGNORE
        guess = model(tokens[:, : t + 1], pos[: t + 1])[:, t].argmax(-1)
        predictions[rows, t] = guess[rows]
        if t + 1 < tokens.shape[1]:
            tokens[rows, t + 1] = guess[rows]
    return predictions


@torch.no_grad()
def answer_scores(model: Transformer, examples: list[Example], decoding: Decoding, device) -> np.ndarray:
    """(right answer tokens, answer tokens) of every example. -> (B, 2) int64"""
    x, y = (t.to(device) for t in collate(examples))
    greedy = decoding == Decoding.greedy
    predictions = greedy_predictions(model, x, y) if greedy else model(x).argmax(-1)
    scored = y != IGNORE
    right = ((predictions == y) & scored).sum(1)
    return torch.stack([right, scored.sum(1)], 1).cpu().numpy()


def by_depth(examples: list[Example], scores: np.ndarray, buckets: int) -> dict:
    """Exact-match and per-token accuracy in each of ``buckets`` equal depth bands of [0, 1]."""
    band = np.minimum((np.array([e.depth for e in examples]) * buckets).astype(int), buckets - 1)
    exact, share = scores[:, 0] == scores[:, 1], scores[:, 0] / scores[:, 1]
    result = {"start": [], "end": [], "accuracy": [], "token_accuracy": [], "examples": []}
    for b in range(buckets):
        chosen = band == b
        if chosen.any():
            result["start"].append(b / buckets)
            result["end"].append((b + 1) / buckets)
            result["accuracy"].append(float(exact[chosen].mean()))
            result["token_accuracy"].append(float(share[chosen].mean()))
            result["examples"].append(int(chosen.sum()))
    return result


def equal_length_batches(examples: list[Example], size: int) -> list[list[Example]]:
    """Consecutive runs of examples of one token length (``examples`` sorted by it), at most ``size``
    each: no row is padded, so positions and frequencies drawn for a forward are each row's own."""
    batches: list[list[Example]] = []
    for example in examples:
        if batches and len(batches[-1]) < size and len(batches[-1][0].tokens) == len(example.tokens):
            batches[-1].append(example)
        else:
            batches.append([example])
    return batches


def evaluate_bucket(
    model: Transformer, task: Task, bucket: Bucket, device, precision: Precision
) -> TaskResult:
    cfg = task.cfg
    examples = sorted(fixed_examples(task, bucket), key=lambda e: len(e.tokens))
    longest = len(examples[-1].tokens)
    reason = model.length_limit_reason(longest - 1)
    if reason is not None:
        return TaskResult(bucket.hi, bucket.lo, "n/a", reason=reason, longest_tokens=longest)
    started = time.perf_counter()
    model.eval()
    with autocast(device, precision):
        scores = np.concatenate(
            [
                answer_scores(model, batch, cfg.decoding, device)
                for batch in equal_length_batches(examples, cfg.test_batch_size)
            ]
        )
    backend = model.attention_plan(longest - 1, needs_grad=False, autocast=precision == Precision.bf16)
    return TaskResult(
        bucket.hi,
        bucket.lo,
        "ok",
        accuracy=float((scores[:, 0] == scores[:, 1]).mean()),
        token_accuracy=float((scores[:, 0] / scores[:, 1]).mean()),
        examples=len(examples),
        answer_tokens=int(scores[:, 1].sum()),
        longest_tokens=longest,
        backend=backend.name,
        wall_time_s=time.perf_counter() - started,
        by_depth=by_depth(examples, scores, cfg.depth_buckets) if task.retrieval else None,
    )


def evaluate_task(
    model: Transformer, task: Task, device, precision: Precision = Precision.fp32
) -> list[TaskResult]:
    return [evaluate_bucket(model, task, bucket, device, precision) for bucket in length_buckets(task.cfg)]


@torch.no_grad()
def answer_metrics(
    model: Transformer,
    examples: list[Example],
    device,
    batch_size: int,
    precision: Precision = Precision.fp32,
) -> dict[str, float]:
    """The trainer's validation of a task, over the answer tokens of ``examples`` teacher-forced and
    batched as ``evaluate_bucket`` batches them: the mean cross-entropy per answer token, and the
    exact-match and per-token accuracy as a bucket's result states them (module docstring)."""
    nll, tokens, shares = 0.0, 0, []
    model.eval()
    ordered = sorted(examples, key=lambda e: len(e.tokens))
    for batch in equal_length_batches(ordered, batch_size):
        x, y = (t.to(device) for t in collate(batch))
        with autocast(device, precision):
            logits = model(x).float()
        scored = y != IGNORE
        nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        tokens += int(scored.sum())
        shares.append((((logits.argmax(-1) == y) & scored).sum(1).double() / scored.sum(1)).cpu())
    share = torch.cat(shares)
    return {
        "val/loss": nll / tokens,
        "val/exact_match": float((share == 1).double().mean()),
        "val/token_accuracy": float(share.mean()),
    }
