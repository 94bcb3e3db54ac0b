"""Where documents come from: the built-in corpus, local files, or a Hugging Face dataset.

Each source answers two questions. ``identity(cfg)`` is cheap and says what the token
streams depend on, so a cache hit never reads a document (and never needs the network).
``documents(cfg)`` is only called on a cache miss and returns the train and validation
splits as re-iterable document streams: BPE training and tokenization each take a pass,
and a large corpus is never held in memory whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from posbench.common.registry import Registry
from posbench.data.config import HFConfig, ShakespeareConfig, TextFilesConfig
from posbench.data.errors import DataError
from posbench.data.index import file_sha256
from posbench.data.local import jsonl_documents, text_document

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".json")


@dataclass
class Split:
    texts: Callable[[], Iterable[str]]  # a fresh pass over the documents on every call
    names: Optional[list[str]]  # the plays / files it is made of, for the record; None for hf
    missing: Optional[str] = None  # why it cannot be read (no files given); load_corpus refuses it if asked


@dataclass
class Source:
    identity: Callable[[Any], dict]
    documents: Callable[[Any], tuple[Split, Split]]


# --- the built-in corpus -------------------------------------------------------------------


def _read_files(paths: list[Path]) -> Callable[[], Iterator[str]]:
    # bytes then decode: text mode would silently rewrite line endings
    return lambda: (p.read_bytes().decode("utf-8") for p in paths)


# imported on use: `python -m posbench.data.shakespeare` must be the first to import it
def _shakespeare_identity(cfg: Any) -> dict:
    from posbench.data import shakespeare

    return shakespeare.identity(cfg)


def _shakespeare_documents(cfg: Any) -> tuple[Split, Split]:
    from posbench.data import shakespeare

    train, val = shakespeare.split_plays(cfg)
    return (
        Split(_read_files(list(train.values())), list(train)),
        Split(_read_files(list(val.values())), list(val)),
    )


# --- local .txt / .jsonl files ---------------------------------------------------------------


def _checked_files(files: list[str], key: str) -> list[Path]:
    if not files:
        raise DataError(f"data.{key} is empty; list at least one .txt or .jsonl file")
    paths = [Path(f).expanduser() for f in files]
    for path in paths:
        if not path.is_file():
            raise DataError(f"data.{key}: file not found: {path}")
        if path.suffix.lower() not in TEXT_SUFFIXES + JSONL_SUFFIXES:
            raise DataError(
                f"data.{key}: {path} is neither .txt (one document) nor .jsonl (one document per line)"
            )
    return paths


def _text_files_identity(cfg: Any) -> dict:
    # content hashes, not mtimes: a file rewritten within the clock's resolution still counts; a split
    # with no files (an evaluation reads only the validation split) is [] here and refused if it is read
    def describe(files: list[str], key: str) -> list:
        return [[p.name, file_sha256(p)] for p in _checked_files(files, key)] if files else []

    return {
        "corpus": "text_files",
        "train": describe(cfg.train_files, "train_files"),
        "val": describe(cfg.val_files, "val_files"),
        "text_field": cfg.text_field,
    }


def _load_local(paths: list[Path], text_field: str, warned: set[Path]) -> Iterator[str]:
    """Documents of the files in order: a .txt file is one, a .jsonl file one per record."""
    for path in paths:
        if path.suffix.lower() in TEXT_SUFFIXES:
            yield text_document(path)
        else:
            yield from jsonl_documents(path, text_field, warned)


def _text_files_documents(cfg: Any) -> tuple[Split, Split]:
    def split(files: list[str], key: str) -> Split:
        if not files:
            return Split(
                lambda: iter(()), [], missing=f"data.{key} is empty; list at least one .txt or .jsonl file"
            )
        paths, warned = _checked_files(files, key), set()  # one warning per file, not per pass
        return Split(lambda: _load_local(paths, cfg.text_field, warned), [p.name for p in paths])

    return split(cfg.train_files, "train_files"), split(cfg.val_files, "val_files")


# --- Hugging Face datasets -------------------------------------------------------------------


def _local_dir_state(path: str) -> list | None:
    """(file, size, mtime) of a local dataset directory, so editing it invalidates the cache."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return None  # a hub name: identified by name, config and split alone
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _hf_identity(cfg: Any) -> dict:
    return {
        "corpus": "hf",
        "path": cfg.path,
        "config_name": cfg.config_name,
        "splits": [cfg.train_split, cfg.val_split],
        "text_column": cfg.text_column,
        "caps": [cfg.max_train_documents, cfg.max_val_documents],
        "local_files": _local_dir_state(cfg.path),
    }


OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def _offline_variables() -> list[str]:
    """The offline switches set in the environment (as the Hugging Face libraries read them)."""
    return [v for v in OFFLINE_VARIABLES if os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")]


def _hf_failure(cfg: Any, split: str, err: Exception) -> DataError:
    reason = (str(err).strip().splitlines() or [""])[0].rstrip(".")
    offline = _offline_variables()
    if offline:
        advice = (
            f"{' and '.join(offline)} {'is' if len(offline) == 1 else 'are'} set, so only a copy already in "
            "the Hugging Face cache can load: check the name, config and split, or unset it to download"
        )
    else:
        advice = (
            "check the name, config and split and the network, or set HF_DATASETS_OFFLINE=1 to use a "
            "copy already in the Hugging Face cache"
        )
    return DataError(
        f"could not load Hugging Face dataset {cfg.path!r} (config {cfg.config_name!r}, split {split!r}): "
        f"{type(err).__name__}: {reason}; {advice}"
    )


def _hf_texts(cfg: Any, split: str, cap: Optional[int]) -> Iterator[str]:
    """One pass over ``split``; a cap streams, so a few books of a huge corpus download fast."""
    import datasets

    try:
        ds = datasets.load_dataset(cfg.path, cfg.config_name, split=split, streaming=cap is not None)
        rows = iter(ds.take(cap) if cap is not None else ds)
        for row in rows:
            if cfg.text_column not in row:
                raise DataError(
                    f"data.text_column={cfg.text_column!r} is not a column of {cfg.path!r}; columns: "
                    f"{', '.join(row)}"
                )
            yield row[cfg.text_column] or ""
    except DataError:
        raise
    except Exception as err:  # datasets raises many kinds; the user needs one line either way
        raise _hf_failure(cfg, split, err) from None


def _hf_documents(cfg: Any) -> tuple[Split, Split]:
    return (
        Split(lambda: _hf_texts(cfg, cfg.train_split, cfg.max_train_documents), None),
        Split(lambda: _hf_texts(cfg, cfg.val_split, cfg.max_val_documents), None),
    )


CORPORA = Registry("data", "schema/data")  # data=NAME: its config schema and how to read it
CORPORA.add("shakespeare", ShakespeareConfig, Source(_shakespeare_identity, _shakespeare_documents))
CORPORA.add("text_files", TextFilesConfig, Source(_text_files_identity, _text_files_documents))
CORPORA.add("hf", HFConfig, Source(_hf_identity, _hf_documents))
