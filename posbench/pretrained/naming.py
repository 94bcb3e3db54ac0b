"""A pretrained model's name and label, from what ``hf.name`` points at: a hub name
(``meta-llama/Llama-3.2-1B``), a local folder, or a snapshot inside the Hugging Face cache
(``.../models--meta-llama--Llama-3.2-1B/snapshots/<commit>``, named by the repository, not its hash)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Optional


def model_name(source: str) -> str:
    """``Llama-3.2-1B`` for the hub name, a folder of that name, or a cache snapshot of it."""
    parts = PurePath(str(source).rstrip("/")).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].split("--", 2)[-1]  # models--<owner>--<name>
    return parts[-1] if parts else str(source)


def model_label(source: str, kind: Optional[str], label: Optional[str] = None) -> str:
    """The results' label: ``hf.label`` when given, else the model's name and its scaling kind
    (``Llama-3.2-1B+yarn``; no suffix without a scaling)."""
    if label:
        return str(label)
    name = model_name(source)
    return name if kind in (None, "none") else f"{name}+{kind}"
