"""FIRE: a learned function of the log distance, normalised by the query's position
(Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long Context
Transformers", ICLR 2024, §3.2 "progressive interpolation" and its learnable threshold)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from posbench.common.checks import above, at_least
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.positions import PoseOption
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.scores import PairBias, Scores


@dataclass
class FireConfig(EncodingConfig, PoseOption):
    name: str = "fire"
    mlp_width: int = 32  # one hidden layer, ReLU, one output per head (the paper's f_theta)
    init_c: float = 0.1  # psi(x) = log(c·x + 1)
    init_threshold: float = 512.0  # L in max(L, i): queries before L share one normaliser
    eps: float = 1e-6  # keeps the normaliser away from zero

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positions()
        at_least("encoding.mlp_width", self.mlp_width, 1)
        above("encoding.init_c", self.init_c, 0, "c in psi(x) = log(c·x + 1)")
        above("encoding.init_threshold", self.init_threshold, 0, "L in max(L, i)")
        above("encoding.eps", self.eps, 0, "keeps the normaliser away from zero")


@ENCODINGS.register("fire", FireConfig)
class Fire(PositionalEncoding):
    """b(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(c·x + 1), c and L learned and positive.

    One MLP for all layers (as this harness shares every bias). The normaliser uses the query's own
    position i, so FIRE is relative only below the threshold: shifting every position past L changes it.
    """

    cfg: FireConfig

    def __init__(
        self, cfg: FireConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.mlp = nn.Sequential(nn.Linear(1, cfg.mlp_width), nn.ReLU(), nn.Linear(cfg.mlp_width, n_heads))
        # log-parameterised so c and L stay positive under any optimiser step (the paper's code takes |.|)
        self.log_c = nn.Parameter(torch.tensor(math.log(cfg.init_c)))
        self.log_threshold = nn.Parameter(torch.tensor(math.log(cfg.init_threshold)))

    @property
    def c(self) -> torch.Tensor:
        return self.log_c.exp()

    @property
    def threshold(self) -> torch.Tensor:
        # positions are integers >= 0, so any L below 1 acts as L = 1 (at i = 0 the only distance is
        # 0); the floor keeps L positive where exp() underflows, with subnormals flushed to 0 too
        return self.log_threshold.exp().clamp(min=1.0)

    def reset_parameters(self) -> None:
        for layer in (self.mlp[0], self.mlp[2]):
            layer.reset_parameters()  # PyTorch's default init, as the paper's code
        with torch.no_grad():
            self.log_c.fill_(math.log(self.cfg.init_c))
            self.log_threshold.fill_(math.log(self.cfg.init_threshold))

    def scores(self) -> Scores:
        return Scores(bias=PairBias(self.score_bias))

    def normalized_distance(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """psi(|i - j|) / psi(max(L, i)), in [0, 1] for past keys. -> (Tq, Tk)"""
        distance = (q_pos[:, None] - k_pos[None, :]).abs_()  # (Tq, Tk) int64
        span = (
            1
            if not distance.numel()
            else 1 + max(int(q_pos.max() - k_pos.min()), int(k_pos.max() - q_pos.min()))
        )
        psi = lambda x: torch.log1p(self.c * x)  # noqa: E731
        psi_of_distance = psi(
            torch.arange(span, device=q_pos.device, dtype=torch.float32)
        )  # one value per distance
        normaliser = torch.maximum(q_pos.float(), self.threshold)[:, None]  # (Tq, 1)
        return psi_of_distance[distance].div_(psi(normaliser) + self.cfg.eps)

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """f_theta of the normalised distance, per head. -> (H, Tq, Tk)

        Through the MLP's exact piecewise-linear form, which needs no (Tq, Tk, width) hidden
        activations; its gradients are the MLP's (tested)."""
        return self.piecewise_bias(self.normalized_distance(q_pos, k_pos))

    def piecewise_linear(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f_theta as slope·x + intercept on the pieces between its knots.

        A one-input ReLU MLP W2·relu(a·x + c) + b2 is piecewise linear in x: hidden unit k turns
        on or off at x = -c_k / a_k. Between consecutive knots the set of active units is fixed,
        so f = (W2·[active]·a)·x + (b2 + W2·[active]·c) there; f is continuous, so the value at a
        knot does not depend on the piece it is assigned to.
        -> knots (m,) sorted, slopes (H, m + 1), intercepts (H, m + 1); piece r is
        (knots[r - 1], knots[r]] with open ends.
        """
        first, second = self.mlp[0], self.mlp[2]
        a, c = first.weight[:, 0].double(), first.bias.double()  # (W,)
        w2, b2 = second.weight.double(), second.bias.double()  # (H, W), (H,)
        turning = a != 0
        knots = torch.sort(-c[turning] / a[turning]).values  # (m,)
        if knots.numel():  # one point inside each piece, and one beyond each end
            gaps = knots[1:] - knots[:-1]
            inner = knots[:-1] + gaps / 2
            probe = torch.cat([knots[:1] - 1, inner, knots[-1:] + 1])
        else:
            probe = torch.zeros(1, dtype=torch.float64, device=a.device)
        active = ((probe[:, None] * a[None, :] + c[None, :]) > 0).double()  # (m + 1, W)
        slopes = (w2 * a) @ active.T  # (H, m + 1)
        intercepts = b2[:, None] + (w2 * c) @ active.T
        return knots.float(), slopes.float(), intercepts.float()

    def piecewise_bias(self, x: torch.Tensor) -> torch.Tensor:
        """f_theta(x) per head from ``piecewise_linear``. x (Tq, Tk) -> (H, Tq, Tk)"""
        knots, slopes, intercepts = self.piecewise_linear()
        return PiecewiseLinear.apply(x, knots.to(x.dtype), slopes.to(x.dtype), intercepts.to(x.dtype))


class PiecewiseLinear(torch.autograd.Function):
    """out[h] = slopes[h, r]·x + intercepts[h, r] with r = x's piece: one bucket search, then a gather
    and a multiply-add per head; the backward sums each head's gradient per piece (bincount) rather
    than scattering through gathered (H, Tq·Tk) copies of the coefficients.
    x (Tq, Tk); knots (m,); slopes, intercepts (H, m + 1). -> (H, Tq, Tk)"""

    @staticmethod
    def forward(ctx, x, knots, slopes, intercepts):
        flat_x = x.reshape(-1)
        piece = torch.bucketize(flat_x, knots, out_int32=True)  # r: knots[r - 1] < x <= knots[r]
        out = torch.empty((slopes.shape[0], flat_x.numel()), dtype=x.dtype, device=x.device)
        for h in range(slopes.shape[0]):
            torch.addcmul(
                intercepts[h].index_select(0, piece), slopes[h].index_select(0, piece), flat_x, out=out[h]
            )
        ctx.save_for_backward(flat_x, piece, slopes)
        ctx.x_shape = x.shape
        return out.view(-1, *x.shape)

    @staticmethod
    def backward(ctx, grad_out):
        flat_x, piece, slopes = ctx.saved_tensors
        heads, pieces = slopes.shape
        grad = grad_out.reshape(heads, -1)
        grad_x = torch.zeros_like(flat_x) if ctx.needs_input_grad[0] else None
        grad_slopes, grad_intercepts = torch.empty_like(slopes), torch.empty_like(slopes)
        for h in range(heads):
            if grad_x is not None:
                grad_x.addcmul_(grad[h], slopes[h].index_select(0, piece))
            grad_intercepts[h] = torch.bincount(piece, weights=grad[h], minlength=pieces)
            grad_slopes[h] = torch.bincount(piece, weights=grad[h] * flat_x, minlength=pieces)
        grad_x = None if grad_x is None else grad_x.view(ctx.x_shape)
        return grad_x, None, grad_slopes, grad_intercepts
