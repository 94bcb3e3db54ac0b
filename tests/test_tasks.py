"""Synthetic tasks: generators (determinism, exact formats, answers checked independently), the loss
mask, the accuracy computation, resumable batches, and a tiny model that learns to copy."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from posbench.evaluation.tasks import answer_scores, by_depth, greedy_predictions
from posbench.tasks import (
    BOS,
    PAD,
    TASKS,
    Bucket,
    Decoding,
    TaskBatches,
    TaskConfig,
    build_task,
    collate,
    decode,
    fixed_examples,
    length_buckets,
)
from posbench.tasks.batches import IGNORE
from posbench.tasks.retrieval import FILLER


def make(name: str, **fields):
    cls = TASKS.schema(name)
    return build_task(cls(name=name, **fields) if cls is TaskConfig else cls(**fields))


def examples(name: str, count: int = 30, seed: int = 0, **fields):
    task = make(name, **fields)
    rng = np.random.default_rng(seed)
    lo, hi = task.cfg.train_lengths
    return task, [task.example(rng, int(n)) for n in rng.integers(lo, hi + 1, size=count)]


def prompt_and_answer(example) -> tuple[str, str]:
    """The text before the first answer token, and the answer text."""
    first = int(np.argmax(example.answer))
    return decode(example.tokens[1:first].tolist()), example.answer_text


@pytest.mark.parametrize("name", sorted(TASKS))
def test_examples_are_determined_by_the_seed(name):
    _, first = examples(name, seed=3)
    _, again = examples(name, seed=3)
    _, other = examples(name, seed=4)
    assert all((a.tokens == b.tokens).all() and (a.answer == b.answer).all() for a, b in zip(first, again))
    assert any(len(a.tokens) != len(b.tokens) or (a.tokens != b.tokens).any() for a, b in zip(first, other))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_example_starts_with_bos_and_ends_in_answer(name):
    _, made = examples(name)
    for example in made:
        assert example.tokens[0] == BOS and PAD not in example.tokens[1:]
        assert example.answer[-1] and not example.answer[0] and example.answer.sum() >= 1


@pytest.mark.parametrize(
    "name,check",
    [
        ("copy", lambda s, a: re.fullmatch(r"[ab]+=", s) and a == s[:-1] * 2),
        ("reverse", lambda s, a: re.fullmatch(r"[ab]+=", s) and a == s[:-1][::-1]),
        ("parity", lambda s, a: re.fullmatch(r"[01]+=", s) and int(a) == sum(map(int, s[:-1])) % 2),
        ("modular_sum", lambda s, a: re.fullmatch(r"[0-4](\+[0-4])*=", s) and int(a) == eval(s[:-1]) % 5),
        ("sort", lambda s, a: re.fullmatch(r"[0-4]+=", s) and a == "".join(sorted(s[:-1]))),
    ],
)
def test_algorithmic_answers_match_an_independent_computation(name, check):
    _, made = examples(name, count=50, train_lengths=[1, 40])
    for example in made:
        prompt, answer = prompt_and_answer(example)
        assert check(prompt, answer), (prompt, answer)
        symbols = prompt[:-1].replace("+", "")
        assert len(symbols) == example.length  # the length counts input symbols


def test_binary_addition_is_little_endian_addition():
    _, made = examples("binary_add", count=100, train_lengths=[3, 300])  # past numpy's 64-bit integers
    for example in made:
        prompt, answer = prompt_and_answer(example)
        x, y = re.fullmatch(r"([01]+)\+([01]+)=", prompt).groups()
        assert len(x) + len(y) + 1 == example.length  # the + counts, as in the reference
        assert int(answer[::-1], 2) == int(x[::-1], 2) + int(y[::-1], 2)
        assert answer.endswith("1")  # no trailing (most significant) zeros
        assert int(x[::-1], 2) >= 1 and int(y[::-1], 2) >= 1


def test_associative_recall_answers_each_query_with_its_value():
    _, made = examples("assoc_recall", count=50, train_lengths=[1, 40], queries=3)
    for example in made:
        text = example.text
        pairs, queries = text.split(";")
        table = dict(p.split(":") for p in pairs.split(","))
        assert len(table) == example.length  # distinct keys, one pair each
        asked = re.findall(r" ([a-z]{2})=(\d)", queries)
        assert len(asked) == min(3, example.length) and len({k for k, _ in asked}) == len(asked)
        assert all(table[k] == v for k, v in asked)
        assert example.answer_text == "".join(v for _, v in asked)


@pytest.mark.parametrize("name", ["passkey", "niah", "var_track"])
def test_filler_tasks_are_exactly_their_length_in_tokens(name):
    task, made = examples(name, count=40)
    assert task.unit == "tokens"
    assert all(len(e.tokens) == e.length for e in made)
    assert min(e.length for e in made) >= task.shortest()


def test_passkey_holds_the_key_at_its_depth_and_asks_for_it():
    task = make("passkey")
    rng = np.random.default_rng(0)
    for depth in (0.0, 0.3, 0.7, 1.0):
        example = task.example(rng, 400, depth)
        text = example.text
        key = re.search(r"The pass key is (\d+)\. Remember it\. \1 is the pass key\. ", text)
        assert key and example.answer_text == key.group(1) and 1 <= int(key.group(1)) <= 50000
        assert text.endswith("What is the pass key? The pass key is " + key.group(1))
        filler_before = key.start()
        filler_total = (
            len(text) - len(key.group(0)) - len("What is the pass key? The pass key is ") - len(key.group(1))
        )
        assert abs(filler_before - depth * filler_total) <= 1
        assert text[:filler_before] == (FILLER * 10)[:filler_before]


def test_niah_asks_for_one_of_its_needles():
    _, made = examples("niah", count=30, needles=3)
    for example in made:
        needles = dict(re.findall(r"The number for ([a-z]{4}) is (\d{5})\. ", example.text))
        asked = re.search(r"What is the number for ([a-z]{4})\? It is (\d{5})$", example.text)
        assert len(needles) == 3 and needles[asked.group(1)] == asked.group(2) == example.answer_text


def test_var_track_answer_is_the_chain_of_the_asked_value():
    _, made = examples("var_track", count=30, chains=2, hops=2, train_lengths=[200, 256])
    for example in made:
        text = example.text
        value = re.search(r"Which variables hold (\d{5})\? ", text).group(1)
        holds, changed = {value}, True
        assignments = re.findall(r"VAR ([A-Z]{2}) = ([A-Z]{2}|\d{5})\. ", text)
        while changed:  # follow every hop, in any order
            before = len(holds)
            holds |= {name for name, source in assignments if source in holds}
            changed = len(holds) > before
        names = [name for name, _ in assignments if name in holds]
        assert example.answer_text == " ".join(names) and len(names) == 3


def test_the_loss_mask_covers_exactly_the_answer_tokens():
    _, made = examples("assoc_recall", count=8, queries=2)
    x, y = collate(made)
    T = max(len(e.tokens) for e in made)
    assert x.shape == y.shape == (8, T - 1)
    for row, example in enumerate(made):
        n = len(example.tokens)
        assert (x[row, : n - 1].numpy() == example.tokens[:-1]).all() and (x[row, n:] == PAD).all()
        scored = (y[row] != IGNORE).numpy()
        assert (scored[: n - 1] == example.answer[1:]).all() and not scored[n - 1 :].any()
        assert (y[row][y[row] != IGNORE].numpy() == example.tokens[example.answer]).all()


def test_batches_resume_exactly_and_split_across_ranks():
    task = make("reverse")
    whole = TaskBatches(task, 8, seed=5)
    first = [whole.next() for _ in range(3)]
    resumed = TaskBatches(task, 8, seed=5)
    resumed.load_state_dict({**whole.state_dict(), "batch_index": 1})
    assert all(torch.equal(a, b) for a, b in zip(resumed.next(), first[1]))
    ranks = [TaskBatches(task, 8, seed=5, rank=r, world_size=2) for r in range(2)]
    halves = [r.next() for r in ranks]
    assert torch.equal(torch.cat([h[0] for h in halves]), first[0][0])
    lengths = [int((x != PAD).sum()) for x, _ in first]
    assert len(set(lengths)) > 1  # a length is drawn per batch


def test_resuming_with_other_task_settings_is_refused():
    batches = TaskBatches(make("reverse"), 8, seed=5)
    with pytest.raises(ValueError, match="train_lengths"):
        TaskBatches(make("reverse", train_lengths=[1, 20]), 8, seed=5).load_state_dict(batches.state_dict())


def test_test_buckets_and_test_sets_are_fixed_and_in_range():
    task = make("copy", train_lengths=[1, 40], test_lengths=[40, 80, 160])
    buckets = length_buckets(task.cfg)
    assert buckets == [Bucket(1, 40), Bucket(41, 80), Bucket(81, 160)]
    made = fixed_examples(task, buckets[1])
    assert len(made) == task.cfg.test_examples and all(41 <= e.length <= 80 for e in made)
    assert all((a.tokens == b.tokens).all() for a, b in zip(made, fixed_examples(task, buckets[1])))
    retrieval = make("passkey", test_examples=3, depth_buckets=4)
    made = fixed_examples(retrieval, Bucket(257, 512))
    bands = sorted(int(e.depth * 4) for e in made)
    assert bands == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


class Oracle(torch.nn.Module):
    """Predicts the true next token except where told to be wrong: (row, position) pairs."""

    def __init__(self, x, y, wrong):
        super().__init__()
        self.x, self.y, self.wrong = x, y, wrong

    def forward(self, tokens, pos=None):
        T = tokens.shape[1]
        truth = torch.where(self.y[:, :T] == IGNORE, 0, self.y[:, :T])
        for row, t in self.wrong:
            if t < T:
                truth[row, t] = (truth[row, t] + 1) % 97
        return torch.nn.functional.one_hot(truth, 97).float()


def test_accuracy_counts_exact_matches_and_answer_tokens():
    _, made = examples("copy", count=3, train_lengths=[4, 4])  # 8 answer tokens each
    x, y = collate(made)
    answer_at = [torch.nonzero(y[r] != IGNORE).flatten().tolist() for r in range(3)]
    wrong = [(1, answer_at[1][0]), (2, answer_at[2][0]), (2, answer_at[2][5])]
    model = Oracle(x, y, wrong)
    scores = answer_scores(model, made, Decoding.teacher_forced, "cpu")
    assert scores.tolist() == [[8, 8], [7, 8], [6, 8]]
    exact, share = scores[:, 0] == scores[:, 1], scores[:, 0] / scores[:, 1]
    assert exact.mean() == pytest.approx(1 / 3) and share.mean() == pytest.approx((8 + 7 + 6) / 24)


def test_depth_buckets_group_examples_by_needle_depth():
    task = make("passkey", test_examples=2, depth_buckets=2)
    made = fixed_examples(task, Bucket(257, 512))
    scores = np.array([[5, 5], [0, 5], [5, 5], [5, 5]])
    result = by_depth(made, scores, 2)
    assert result["start"] == [0.0, 0.5] and result["examples"] == [2, 2]
    assert result["accuracy"] == [0.5, 1.0] and result["token_accuracy"] == [0.5, 1.0]


class Echo(torch.nn.Module):
    """Predicts that every token repeats the one before it, except where told: a wrong token fed back
    changes every prediction after it."""

    def __init__(self, wrong_at: int):
        super().__init__()
        self.wrong_at = wrong_at
        self.encoding = type("E", (), {"positions": staticmethod(lambda T, device: torch.arange(T))})()

    def forward(self, tokens, pos=None):
        guess = tokens.clone()
        if tokens.shape[1] > self.wrong_at:
            guess[:, self.wrong_at] = (guess[:, self.wrong_at] + 1) % 97
        return torch.nn.functional.one_hot(guess, 97).float()


def test_greedy_decoding_feeds_back_its_own_predictions():
    _, made = examples("copy", count=1, train_lengths=[3, 3])  # "s=" then 6 answer tokens
    x, y = collate(made)
    answer = torch.nonzero(y[0] != IGNORE).flatten().tolist()
    model = Echo(wrong_at=answer[1])
    greedy = greedy_predictions(model, x, y)
    forced = model(x).argmax(-1)
    # teacher-forced, the echo sees the true previous token; greedy, it sees its own last guess, so
    # the one wrong guess is repeated at every later answer position
    assert torch.equal(forced[0, answer[2:]], x[0, answer[2:]])
    assert (greedy[0, answer[2:]] == greedy[0, answer[1]]).all() and greedy[0, answer[1]] != x[0, answer[1]]
    assert (greedy[y == IGNORE] == IGNORE).all()


def test_a_training_batch_has_one_length_unless_asked_per_sequence():
    per_batch = TaskBatches(make("reverse"), 16, seed=2).examples(0)
    assert len({e.length for e in per_batch}) == 1
    per_sequence = TaskBatches(make("reverse", length_sampling="per_sequence"), 16, seed=2).examples(0)
    assert len({e.length for e in per_sequence}) > 1


def test_test_batches_hold_one_token_length():
    from posbench.evaluation.tasks import equal_length_batches

    task = make("binary_add", train_lengths=[3, 12], test_lengths=[12])
    made = sorted(fixed_examples(task, Bucket(3, 12)), key=lambda e: len(e.tokens))
    batches = equal_length_batches(made, 8)
    assert sum(len(b) for b in batches) == len(made) and all(len(b) <= 8 for b in batches)
    assert all(len({len(e.tokens) for e in b}) == 1 for b in batches)
