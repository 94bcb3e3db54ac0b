"""Data: a corpus config in, two cached token streams out, plus random training windows.

``load_corpus(cfg)`` is the whole interface for corpora: it returns the train and
validation token streams of the built-in ``shakespeare`` corpus, local ``text_files`` or
an ``hf`` dataset, tokenized once and memory-mapped from ``<cache_dir>/streams/``.
``TrainBatches`` draws training windows from the train stream.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from posbench.data.batches import TrainBatches
from posbench.data.errors import DataError
from posbench.data.sources import CORPORA
from posbench.data.streams import FORMAT_VERSION, TokenizedCorpus, build_streams, fingerprint, open_cached
from posbench.data.tokenizer import (
    DocumentTokenizer,
    load_tokenizer,
    make_tokenizer,
    tokenizer_settings,
)

if TYPE_CHECKING:
    from posbench.data.config import DataConfig

__all__ = ["DataError", "TokenizedCorpus", "TrainBatches", "cache_root", "corpus_tokenizer", "load_corpus"]

log = logging.getLogger(__name__)


def cache_root(cfg: DataConfig) -> Path:
    """``cfg.cache_dir`` expanded; resolved here too when a config was built in Python."""
    cache_dir = cfg.cache_dir
    if "${" in cache_dir:  # a dataclass default that never went through OmegaConf
        from omegaconf import OmegaConf

        cache_dir = OmegaConf.create({"dir": cache_dir}).dir
    return Path(cache_dir).expanduser()


SPLITS = ("train", "val")


def load_corpus(cfg: DataConfig, splits: tuple[str, ...] = SPLITS) -> TokenizedCorpus:
    """The corpus ``cfg`` names, tokenized: from the cache when built before, else built now.
    ``splits=("val",)`` (an evaluation of a pretrained model) tokenizes, and needs, only the
    validation split; the train stream is then empty."""
    cfg = dataclasses.replace(cfg, cache_dir=str(cache_root(cfg)))  # every part sees one real path
    source = CORPORA.implementation(cfg.name)
    tokenizer = tokenizer_settings(cfg)
    identity = source.identity(cfg)
    if tuple(splits) != SPLITS:  # its own cache: never mistaken for the whole corpus
        identity = {**identity, "tokenized_splits": list(splits)}
    key = fingerprint(cfg.name, identity, tokenizer)
    directory = Path(cfg.cache_dir) / "streams" / key
    cached = open_cached(directory)
    if cached is not None:
        log.info("corpus %s: cached token streams %s", cfg.name, directory)
        return cached
    log.info("corpus %s: building token streams in %s", cfg.name, directory)
    train, val = source.documents(cfg)
    for name, split in zip(SPLITS, (train, val)):
        if name in splits and split.missing:
            raise DataError(split.missing)
    if "train" not in splits:
        if tokenizer["kind"] == "bpe":
            raise DataError("a BPE tokenizer is trained on the train split: tokenize the train split too")
        train = dataclasses.replace(train, texts=lambda: iter(()), names=[])
    built = make_tokenizer(cfg, train.texts())
    info = {
        "corpus": cfg.name,
        "tokenizer": tokenizer,
        "vocab_size": built.vocab_size,
        "separator_id": built.separator_id,
        "separator": "separator id before every document: at the start of each stream and between documents",
        "fingerprint": key,
        "format_version": FORMAT_VERSION,
    }
    return build_streams(directory, train, val, built, info, skip=set(SPLITS) - set(splits))


def corpus_tokenizer(corpus: TokenizedCorpus) -> DocumentTokenizer:
    """The tokenizer a corpus was built with, e.g. to decode samples."""
    return load_tokenizer(corpus.info["tokenizer"]["kind"], Path(corpus.info["cache"]))
