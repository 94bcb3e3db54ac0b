"""Find and download one file from the package index that pip is configured to use.

We read pip's own settings (``pip config list``, which already folds in ``PIP_*`` variables
and every config file) rather than guessing, so a mirror or a local ``file://`` index that
works for ``pip install`` works here too. Only the PEP 503 "simple" HTML page is read; no
package code is ever run.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from posbench.common.atomic import atomic_write

log = logging.getLogger(__name__)

DEFAULT_INDEX = "https://pypi.org/simple"
TIMEOUT_S = 30
# later sections override earlier ones, as in pip: env beats command sections beats global
_SECTION_RANK = {"global": 0, "install": 1, "download": 1, ":env:": 2}


@dataclass
class IndexSettings:
    urls: list[str]  # the index URL first, then extra index URLs (fallbacks)
    cert: str | None = None  # CA bundle pip uses for https


def _pip_config() -> dict[str, str]:
    """``name -> value`` from ``pip config list``, highest-priority section winning."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}  # no pip in this environment: fall back to PIP_* variables and the default
    best: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        section, _, name = key.rpartition(".")
        rank = _SECTION_RANK.get(section)
        if not sep or rank is None:
            continue
        if name not in best or rank >= best[name][0]:
            best[name] = (rank, value.strip().strip("'\""))
    return {name: value for name, (_, value) in best.items()}


def index_settings() -> IndexSettings:
    config = _pip_config()
    primary = os.environ.get("PIP_INDEX_URL") or config.get("index-url") or DEFAULT_INDEX
    extras = os.environ.get("PIP_EXTRA_INDEX_URL") or config.get("extra-index-url", "")
    urls = [primary] + [u for u in extras.split() if u != primary]
    cert = os.environ.get("PIP_CERT") or config.get("cert")
    return IndexSettings(urls=urls, cert=cert)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "a":
            self.hrefs.extend(value for name, value in attrs if name == "href" and value)


def _open(url: str, cert: str | None):
    if url.startswith("file:"):
        return urllib.request.urlopen(url, timeout=TIMEOUT_S)
    context = ssl.create_default_context(cafile=cert if cert and os.path.isfile(cert) else None)
    request = urllib.request.Request(url, headers={"Accept": "text/html", "User-Agent": "posbench"})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context)


def _project_page(index_url: str, project: str) -> str:
    page = index_url.rstrip("/") + f"/{project}/"
    # a file:// index is a directory tree; its project page is the directory's index.html
    return page + "index.html" if page.startswith("file:") else page


def find_file_url(index_url: str, project: str, filename: str, cert: str | None = None) -> str:
    """The absolute URL of ``filename`` on ``index_url``'s page for ``project``.

    Raises ``LookupError`` when the page does not list it, ``OSError`` when unreachable.
    """
    page = _project_page(index_url, project)
    with _open(page, cert) as response:
        parser = _Links()
        parser.feed(response.read().decode("utf-8", errors="replace"))
    for href in parser.hrefs:
        url = urllib.parse.urljoin(page, href).split("#", 1)[0]
        if urllib.parse.unquote(url.rsplit("/", 1)[-1]) == filename:
            return url
    raise LookupError(f"{filename} is not listed at {page}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, cert: str | None = None) -> None:
    """Stream ``url`` into ``dest`` atomically, so an interrupted download leaves nothing."""
    with _open(url, cert) as response, atomic_write(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def fetch_from_indexes(project: str, filename: str, dest: Path) -> None:
    """Download ``filename`` from the first configured index that has it into ``dest``.

    Raises ``OSError`` with every index's failure folded into one line when none works.
    """
    settings = index_settings()
    failures = []
    for index_url in settings.urls:
        try:
            url = find_file_url(index_url, project, filename, settings.cert)
            log.info("downloading %s", url)
            download(url, dest, settings.cert)
            return
        except (OSError, LookupError, ValueError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", None) or err
            failures.append(f"{index_url}: {reason}")
    raise OSError("; ".join(failures))
