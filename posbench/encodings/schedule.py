"""Per-layer schedules: a different encoding in each layer, e.g. RoPE in three layers of four and
NoPE in every fourth (Llama 4's iRoPE: transformers' Llama4TextConfig, ``no_rope_layers[i] =
(i + 1) % 4 != 0``; Yang et al. 2025, "Rope to Nope and Back Again", §4), with an optional local
window on the rotary layers (Llama 4 chunks its RoPE layers' attention).

``encoding=layers encoding.pattern=[rope,rope,rope,nope]``: the pattern is cycled over the model's
layers (layer i runs ``pattern[i % len(pattern)]``). Each member keeps its own typed config under
``encoding.options.NAME``, as a hybrid's do, so a member's temperature is its own (Llama 4's on
the NoPE layers: ``encoding/temperature@encoding.options.nope.temperature=llama4``). Members act
in attention only: encodings that embed the input (sinusoidal, learned) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Dict, List

from posbench.common.checks import at_least, one_of
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.hybrid import Composite, member_config, overrides
from posbench.encodings.registry import ENCODINGS, member_choices
from posbench.encodings.rope import RopeConfig
from posbench.encodings.scores import Scores, combine, local_window
from posbench.encodings.temperature import TEMPERATURES

WINDOW_KINDS = ("chunked", "sliding")


@dataclass
class LayersConfig(EncodingConfig):
    name: str = "layers"
    # layer i runs pattern[i % len(pattern)]: Llama 4's iRoPE is [rope, rope, rope, nope]
    pattern: List[str] = field(default_factory=lambda: ["rope", "rope", "rope", "nope"])
    # a local attention window on the rotary layers (0: none): chunked (Llama 4) or sliding
    window: int = 0
    window_kind: str = "chunked"
    # member name -> that member's own config; options of encodings not in the pattern are dropped
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pattern = [check_member(str(name).strip()) for name in self.pattern]
        if not self.pattern:
            raise ValueError(
                "encoding.pattern is empty: name each layer's encoding, e.g. [rope,rope,rope,nope]"
            )
        at_least("encoding.window", self.window, 0, "0 = no local window")
        one_of("encoding.window_kind", self.window_kind, WINDOW_KINDS)
        if TEMPERATURES.coerce(self.temperature).kind != "none":
            raise ValueError(
                "encoding.temperature on a schedule: give it to the members whose layers take it, e.g. "
                "encoding/temperature@encoding.options.nope.temperature=llama4"
            )
        self.options = {name: member_config(name, self.options.get(name, {})) for name in self.members()}
        if self.window and not any(self.rotary(name) for name in self.options):
            raise ValueError(f"encoding.window={self.window} applies to rotary layers; the pattern has none")

    def members(self) -> list[str]:
        """The distinct members, in their order of first appearance."""
        return list(dict.fromkeys(self.pattern))

    def rotary(self, name: str) -> bool:
        """A RoPE member (rope, xpos): the layers a local window applies to."""
        return isinstance(self.options.get(name) or ENCODINGS.schema(name)(), RopeConfig)

    def label(self) -> str:
        """Runs of the pattern, ``3xrope@chunk64-1xnope``: counts, member labels, the window."""
        window = (
            f"@{'chunk' if self.window_kind == 'chunked' else 'slide'}{self.window}" if self.window else ""
        )

        def run(name: str, count: int) -> str:
            return f"{count}x{self.options[name].label()}{window if self.rotary(name) else ''}"

        return "-".join(run(name, len(list(group))) for name, group in groupby(self.pattern))


def layer_choices() -> list[str]:
    """The encodings a schedule's layers can run: every member encoding that acts in attention."""
    return [name for name in member_choices() if not overrides(ENCODINGS.implementation(name), "embed_input")]


def check_member(name: str) -> str:
    if name not in member_choices():
        raise ValueError(
            f"encoding.pattern: {name!r} is no layer encoding; choose from {', '.join(member_choices())}"
        )
    if overrides(ENCODINGS.implementation(name), "embed_input"):
        raise ValueError(
            f"encoding.pattern: {name} embeds the input once, before any layer; a schedule's members act "
            "in attention (use encoding=hybrid to add it to every layer)"
        )
    return name


@ENCODINGS.register("layers", LayersConfig)
class LayerSchedule(Composite):
    """Layer i runs the hooks of ``pattern[i % len(pattern)]``; the planner plans each layer."""

    cfg: LayersConfig

    def __init__(
        self, cfg: LayersConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.layer_names = [cfg.pattern[layer % len(cfg.pattern)] for layer in range(n_layers)]
        self.window = local_window(cfg.window_kind, cfg.window, n_heads) if cfg.window else None

    def uses_every_parameter(self) -> bool:
        return len(self.members) == 1 or not any(True for _ in self.parameters())

    def for_layer(self, layer: int) -> PositionalEncoding:
        return self.members[self.layer_names[layer]]

    def scores(self) -> Scores:
        """Each layer's member's scores (with the window on rotary layers); position-local when all are."""
        own = {  # built per call: a member's scores hold its current buffers (after .to(device))
            name: combine([member.scores(), Scores(bias=self.window if self.cfg.rotary(name) else None)])
            for name, member in self.members.items()
        }
        layers = tuple(own[name] for name in self.layer_names)
        return Scores(position_local=all(s.position_local for s in layers), layers=layers)
