"""exp() of log-probabilities that may lie far below 0, with no result in fp32's subnormal range.

x86 CPUs compute an exp() whose result underflows slowly even with subnormals flushed to zero: on
the 2-core Xeon (AVX-512, AMX) an in-place exp of 131K fp32 values took 16 µs from N(0, 1) and
2.1 ms from N(-100, 1). Clamping first keeps every exp() on the fast path, and setting what falls
below PROB_FLOOR to exactly 0 keeps the matmuls that follow off subnormals too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EXP_FLOOR, PROB_FLOOR = -87.0, 2e-38  # exp(-87) = 1.6e-38: any x <= EXP_FLOOR gives exactly 0


def exp_or_zero(x: torch.Tensor) -> torch.Tensor:
    """exp(x), exactly 0 where it would be below PROB_FLOOR (x below about -86.8); x is
    overwritten. Under autograd the last step is out of place, so exp's saved result stays intact."""
    out = x.clamp_(min=EXP_FLOOR).exp_()
    return F.threshold(out, PROB_FLOOR, 0.0) if out.requires_grad else F.threshold_(out, PROB_FLOOR, 0.0)
