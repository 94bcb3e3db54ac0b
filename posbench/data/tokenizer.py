"""Tokenizers: raw UTF-8 bytes, a byte-level BPE trained on the training split, or a pretrained
Hugging Face model's own tokenizer.

Both reserve one id as the document separator (see ``streams.py`` for where it goes) and
encode a batch of documents to 1-D id arrays. Both are lossless and cover every byte, so
no text is ever mapped to an unknown token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from posbench.data.errors import DataError

log = logging.getLogger(__name__)

SEPARATOR_TOKEN = "<|sep|>"
TOKENIZER_FILE = "tokenizer.json"


class DocumentTokenizer(Protocol):
    vocab_size: int
    separator_id: int

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: Path) -> None: ...


class ByteTokenizer:
    """UTF-8 bytes: vocab 256, id = byte value.

    Id 0 is the document separator. NUL bytes are stripped from the text before encoding,
    so in a token stream id 0 only ever means "document boundary".
    """

    vocab_size = 256
    separator_id = 0

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.replace("\0", "").encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        pass  # nothing learned, nothing to save


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization) with ``<|sep|>`` as id 0.

    The separator is a special token, but the literal string ``<|sep|>`` inside a document
    is encoded as ordinary text (``encode_special_tokens``), so documents cannot forge a
    boundary.
    """

    def __init__(self, tok) -> None:
        tok.encode_special_tokens = True  # a runtime flag: not stored in tokenizer.json
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.separator_id = tok.token_to_id(SEPARATOR_TOKEN)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        minimum = 256 + 1  # every byte plus the separator
        if vocab_size < minimum:
            raise DataError(
                f"data.bpe_vocab_size={vocab_size} is too small; byte-level BPE needs at least {minimum}"
            )
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[SEPARATOR_TOKEN],  # listed first, so it gets id 0
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        if tok.get_vocab_size() < vocab_size:
            log.warning(
                "BPE learned only %d of %d tokens: the training split is small",
                tok.get_vocab_size(),
                vocab_size,
            )
        return cls(tok)

    @classmethod
    def load(cls, directory: Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(directory / TOKENIZER_FILE)))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.tok.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        self.tok.save(str(directory / TOKENIZER_FILE))


class PretrainedTokenizer:
    """A Hugging Face model's own tokenizer (``transformers``, the ``hf`` extra). Documents are
    separated by the model's end-of-sequence token, as in its pretraining; no BOS is added."""

    def __init__(self, tok) -> None:
        if tok.eos_token_id is None:
            raise DataError("the pretrained tokenizer has no eos token to separate documents with")
        self.tok = tok
        self.vocab_size = len(tok)
        self.separator_id = int(tok.eos_token_id)

    @classmethod
    def load(cls, source: str | Path, revision: str | None = None) -> PretrainedTokenizer:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise DataError(
                "data.tokenizer=pretrained needs transformers: pip install 'posbench[hf]'"
            ) from None
        try:
            return cls(AutoTokenizer.from_pretrained(str(source), revision=revision))
        except (OSError, ValueError, TypeError) as exc:  # a folder without tokenizer files: ValueError
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(": ")
            raise DataError(
                f"cannot load the tokenizer of {source} ({first}): the folder needs the model's tokenizer "
                "files (tokenizer.json or tokenizer.model), or pass hf= a hub name"
            ) from None

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.tok(texts, add_special_tokens=False)["input_ids"]
        return [np.asarray(row, dtype=np.int64) for row in ids]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids])

    def save(self, directory: Path) -> None:
        self.tok.save_pretrained(str(directory))


def tokenizer_kind(cfg) -> str:
    return getattr(cfg.tokenizer, "value", cfg.tokenizer)


def tokenizer_settings(cfg) -> dict:
    """What the token ids depend on, for the cache key."""
    kind = tokenizer_kind(cfg)
    if kind == "bytes":
        return {"kind": "bytes", "strip_nul": True}
    if kind == "bpe":
        return {"kind": "bpe", "vocab_size": cfg.bpe_vocab_size, "separator": SEPARATOR_TOKEN}
    if kind == "pretrained":
        source = cfg.pretrained_tokenizer
        name = str(Path(source).resolve()) if Path(source).exists() else source
        return {"kind": "pretrained", "name": name, "revision": cfg.pretrained_revision, "separator": "eos"}
    raise DataError(f"unknown data.tokenizer {kind!r}; valid: bytes, bpe, pretrained")


def make_tokenizer(cfg, train_texts: Iterable[str]) -> DocumentTokenizer:
    """A fresh tokenizer; BPE is trained here, on the training split only."""
    if tokenizer_kind(cfg) == "bpe":
        log.info("training a %d-token byte-level BPE on the training split", cfg.bpe_vocab_size)
        return BPETokenizer.train(train_texts, cfg.bpe_vocab_size)
    if tokenizer_kind(cfg) == "pretrained":
        return PretrainedTokenizer.load(cfg.pretrained_tokenizer, cfg.pretrained_revision)
    return ByteTokenizer()


def load_tokenizer(kind: str, directory: Path) -> DocumentTokenizer:
    """The tokenizer saved with a cached corpus (for decoding samples)."""
    if kind == "pretrained":
        return PretrainedTokenizer.load(directory)
    return BPETokenizer.load(directory) if kind == "bpe" else ByteTokenizer()
