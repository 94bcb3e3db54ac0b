"""Hybrid encodings: several encodings' hooks in one model, e.g. sinusoidal embeddings with ALiBi,
to test whether a model needs absolute and relative position information together.

``encoding=hybrid encoding.members=sinusoidal+alibi``: the members run their hooks in that order.
Input embeddings and rotations apply one after the other, biases add, temperatures multiply, and
a length is refused when any member refuses it. Each member keeps its own typed config under
``encoding.options.NAME`` (``config.composite_encoding`` composes every registered encoding's own
YAML there, so defaults and types are those of ``encoding=NAME``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from posbench.common.options import option
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.positions import ARANGE
from posbench.encodings.registry import COMPOSITES, ENCODINGS, member_choices
from posbench.encodings.scores import Scores, combine
from posbench.encodings.temperature import TEMPERATURES, temperature_suffix

SEPARATOR = "+"
EXAMPLE = "encoding.members=sinusoidal+alibi"


def overrides(cls: type, hook: str) -> bool:
    """True when an encoding class replaces the base class's no-op ``hook``."""
    return getattr(cls, hook) is not getattr(PositionalEncoding, hook)


@dataclass
class HybridConfig(EncodingConfig):
    name: str = "hybrid"
    # member names joined by "+", in the order their hooks run; results, W&B and run folders show this
    members: str = option("sinusoidal+alibi", at_eval=False)  # they pick the weights' classes
    # member name -> that member's own config; options of encodings that are not members are dropped
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        names = member_names(self.members)
        unknown = sorted(set(self.options) - set(member_choices()))
        if unknown:
            raise ValueError(
                f"encoding.options.{unknown[0]} names no encoding; options are keyed by member name: "
                f"{', '.join(member_choices())}"
            )
        self.members = SEPARATOR.join(names)
        self.options = {name: member_config(name, self.options.get(name, {})) for name in names}
        check_combination(self.options)

    def label(self) -> str:
        own = temperature_suffix(TEMPERATURES.coerce(self.temperature))
        return SEPARATOR.join(member.label() for member in self.options.values()) + own


def member_names(members: str) -> list[str]:
    """``"sinusoidal+alibi"`` -> ``["sinusoidal", "alibi"]``, refusing names that cannot be members."""
    names = [name.strip() for name in str(members).split(SEPARATOR)]
    if names == [""]:
        raise ValueError(f"encoding.members is empty: name at least one encoding, e.g. {EXAMPLE}")
    for name in names:
        if name in COMPOSITES:
            raise ValueError(
                "encoding.members cannot hold a hybrid or a per-layer schedule (layers): a hybrid's members "
                "are single encodings; list them in one hybrid"
            )
        if name not in ENCODINGS:
            raise ValueError(
                f"encoding.members={members}: {name!r} is no encoding (join names with a single "
                f"'{SEPARATOR}'); valid members: {', '.join(member_choices())}"
            )
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(
            f"encoding.members={members} names {', '.join(twice)} twice: its hooks would apply twice; "
            "list each encoding once"
        )
    return names


def member_config(name: str, given: Any) -> EncodingConfig:
    """One member's options (its config, or a plain mapping from YAML or a checkpoint) -> its typed config."""
    if isinstance(given, ENCODINGS.schema(name)):
        return given
    plain = dict(OmegaConf.to_container(given) if OmegaConf.is_dict(given) else given or {})
    if plain.setdefault("name", name) != name:
        raise ValueError(
            f"encoding.options.{name}.name={plain['name']}: a member's options keep its own name"
        )
    where = f"encoding.options.{name}"
    try:
        return ENCODINGS.coerce(plain, where=where)
    except ValueError as exc:
        message = str(exc)
        if not message.startswith(where):  # the member's own check names "encoding.KEY": here that
            message = message.replace("encoding.", f"{where}.")  # key lives under the member's options
        raise ValueError(message) from None


def check_combination(options: dict[str, EncodingConfig]) -> None:
    """Refuse members whose hooks would fight: two rotations of q and k, or two sources of positions."""
    rotary = [name for name in options if overrides(ENCODINGS.implementation(name), "rotate_qk")]
    if len(rotary) > 1:
        raise ValueError(
            f"encoding.members holds {' and '.join(rotary)}: both rotate q and k, and a rotation of a "
            "rotation is neither scheme; keep one rotary member"
        )
    sampled = [
        name for name, cfg in options.items() if getattr(cfg, "random_positions_max", None) is not None
    ]
    if len(sampled) > 1:
        raise ValueError(
            f"encoding.options of {' and '.join(sampled)} both set random_positions_max: members share "
            "one set of positions; set it on one member only"
        )


def position_source(members: nn.ModuleDict) -> Optional[str]:
    """The one member whose positions are not 0..T-1 (randomized), or None."""
    own = [
        name
        for name, member in members.items()
        if member.sampler is not ARANGE or overrides(type(member), "positions")
    ]
    if len(own) > 1:
        raise ValueError(f"encoding members {' and '.join(own)} each choose positions; only one member may")
    return own[0] if own else None


class Composite(PositionalEncoding):
    """An encoding made of member encodings (a hybrid, a per-layer schedule): builds them from
    ``cfg.options``, takes positions from the one member that chooses them, refuses a length any
    member refuses, and initialises them all."""

    def __init__(self, cfg, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        # a ModuleDict: the optimiser, .to(device) and checkpoints see every member's parameters and buffers
        self.members = nn.ModuleDict(
            {
                name: ENCODINGS.implementation(name)(
                    member_cfg, d_model, n_heads, head_dim, init_std, n_layers
                )
                for name, member_cfg in cfg.options.items()
            }
        )
        self.position_source = position_source(self.members)

    def positions(self, seq_len: int, device: torch.device) -> torch.Tensor:
        if self.position_source is None:
            return super().positions(seq_len, device)
        return self.members[self.position_source].positions(seq_len, device)  # (T,)

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        """The first member's refusal: a composite takes only the lengths every member takes."""
        for member in self.members.values():
            reason = member.length_limit_reason(seq_len)
            if reason is not None:
                return reason
        return None

    def reset_parameters(self) -> None:
        for member in self.members.values():
            member.reset_parameters()


@ENCODINGS.register("hybrid", HybridConfig)
class Hybrid(Composite):
    """Every member's hooks, applied in the order of ``encoding.members``."""

    cfg: HybridConfig

    def embed_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for member in self.members.values():
            x = member.embed_input(x, pos)  # (B, T, D)
        return x

    def rotate_qk(
        self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for member in self.members.values():
            q, k = member.rotate_qk(q, k, pos)  # (B, H, T, Dh), (B, Hkv, T, Dh)
        return q, k

    def scores(self) -> Scores:
        """The members' effects combined: biases add, score modifiers chain (``scores.combine``)."""
        return combine([member.scores() for member in self.members.values()])

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> Optional[torch.Tensor]:
        """The sum of the members' biases. -> (H, Tq, Tk), or None without a bias member"""
        bias = self.scores().bias
        return None if bias is None else bias.fn(q_pos, k_pos)

    def query_factors(self, pos: torch.Tensor, layer: int) -> Optional[torch.Tensor]:
        """The product of the hybrid's own temperature and its members'. -> (H or 1, T) or None"""
        factors = super().query_factors(pos, layer)
        for member in self.members.values():
            own = member.query_factors(pos, layer)
            factors = own if factors is None else factors if own is None else factors * own
        return factors

    def key_bias(self, x: torch.Tensor, layer: int) -> Optional[torch.Tensor]:
        """The one member's bias per key (``scores.combine`` allows one), or None."""
        for member in self.members.values():
            bias = member.key_bias(x, layer)
            if bias is not None:
                return bias
        return None
