"""Token streams: each split tokenized once, cached on disk, and memory-mapped.

Layout of a stream: ``[sep] doc_1 [sep] doc_2 ... [sep] doc_n`` — the separator between
documents and once more at the very start, so the first token of every document, the
first one included, is predicted from a "document begins" context. There is no trailing
separator. Empty documents are skipped (and counted in ``info``).

Cache: ``<cache_dir>/streams/<fingerprint>/`` holds ``train.bin`` and ``val.bin`` (raw
ids, dtype in ``meta.json``), ``meta.json`` and, for BPE, ``tokenizer.json``. The
fingerprint hashes the corpus identity, the tokenizer settings and ``FORMAT_VERSION``, so
any change to them is a new directory, never a stale hit. The directory is built under a
temporary name and renamed into place, so a crashed build is never mistaken for a cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from posbench.data.errors import DataError
from posbench.data.sources import Split
from posbench.data.tokenizer import DocumentTokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"
ENCODE_BATCH = 64  # documents per tokenizer call: big enough for BPE's threads, small in memory
PROGRESS_EVERY_S = 30.0


@dataclass
class TokenizedCorpus:
    train: np.ndarray  # (N_train,) token ids, memory-mapped read-only
    val: np.ndarray  # (N_val,) token ids, memory-mapped read-only
    vocab_size: int
    separator_id: int  # between documents and at the start of both streams
    fingerprint: str  # the cache key: corpus identity + tokenizer settings + format version
    info: dict  # JSON-able description, for logs and run records


def fingerprint(corpus_name: str, identity: dict, tokenizer: dict) -> str:
    """``<corpus>-<tokenizer>-<16 hex>``: readable in ``ls``, unique by the hash."""
    key = json.dumps({"format": FORMAT_VERSION, "corpus": identity, "tokenizer": tokenizer}, sort_keys=True)
    return f"{corpus_name}-{tokenizer['kind']}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def stream_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def _batches(texts: Iterable[str]) -> Iterable[list[str]]:
    it = iter(texts)
    while batch := list(itertools.islice(it, ENCODE_BATCH)):
        yield batch


def write_stream(
    path: Path, texts: Iterable[str], tokenizer: DocumentTokenizer, split: str, skip: bool = False
) -> dict:
    """Tokenize ``texts`` into ``path`` in stream layout; returns counts for ``info``. ``skip``: an
    empty stream, for a split that was not asked for."""
    if skip:
        path.write_bytes(b"")
        return {"documents": 0, "empty_documents_skipped": 0, "tokens": 0, "not_tokenized": True}
    dtype = stream_dtype(tokenizer.vocab_size)
    separator = np.array([tokenizer.separator_id], dtype=dtype)
    documents = skipped = tokens = 0
    last_report = time.monotonic()
    with open(path, "wb") as out:
        for batch in _batches(texts):
            for ids in tokenizer.encode_batch(batch):
                if ids.size == 0:
                    skipped += 1
                    continue
                out.write(separator.tobytes())
                out.write(ids.astype(dtype).tobytes())
                documents += 1
                tokens += ids.size + 1
            if time.monotonic() - last_report > PROGRESS_EVERY_S:
                log.info("tokenizing %s: %d documents, %d tokens so far", split, documents, tokens)
                last_report = time.monotonic()
    if documents == 0:
        raise DataError(
            f"the {split} split has no non-empty documents; check the data files or dataset split"
        )
    return {"documents": documents, "empty_documents_skipped": skipped, "tokens": tokens}


def _open_stream(path: Path, dtype: np.dtype, tokens: int) -> np.ndarray:
    if path.stat().st_size != tokens * dtype.itemsize:
        raise DataError(f"cached stream {path} has the wrong size; delete {path.parent} to rebuild it")
    if tokens == 0:  # a split not tokenized (an evaluation's train split): mmap cannot map nothing
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def open_cached(directory: Path) -> Optional[TokenizedCorpus]:
    """The corpus cached in ``directory``, or None when it has not been built."""
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    dtype = np.dtype(meta["dtype"])
    info = {**meta["info"], "cache": str(directory)}  # where it is now, even if the cache moved
    return TokenizedCorpus(
        train=_open_stream(directory / "train.bin", dtype, info["train"]["tokens"]),
        val=_open_stream(directory / "val.bin", dtype, info["val"]["tokens"]),
        vocab_size=meta["vocab_size"],
        separator_id=meta["separator_id"],
        fingerprint=meta["fingerprint"],
        info=info,
    )


def build_streams(
    directory: Path,
    train: Split,
    val: Split,
    tokenizer: DocumentTokenizer,
    info: dict,
    skip: frozenset[str] | set[str] = frozenset(),
) -> TokenizedCorpus:
    """Tokenize both splits (but those in ``skip``) into ``directory`` atomically and open the result."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        started = time.monotonic()
        info = dict(info)
        info["train"] = {
            **write_stream(tmp / "train.bin", train.texts(), tokenizer, "train", "train" in skip),
            "names": train.names,
        }
        info["val"] = {
            **write_stream(tmp / "val.bin", val.texts(), tokenizer, "val", "val" in skip),
            "names": val.names,
        }
        tokenizer.save(tmp)
        meta = {
            "fingerprint": directory.name,
            "vocab_size": tokenizer.vocab_size,
            "separator_id": tokenizer.separator_id,
            "dtype": stream_dtype(tokenizer.vocab_size).name,
            "info": info,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        _publish(tmp, directory)
        log.info(
            "tokenized in %.1f s: train %d tokens, val %d tokens -> %s",
            time.monotonic() - started,
            info["train"]["tokens"],
            info["val"]["tokens"],
            directory,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cached = open_cached(directory)
    assert cached is not None
    return cached


def _publish(tmp: Path, directory: Path) -> None:
    try:
        os.rename(tmp, directory)
    except OSError:
        if not (directory / META_FILE).is_file():  # not a lost race with an identical build
            raise
