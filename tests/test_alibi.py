"""Protects ALiBi's head slopes and bias against the formulas of Press et al. 2022."""

from __future__ import annotations

import math

import pytest
import torch

from posbench.encodings import alibi_slopes
from posbench.encodings.alibi import Alibi, AlibiConfig


def paper_slopes(n: int) -> list[float]:
    """§3: a geometric sequence starting at 2^(-8/n) with that same ratio, for n a power of two;
    otherwise the closest lower power of two's slopes, then every other slope of twice that count."""
    if math.log2(n).is_integer():
        start = 2.0 ** (-8.0 / n)
        return [start * start**i for i in range(n)]
    lower = 2 ** math.floor(math.log2(n))
    return paper_slopes(lower) + paper_slopes(2 * lower)[::2][: n - lower]


@pytest.mark.parametrize("heads", range(1, 17))
def test_slopes_match_the_paper_for_1_to_16_heads(heads):
    torch.testing.assert_close(alibi_slopes(heads), torch.tensor(paper_slopes(heads)), rtol=1e-6, atol=0)


def test_the_papers_worked_examples():
    # "For models with 8 heads, the slopes that we used are the geometric sequence 1/2^1 ... 1/2^8"
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]
    # 16 heads: 1/2^0.5, 1/2^1, ..., 1/2^8
    torch.testing.assert_close(alibi_slopes(16), torch.tensor([2.0 ** (-i / 2) for i in range(1, 17)]))


def test_bias_is_minus_slope_times_distance():
    enc = Alibi(AlibiConfig(), d_model=32, n_heads=4, head_dim=8, init_std=0.02)
    q_pos, k_pos = torch.tensor([10, 11]), torch.arange(12)
    bias = enc.score_bias(q_pos, k_pos)
    slopes = alibi_slopes(4)
    for h in range(4):
        for a, i in enumerate(q_pos.tolist()):
            for b, j in enumerate(k_pos.tolist()):
                assert bias[h, a, b].item() == pytest.approx(-slopes[h].item() * (i - j))


def test_zero_heads_is_refused():
    with pytest.raises(ValueError, match="at least one head"):
        alibi_slopes(0)
