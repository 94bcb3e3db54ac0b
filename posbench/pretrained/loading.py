"""Loading a Hugging Face causal LM of the Llama family (``hf=NAME_OR_DIR``), refused in one line
otherwise: posbench replaces its rotary embedding, so the model must have the Llama layout (rotate-
half RoPE computed once per forward by ``model.model.rotary_emb`` and passed to every layer)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class HFModelConfig:
    """``hf.*`` of ``posbench eval``: which model, and how its weights are loaded."""

    name: Optional[str] = None  # a hub name or a local folder (``hf=NAME_OR_DIR``)
    revision: Optional[str] = None
    label: Optional[str] = None  # the results' label (naming.py's model_label when None)
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device_map: Optional[str] = None  # transformers' device_map (accelerate places the layers)

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"hf.dtype={self.dtype} is not one of auto, {', '.join(DTYPES)}")
        check_device_map(self.device_map)  # before any loading or tokenizing

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]


# model_type values with that layout (transformers' Llama, Mistral, Qwen2, Qwen3 modelling code)
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError("hf=... needs transformers: pip install 'posbench[hf]'") from None
    return transformers


def hub_failure(source: str, revision: Optional[str], what: str, exc: BaseException) -> ValueError:
    """One line for a model that cannot be loaded: a gated repository, a missing revision or repository
    (transformers raises OSError from the Hub's own error), else the first line of the error."""
    cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else ""
    if cause == "GatedRepoError":
        return ValueError(
            f"hf={source} is gated: accept its licence on huggingface.co and log in "
            "(hf auth login, or set HF_TOKEN)"
        )
    if cause == "RevisionNotFoundError":
        return ValueError(
            f"hf.revision={revision} does not exist for hf={source}: name a branch, tag or commit"
        )
    if cause == "RepositoryNotFoundError":
        return ValueError(
            f"hf={source} is neither a local folder nor a model on the Hub (a private one needs HF_TOKEN)"
        )
    return ValueError(f"hf={source}: cannot load its {what} ({(str(exc).splitlines() or [''])[0]})")


def load_config(source: str, revision: Optional[str]) -> Any:
    """The model's config, checked to be of the Llama family."""
    transformers = transformers_module()
    try:
        config = transformers.AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as exc:
        raise hub_failure(source, revision, "config", exc) from None
    if config.model_type not in LLAMA_FAMILY:
        raise ValueError(
            f"hf={source} is a {config.model_type!r} model; posbench evaluates Llama-family models "
            f"({', '.join(LLAMA_FAMILY)}), whose rotary embedding it can replace"
        )
    return config


def check_device_map(device_map: Optional[str]) -> None:
    """``hf.device_map`` needs accelerate, which places the layers: refused before any loading."""
    if device_map is None:
        return
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ValueError(
            f"hf.device_map={device_map} needs accelerate: pip install accelerate (or drop hf.device_map)"
        ) from None


def load_model(
    source: str,
    revision: Optional[str],
    device: torch.device,
    dtype: torch.dtype,
    device_map: Optional[str] = None,
) -> Any:
    """The causal LM in ``dtype`` on ``device`` (or placed by ``device_map``, which ``HFModelConfig``
    has checked), with PyTorch's SDPA attention (the causal flag: memory linear in length)."""
    transformers = transformers_module()
    load_config(source, revision)
    placed = {} if device_map is None else {"device_map": device_map}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=dtype, attn_implementation="sdpa", **placed
        )
    except (OSError, ValueError) as exc:
        raise hub_failure(source, revision, "weights", exc) from None
    window = getattr(model.config, "sliding_window", None)
    if window and (
        model.config.model_type == "mistral" or getattr(model.config, "use_sliding_window", False)
    ):
        log.warning(
            "%s attends a sliding window of %d: transformers builds its (T, T) mask, so memory is "
            "quadratic in length past the window",
            source,
            window,
        )
    return (model if device_map is not None else model.to(device)).eval()


def input_device(model: Any, device: torch.device) -> torch.device:
    """Where the token ids go: the input embedding's device (with a device_map, accelerate's choice)."""
    return model.get_input_embeddings().weight.device if getattr(model, "hf_device_map", None) else device


def model_record(source: str, revision: Optional[str], model: Any) -> dict:
    """The model's name and revision for results metadata and W&B."""
    config = model.config
    return {
        "source": source,
        "revision": revision,
        "commit": getattr(config, "_commit_hash", None),
        "model_type": config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "max_position_embeddings": config.max_position_embeddings,
    }
