"""Loading a Hugging Face causal LM of the Llama family (``hf=NAME_OR_DIR``), refused in one line
otherwise: posbench replaces its rotary embedding, so the model must have the Llama layout (rotate-
half RoPE computed once per forward by ``model.model.rotary_emb`` and passed to every layer)."""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)

# model_type values with that layout (transformers' Llama, Mistral, Qwen2, Qwen3 modelling code)
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError("hf=... needs transformers: pip install 'posbench[hf]'") from None
    return transformers


def load_config(source: str, revision: Optional[str]) -> Any:
    """The model's config, checked to be of the Llama family."""
    transformers = transformers_module()
    try:
        config = transformers.AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as exc:
        raise ValueError(f"hf={source}: cannot load its config ({str(exc).splitlines()[0]})") from None
    if config.model_type not in LLAMA_FAMILY:
        raise ValueError(
            f"hf={source} is a {config.model_type!r} model; posbench evaluates Llama-family models "
            f"({', '.join(LLAMA_FAMILY)}), whose rotary embedding it can replace"
        )
    return config


def load_model(source: str, revision: Optional[str], device: torch.device, dtype: torch.dtype) -> Any:
    """The causal LM in ``dtype`` on ``device``, with PyTorch's SDPA attention (the causal flag: memory
    linear in length)."""
    transformers = transformers_module()
    load_config(source, revision)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=dtype, attn_implementation="sdpa"
        )
    except (OSError, ValueError) as exc:
        raise ValueError(f"hf={source}: cannot load its weights ({str(exc).splitlines()[0]})") from None
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
    return model.to(device).eval()


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
