"""Passkey retrieval as the YaRN repository scores it (jquesnelle/yarn ``eval/passkey.py``, after
Mohtashami & Jaggi 2023, landmark attention's ``run_test.py``), on a length × depth grid.

A prompt is five lines joined by newlines: the task description, filler, the key line, filler, the
question. The filler repeats "The grass is green. ... There and back again." and is counted in
characters; the key line sits after ``depth`` of it. The key is drawn from 1..50000; the model
decodes ``max_new_tokens`` (10) greedily and its answer is the first integer in them (regex
``\\d+``), scored by exact match. YaRN draws the depth uniformly over the whole prompt; here each
depth bucket [d, d') draws it uniformly inside the bucket, ``trials`` times per (length, bucket), so
the grid has a row per bucket. Lengths are in the model's tokens: the filler is the longest whose
prompt has at most that many. A seed fixes every key and depth.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch

from posbench.common.checks import at_least

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
KEY_RANGE = (1, 50000)


@dataclass
class PasskeyConfig:
    lengths: List[int] = field(default_factory=list)  # prompt lengths in the model's tokens; [] = off
    depth_buckets: int = 5
    trials: int = 5  # per (length, depth bucket)
    seed: int = 0
    max_new_tokens: int = 10

    def __post_init__(self) -> None:
        at_least("passkey.depth_buckets", self.depth_buckets, 1)
        at_least("passkey.trials", self.trials, 1)
        at_least("passkey.max_new_tokens", self.max_new_tokens, 1)


def key_line(key: int) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def prompt(filler_chars: int, depth: float, key: int) -> str:
    """The five lines, with round(depth·filler_chars) filler characters before the key line."""
    text = " ".join([FILLER] * (filler_chars // len(FILLER) + 2))
    before = round(depth * filler_chars)
    return "\n".join([TASK, text[:before], key_line(key), text[: filler_chars - before], QUESTION])


def first_integer(answer: str) -> Optional[int]:
    """The first run of digits in the answer, as YaRN's scorer reads it; None when there is none."""
    found = re.search(r"\d+", answer)
    return int(found.group()) if found else None


def filler_for(tokenizer: Any, tokens: int) -> int:
    """The most filler characters whose prompt (with a five-digit key) is at most ``tokens`` long."""

    def length(chars: int) -> int:
        return len(tokenizer(prompt(chars, 0.5, 50000))["input_ids"])

    if length(0) > tokens:
        raise ValueError(
            f"passkey.lengths: {tokens} tokens is shorter than the prompt without filler ({length(0)} tokens "
            "with this tokenizer); ask for longer prompts"
        )
    low, high = 0, 1
    while length(high) <= tokens:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if length(middle) <= tokens else (low, middle)
    return low


@torch.no_grad()
def greedy_answer(model: Any, tokenizer: Any, text: str, max_new_tokens: int, device) -> str:
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
    from transformers import GenerationConfig  # greedy and nothing else: no model's penalties or limits

    greedy = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=greedy)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def passkey_grid(model: Any, tokenizer: Any, cfg: PasskeyConfig, device) -> list[dict]:
    """Exact match per (length, depth bucket): one row per length, its accuracy by depth."""
    rng = random.Random(cfg.seed)
    edges = [i / cfg.depth_buckets for i in range(cfg.depth_buckets + 1)]
    rows = []
    for tokens in cfg.lengths:
        chars = filler_for(tokenizer, tokens)
        accuracy = []
        for low, high in itertools.pairwise(edges):
            hits = 0
            for _ in range(cfg.trials):
                depth, key = rng.uniform(low, high), rng.randint(*KEY_RANGE)
                answer = greedy_answer(
                    model, tokenizer, prompt(chars, depth, key), cfg.max_new_tokens, device
                )
                hits += first_integer(answer) == key
            accuracy.append(hits / cfg.trials)
        rows.append(
            {
                "length": tokens,
                "filler_chars": chars,
                "accuracy": sum(accuracy) / len(accuracy),
                "by_depth": {"start": edges[:-1], "end": edges[1:], "accuracy": accuracy},
                "trials": cfg.trials,
            }
        )
    return rows
