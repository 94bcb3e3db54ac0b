"""Context extension as practised: a new run from a parent's weights (train.init_from), train-time RoPE
scaling that is the eval-time function, PoSE positions, and LongRoPE against Hugging Face's function."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from posbench.config import to_plain_dict
from posbench.data import TrainBatches, load_corpus
from posbench.encodings.positions import PosePositions
from posbench.encodings.rope_scaling import longrope_seed_factors, rope_frequencies, yarn_ramp
from posbench.jobs.evaluate import checkpoint_run_config
from posbench.jobs.train import train
from posbench.model.transformer import Transformer
from posbench.reports.compare import compare
from posbench.reports.results import load_results
from posbench.runs.checkpoint import load_checkpoint
from posbench.training.init_from import initialise_from_parent
from tests.conftest import REPO, compose_run

PARENT = ["encoding=rope", "train.seq_len=64", "train.max_steps=4", "train.val_every=0", "eval.lengths=[64]"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A rope model trained 4 steps at L = 64 (seconds)."""
    root = tmp_path_factory.mktemp("parent")
    run = compose_run("debug=smoke", "logger=jsonl", f"run_root={root}", *PARENT)
    train(run, root / "run")
    return root / "run"


def child(parent_dir, tmp_path, *overrides):
    return compose_run(
        "debug=smoke",
        "logger=jsonl",
        f"run_root={tmp_path}",
        "encoding=rope",
        f"train.init_from={parent_dir}",
        "train.val_every=0",
        *overrides,
    )


def test_init_from_loads_exactly_the_parents_weights(parent, tmp_path):
    run = child(parent, tmp_path, "train.seq_len=128", "encoding/scaling=yarn")
    corpus = load_corpus(run.data)
    model = Transformer(run.model, run.encoding, corpus.vocab_size)
    initialise_from_parent(model, run, corpus.vocab_size, corpus.fingerprint)
    saved = load_checkpoint(parent)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert run.parent["name"] == "rope-L64-s0" and run.parent["step"] == 4 and run.parent["train_len"] == 64
    assert run.encoding.scaling.original_max_position == 64  # the parent's training length


def test_a_child_starts_fresh_and_its_first_loss_is_the_parents_on_that_batch(parent, tmp_path):
    run = child(parent, tmp_path, "train.seq_len=64", "train.max_steps=1", "train.seed=3")
    metrics = train(run, tmp_path / "child")
    corpus = load_corpus(run.data)
    parent_model = Transformer(run.model, run.encoding, corpus.vocab_size)
    parent_model.load_state_dict(load_checkpoint(parent)["model"])
    x, y = TrainBatches(corpus.train, 64, run.train.batch_size, seed=3).next()
    with torch.no_grad():
        expected = F.cross_entropy(parent_model(x).flatten(0, 1), y.flatten()).item()
    assert metrics["losses"][1] == pytest.approx(expected, rel=1e-5)
    state = load_checkpoint(tmp_path / "child")
    assert state["step"] == 1 and state["tokens_seen"] == run.train.batch_size * 64  # a new run's count
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {1}  # a fresh AdamW
    document = load_results(tmp_path / "child")
    assert document["parent"]["name"] == "rope-L64-s0" and document["config"]["parent"] == run.parent


def test_train_time_scaling_is_the_eval_time_function(parent, tmp_path):
    run = child(parent, tmp_path, "train.seq_len=128", "encoding/scaling=yarn", "encoding.scaling.factor=4")
    corpus = load_corpus(run.data)
    tuned = Transformer(run.model, run.encoding, corpus.vocab_size)
    initialise_from_parent(tuned, run, corpus.vocab_size, corpus.fingerprint)
    saved = load_checkpoint(parent)
    scaling = {"encoding": {"scaling": to_plain_dict(run)["encoding"]["scaling"]}}
    evaluated_run = checkpoint_run_config(saved["config"], to_plain_dict(run.eval), scaling, "cpu")
    evaluated = Transformer(evaluated_run.model, evaluated_run.encoding, corpus.vocab_size)
    evaluated.load_state_dict(saved["model"])
    x = torch.randint(0, corpus.vocab_size, (2, 256))
    tuned.train()  # the training forward's frequencies
    with torch.no_grad():
        assert torch.equal(tuned(x), evaluated.eval()(x))


def test_weights_that_do_not_fit_are_refused_naming_what_differs(parent, tmp_path):
    corpus_run = child(parent, tmp_path, "model.n_layers=3")
    corpus = load_corpus(corpus_run.data)
    model = Transformer(corpus_run.model, corpus_run.encoding, corpus.vocab_size)
    with pytest.raises(ValueError, match=r"model.n_layers: parent 2, this run 3"):
        initialise_from_parent(model, corpus_run, corpus.vocab_size, corpus.fingerprint)
    other = child(parent, tmp_path, "encoding=alibi")
    model = Transformer(other.model, other.encoding, corpus.vocab_size)
    with pytest.raises(ValueError, match=r"encoding.name: parent rope, this run alibi"):
        initialise_from_parent(model, other, corpus.vocab_size, corpus.fingerprint)
    with pytest.raises(ValueError, match=r"train.init_from=.*no checkpoint"):
        child(tmp_path / "nothing", tmp_path)


def test_compare_shows_the_lineage_beside_the_parent(parent, tmp_path):
    run = child(
        parent,
        tmp_path,
        "train.seq_len=128",
        "train.max_steps=2",
        "encoding/scaling=yarn",
        "eval.lengths=[64]",
    )
    train(run, tmp_path / "sweep" / "child")
    text = compare([parent, tmp_path / "sweep"], tmp_path)
    assert "| rope-L64 → rope+yarn-L128 (2 steps) |" in text and "| rope |" in text
    assert "### Trained at L = 64" in text and "Trained at L = 128" not in text


def test_pose_positions_increase_stay_in_the_target_and_cover_it():
    sampler, T, target = PosePositions(256), 32, 256
    seen = torch.zeros(target, dtype=torch.bool)
    torch.manual_seed(0)
    for _ in range(400):
        pos = sampler(T, torch.device("cpu"), training=True)
        assert pos.shape == (T,) and (pos[1:] > pos[:-1]).all() and pos[0] == 0 and pos[-1] < target
        gaps = (pos[1:] - pos[:-1] > 1).sum()
        assert gaps <= 1  # two chunks: one skip
        seen[pos] = True
    assert seen.all()  # every position of the target is reached
    assert torch.equal(sampler(T, torch.device("cpu"), training=False), torch.arange(T))


@pytest.mark.parametrize("encoding", ["rope", "alibi", "t5", "fire", "kerple_log"])
def test_pose_trains_every_position_taking_encoding(encoding, tmp_path):
    run = compose_run("debug=smoke", f"encoding={encoding}", "encoding.pose_target=1024")
    assert run.encoding.label() == f"{encoding}+pose"
    model = Transformer(run.model, run.encoding, 256).train()
    torch.manual_seed(1)
    pos = model.encoding.positions(128, torch.device("cpu"))
    assert pos.max() >= 128  # this draw skips past the window
    tokens = torch.randint(0, 256, (2, 128))
    loss = model(tokens, pos).logsumexp(-1).mean()
    loss.backward()
    assert math.isfinite(loss.item())
    with torch.no_grad():  # the skip reaches the scores: the logits after the cut change
        assert not torch.allclose(model(tokens, pos), model(tokens, torch.arange(128)))
    assert torch.equal(model.eval().encoding.positions(128, torch.device("cpu")), torch.arange(128))


def hf_longrope(head_dim, base, short, long, original, target, seq_len):
    import transformers  # a dev dependency: this parity is checked wherever the tests run
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(
        hidden_size=head_dim * 2,
        num_attention_heads=2,
        max_position_embeddings=target,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": base,
            "factor": target / original,
            "short_factor": short,
            "long_factor": long,
            "original_max_position_embeddings": original,
        },
    )
    return ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", seq_len)


@pytest.mark.parametrize("seq_len", [None, 100, 256, 257, 1000])
def test_longrope_matches_hugging_face(seq_len):
    head_dim, base, original, target = 16, 10000.0, 256, 1024
    short = [1.0 + 0.1 * i for i in range(head_dim // 2)]
    long = [1.0 + 0.5 * i for i in range(head_dim // 2)]
    ours = rope_frequencies(
        head_dim, base, "longrope", target / original, original, seq_len, short_factor=short, long_factor=long
    )
    theirs = hf_longrope(head_dim, base, short, long, original, target, seq_len)
    torch.testing.assert_close(ours[0].float(), theirs[0], rtol=1e-6, atol=0)
    assert ours[1] == pytest.approx(theirs[1]) == pytest.approx(math.sqrt(1 + math.log(4) / math.log(256)))


def test_longrope_seed_factors_follow_the_yarn_ramp():
    factors = torch.tensor(longrope_seed_factors(64, 10000.0, 8.0, 256))
    ramp = yarn_ramp(64, 10000.0, 256, 32.0, 1.0)
    assert factors[0] == 1 and factors[-1] == 8 and (factors[1:] >= factors[:-1]).all()
    torch.testing.assert_close(factors, (1 + 7 * ramp).float())


def test_options_added_since_keep_recorded_runs_where_they_are():
    """The committed reference runs were recorded before train.init_from, PoSE and tasks existed: the
    same sweep composed today still names their folders, so a rerun skips them and compare pairs them."""
    from posbench.runs.identity import RunIdentity

    for encoding, folder in (("rope", "rope_L256_s0_12cb9c"), ("t5", "t5_L256_s0_9a38eb")):
        run = compose_run("experiment=alibi_table", f"encoding={encoding}", "train.seed=0")
        assert RunIdentity.of(run).folder == folder
        recorded = load_results(REPO / "experiments" / "alibi-table" / "runs-L256" / folder)
        assert recorded["identity"]["digest"] == RunIdentity.of(run).digest


@pytest.mark.slow
def test_a_parent_of_each_seed_gives_each_child_its_own_run(parent, tmp_path):
    from posbench.runs.identity import RunIdentity

    other_root = tmp_path / "other"
    run = compose_run("debug=smoke", "logger=jsonl", f"run_root={other_root}", *PARENT, "train.seed=1")
    train(run, other_root / "run")
    children = [RunIdentity.of(child(p, tmp_path, "train.seq_len=128")) for p in (parent, other_root / "run")]
    assert children[0].digest != children[1].digest  # the same child seed, parents of two seeds
    assert children[0].seedless_digest == children[1].seedless_digest  # one experiment
    assert child(parent, tmp_path).parent["seed"] == 0
    for i, p in enumerate((parent, other_root / "run")):  # child seed 0 of each parent seed
        train(child(p, tmp_path, "train.max_steps=2", "eval.lengths=[128]"), tmp_path / "kids" / str(i))
    text = compare([tmp_path / "kids"], tmp_path)
    assert "mean ± std over 2 seeds" in text and "evaluated 2 times" not in text


def test_learned_positions_must_reach_the_pose_target():
    with pytest.raises(ValueError, match="max_positions to at least pose_target"):
        compose_run("debug=smoke", "encoding=learned", "encoding.pose_target=1024")


def test_longrope_refuses_an_auto_factor():
    with pytest.raises(ValueError, match="factor=auto for longrope"):
        compose_run("encoding=rope", "encoding/scaling=longrope", "encoding.scaling.factor=auto")
