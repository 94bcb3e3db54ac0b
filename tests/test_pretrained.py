"""Protects hf=NAME_OR_DIR (pretrained Llama-family models), offline: a randomly initialised tiny Llama
and a tokenizer saved to a temporary folder. posbench's rotary embedding gives HF's logits for every
rope_type HF has; non-Llama models are refused in one line."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")  # the `hf` extra; a dev dependency too

from posbench.pretrained.loading import load_config, load_model  # noqa: E402
from posbench.pretrained.rotary import chosen_scaling, model_scaling, replace_rotary  # noqa: E402

VOCAB = 300
ROPE_TYPES = {
    "default": {},
    "linear": {"factor": 4.0},
    "dynamic": {"factor": 4.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 64},
    "llama3": {
        "factor": 4.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "longrope": {
        "short_factor": [1.0 + 0.05 * i for i in range(8)],
        "long_factor": [1.0 + 0.4 * i for i in range(8)],
        "original_max_position_embeddings": 64,
    },
}


def tiny_llama(rope_type: str = "default", **config) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256 if rope_type in ("longrope",) else 64,
        rope_parameters={"rope_type": rope_type, "rope_theta": 10000.0, **ROPE_TYPES[rope_type]},
        attn_implementation="sdpa",
        **config,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("rope_type", sorted(ROPE_TYPES))
def test_posbench_rotary_gives_hf_logits_for_every_rope_type(rope_type):
    hf = tiny_llama(rope_type)
    tokens = torch.randint(0, VOCAB, (2, 200))  # past the original length: the scaling acts
    with torch.no_grad():
        want = hf(input_ids=tokens).logits
        replace_rotary(hf, model_scaling(hf.config))
        got = hf(input_ids=tokens).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert model_scaling(hf.config).kind == {"default": "none", "dynamic": "dynamic_ntk"}.get(
        rope_type, rope_type
    )


def test_a_requested_kind_takes_the_models_factor_and_original_length():
    scaled = tiny_llama("yarn")
    assert chosen_scaling(scaled.config, {"kind": "linear"}).factor == 4.0
    assert chosen_scaling(scaled.config, {"kind": "linear"}).original_max_position == 64
    assert chosen_scaling(scaled.config, {"kind": "yarn", "factor": 8.0}, frozenset({"factor"})).factor == 8.0
    assert chosen_scaling(scaled.config, {"kind": "yarn", "factor": "auto"}).factor == 4.0  # YAML default
    plain = tiny_llama("default")  # an unscaled model lends its length, not a factor: auto stands
    assert chosen_scaling(plain.config, {"kind": "yarn", "factor": "auto"}).factor == "auto"


def test_a_model_outside_the_llama_family_is_refused_in_one_line(tmp_path):
    gpt2 = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)
    gpt2.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a 'gpt2' model; posbench evaluates Llama-family") as info:
        load_config(str(tmp_path), None)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="cannot load its config"):
        load_model(str(tmp_path / "missing"), None, torch.device("cpu"), torch.float32)


def save_model_and_tokenizer(folder, rope_type: str = "default"):
    """A tiny random Llama and a byte-level BPE tokenizer (trained here) saved as a model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([TEXT] * 4, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    tiny_llama(rope_type).save_pretrained(folder)
    return folder


TEXT = " ".join(f"The pass key is {n}. The grass is green, the sky is blue." for n in range(400))


def text_corpus(tmp_path):
    for split, start in (("train", 0), ("val", 5000)):
        (tmp_path / f"{split}.txt").write_text(
            " ".join(f"Line {n} of the {split} text." for n in range(start, start + 800))
        )
    return [
        "data=text_files",
        f"data.train_files=[{tmp_path / 'train.txt'}]",
        f"data.val_files=[{tmp_path / 'val.txt'}]",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]


@pytest.mark.slow
def test_posbench_eval_hf_equals_a_direct_hf_computation(tmp_path):
    import json
    import math

    import numpy as np

    from posbench.data import load_corpus
    from posbench.jobs.pretrained import corpus_config
    from tests.conftest import posbench_cli

    folder = save_model_and_tokenizer(tmp_path / "model")
    data = text_corpus(tmp_path)
    done = posbench_cli(
        "eval",
        f"hf={folder}",
        *data,
        "eval.lengths=[32,128]",
        "eval.max_tokens=512",
        "passkey.lengths=[250]",
        "encoding/scaling=none",  # past the model's 64 positions on purpose
        "passkey.depth_buckets=2",
        "passkey.trials=2",
        f"run_root={tmp_path / 'runs'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [out] = (tmp_path / "runs" / "eval").iterdir()
    assert out.name.endswith("_hf-model")
    document = json.loads((out / "results.json").read_text())
    assert document["encoding"] == "model" and document["pretrained"]["source"] == str(folder)
    assert document["train_seq_len"] == 64 and document["results"][0]["backend"] == "hf-sdpa"
    grid = json.loads((out / "passkey.json").read_text())["results"]
    assert [row["length"] for row in grid] == [250] and len(grid[0]["by_depth"]["accuracy"]) == 2
    assert (out / "passkey.png").stat().st_size > 0 and len(
        (out / "passkey.csv").read_text().splitlines()
    ) == 3
    plain = {
        "data": {
            "name": "text_files",
            "train_files": [str(tmp_path / "train.txt")],
            "val_files": [str(tmp_path / "val.txt")],
            "cache_dir": str(tmp_path / "cache"),
        }
    }
    stream = load_corpus(corpus_config(plain, str(folder), None)).val
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    for row in document["results"]:
        L = row["length"]
        windows = [np.asarray(stream[s : s + L + 1], dtype=np.int64) for s in range(0, row["windows"] * L, L)]
        tokens = torch.from_numpy(np.stack(windows))
        with torch.no_grad():
            logits = hf(input_ids=tokens[:, :-1]).logits
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:]).item()
        assert row["nll"] == pytest.approx(nll, rel=1e-5) and row["ppl"] == pytest.approx(
            math.exp(nll), rel=1e-5
        )


def test_passkey_prompts_have_the_yarn_format_and_the_key_at_its_depth():
    from posbench.pretrained.passkey import FILLER, QUESTION, TASK, key_line, prompt

    lines = prompt(1000, 0.3, 4321).split("\n")
    assert (
        lines[0] == TASK
        and lines[2] == key_line(4321) == "The pass key is 4321. Remember it. 4321 is the pass key."
    )
    assert lines[4] == QUESTION == "What is the pass key? The pass key is"
    assert len(lines[1]) == 300 and len(lines[3]) == 700  # depth 0.3 of 1000 filler characters
    assert lines[1].startswith(FILLER) and lines[3].startswith(FILLER)
    assert prompt(1000, 0.0, 7).split("\n")[1] == "" and prompt(1000, 1.0, 7).split("\n")[3] == ""


@pytest.mark.parametrize(
    "answer, key",
    [
        (" 12345.", 12345),
        ("00042 is it", 42),
        ("-7", 7),
        ("1,234", 1),
        ("no digits here", None),
        ("", None),
        ("key: 3 4", 3),
    ],
)
def test_the_scorer_takes_the_first_integer(answer, key):
    from posbench.pretrained.passkey import first_integer

    assert first_integer(answer) == key


def test_the_filler_is_the_longest_that_fits_and_the_grid_is_seeded(tmp_path):
    from posbench.pretrained.passkey import FILLER, PasskeyConfig, filler_for, passkey_grid, prompt

    folder = save_model_and_tokenizer(tmp_path / "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    chars = filler_for(tokenizer, 400)
    count = len(tokenizer(prompt(chars, 0.5, 50000))["input_ids"])
    assert count <= 400 < len(tokenizer(prompt(chars + len(FILLER), 0.5, 50000))["input_ids"])
    with pytest.raises(ValueError, match="shorter than the prompt without filler"):
        filler_for(tokenizer, 20)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    cfg = PasskeyConfig(lengths=[200, 260], depth_buckets=3, trials=2, seed=3, max_new_tokens=3)
    first, again = (passkey_grid(model, tokenizer, cfg, torch.device("cpu")) for _ in range(2))
    assert first == again and [row["length"] for row in first] == [200, 260]
    assert all(len(row["by_depth"]["accuracy"]) == 3 and 0 <= row["accuracy"] <= 1 for row in first)


def test_other_overrides_and_both_sources_are_refused_in_one_line():
    from omegaconf import OmegaConf

    from posbench.jobs.pretrained import check_overrides

    for plain, named in [
        ({"hf": "m", "encoding": {"temperature": {"kind": "logn"}}}, "encoding.temperature"),
        ({"hf": "m", "model": {"attention": "eager"}}, "model"),
    ]:
        with pytest.raises(ValueError, match=f"not {named}"):
            check_overrides(plain)
    check_overrides({"hf": "m", "encoding": {"scaling": {"kind": "yarn"}}, "data": {"name": "hf"}})
    from posbench.cli import eval_job

    both = OmegaConf.create({"hf": {"name": "m"}, "checkpoint": "c"})
    with pytest.raises(SystemExit):
        eval_job(both)


def test_a_model_folder_without_a_tokenizer_is_refused_in_one_line_naming_it(tmp_path):
    from posbench.data import DataError
    from posbench.data.tokenizer import PretrainedTokenizer

    tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(DataError, match=f"cannot load the tokenizer of {tmp_path} .*tokenizer files") as info:
        PretrainedTokenizer.load(tmp_path)
    assert "\n" not in str(info.value)


def test_a_pretrained_models_chunked_loss_equals_its_whole_window_loss():
    """hf= evaluation scores from the decoder's final hidden states, eval.loss_chunk tokens' logits at a
    time: the same per-token NLL as from the whole (T, V) logits."""
    import numpy as np

    from posbench.evaluation.evaluator import score_windows
    from posbench.evaluation.protocol import windows
    from posbench.pretrained.adapter import PretrainedLM

    model = PretrainedLM(tiny_llama().eval())
    stream = np.random.default_rng(0).integers(0, VOCAB, size=200).astype(np.int64)
    batch = list(windows(len(stream), 48, "nonoverlapping"))[:2]
    cpu = torch.device("cpu")
    whole, scored = score_windows(model, stream, 48, batch, cpu, loss_chunk=0)
    chunked, _ = score_windows(model, stream, 48, batch, cpu, loss_chunk=5)
    assert scored.all() and np.allclose(chunked, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "source,kind,label,expected",
    [
        ("meta-llama/Llama-3.2-1B", "yarn", None, "Llama-3.2-1B+yarn"),
        ("/models/my-llama/", "none", None, "my-llama"),
        (
            "/home/u/.cache/huggingface/hub/models--meta-llama--Llama-3.2-1B/snapshots/4e20de362430cd3b72f3",
            "ntk",
            None,
            "Llama-3.2-1B+ntk",
        ),
        ("meta-llama/Llama-3.2-1B", "yarn", "llama-yarn-x4", "llama-yarn-x4"),
    ],
)
def test_a_pretrained_run_is_labelled_by_its_model_not_a_snapshot_hash(source, kind, label, expected):
    from posbench.pretrained.naming import model_label
    from posbench.runs.resolvers import eval_folder

    assert model_label(source, kind, label) == expected
    assert eval_folder(None, source, label, kind) == f"hf-{expected}"


def test_pretrained_settings_are_refused_in_one_line_before_loading(monkeypatch):
    import sys
    from types import SimpleNamespace

    from posbench.config import EvalConfig
    from posbench.jobs.pretrained import checked_bos
    from posbench.pretrained.loading import HFModelConfig, check_device_map

    with pytest.raises(ValueError, match=r"hf\.dtype=fp8 is not one of auto, fp32, bf16"):
        HFModelConfig(name="m", dtype="fp8")
    monkeypatch.setitem(sys.modules, "accelerate", None)  # not installed
    with pytest.raises(ValueError, match=r"hf\.device_map=auto needs accelerate: pip install accelerate"):
        check_device_map("auto")
    no_bos = SimpleNamespace(bos_token_id=None)
    with pytest.raises(ValueError, match=r"its tokenizer has no BOS token; drop eval\.add_bos"):
        checked_bos(no_bos, EvalConfig(add_bos=True), "m")
    assert checked_bos(no_bos, EvalConfig(), "m") is None
    assert checked_bos(SimpleNamespace(bos_token_id=1), EvalConfig(), "m") == 1


@pytest.mark.slow
def test_bos_windows_on_validation_files_alone_equal_a_direct_hf_computation(tmp_path):
    """eval.add_bos puts the tokenizer's BOS before every window; data.val_files alone is enough; the
    label and the folder name are hf.label's; the heading says what the model is."""
    import json

    import numpy as np

    from posbench.data import load_corpus
    from posbench.jobs.pretrained import corpus_config
    from tests.conftest import posbench_cli

    folder = save_model_and_tokenizer(tmp_path / "model")
    (tmp_path / "val.txt").write_text(" ".join(f"Line {n} of the val text." for n in range(800)))
    data = ["data=text_files", f"data.val_files=[{tmp_path / 'val.txt'}]", f"data.cache_dir={tmp_path / 'c'}"]
    done = posbench_cli(
        "eval",
        f"hf={folder}",
        "hf.label=tiny-bos",
        *data,
        "eval.lengths=[32]",
        "eval.max_tokens=256",
        "eval.add_bos=true",
        f"run_root={tmp_path / 'runs'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny-bos, pretrained, original context 64" in done.stdout
    [out] = (tmp_path / "runs" / "eval").iterdir()
    assert out.name.endswith("_hf-tiny-bos")
    document = json.loads((out / "results.json").read_text())
    assert document["encoding"] == "tiny-bos" and document["protocol"]["bos_id"] == 0  # "<s>"
    plain = {
        "data": {
            "name": "text_files",
            "val_files": [str(tmp_path / "val.txt")],
            "cache_dir": str(tmp_path / "c"),
        }
    }
    stream = load_corpus(corpus_config(plain, str(folder), None), splits=("val",)).val
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    [row] = document["results"]
    starts = range(1, 1 + row["windows"] * 32, 32)  # after the leading separator, which BOS replaces
    rows = [[0, *np.asarray(stream[s : s + 32], dtype=np.int64)] for s in starts]
    tokens = torch.tensor(rows)
    with torch.no_grad():
        logits = hf(input_ids=tokens[:, :-1]).logits
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:]).item()
    assert row["tokens_scored"] == 256 and row["nll"] == pytest.approx(nll, rel=1e-5)


@pytest.mark.parametrize(
    "hub_error,message",
    [
        ("GatedRepoError", "is gated: accept its licence"),
        ("RevisionNotFoundError", "hf.revision=v9 does not exist for hf=org/model"),
        ("RepositoryNotFoundError", "is neither a local folder nor a model on the Hub"),
    ],
)
def test_hub_failures_are_one_line_that_says_what_to_do(monkeypatch, hub_error, message):
    from huggingface_hub import errors

    from posbench.pretrained.loading import load_config

    kind = getattr(errors, hub_error)
    cause = kind.__new__(kind)  # the Hub's error, as transformers chains it (its __init__ wants a response)

    def refuse(*args, **kwargs):
        raise OSError("a long message\\nover several lines") from cause

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    with pytest.raises(ValueError, match=message) as info:
        load_config("org/model", "v9")
    assert "\n" not in str(info.value)


def test_a_task_past_the_models_positions_needs_a_scaling_or_a_stated_none():
    from types import SimpleNamespace

    from posbench.jobs.pretrained import check_task_lengths
    from posbench.pretrained.passkey import PasskeyConfig

    config, unscaled = SimpleNamespace(max_position_embeddings=64), SimpleNamespace(kind="none")
    with pytest.raises(ValueError, match="past the model's 64 positions, with no RoPE scaling"):
        check_task_lengths(PasskeyConfig(lengths=[250]), config, unscaled, chosen=False)
    check_task_lengths(PasskeyConfig(lengths=[250]), config, unscaled, chosen=True)  # on purpose
    check_task_lengths(PasskeyConfig(lengths=[250]), config, SimpleNamespace(kind="yarn"), chosen=False)
    check_task_lengths(PasskeyConfig(lengths=[64]), config, unscaled, chosen=False)


def test_every_spelling_of_hf_names_the_model():
    from posbench.cli import pretrained_shorthand

    argv = ["hf=org/m", "+hf=org/m", "++hf=org/m", "hf.label=x", "hf=a,b"]
    assert pretrained_shorthand("eval", argv) == [
        "hf.name=org/m",
        "hf.name=org/m",
        "hf.name=org/m",
        "hf.label=x",
        "hf.name=a,b",
    ]
    assert pretrained_shorthand("train", ["hf=x"]) == ["hf=x"]
