"""Protects each encoding's formula against its paper: T5 buckets, KERPLE, FIRE, Sandwich, xPos, CoPE,
randomized positions."""

from __future__ import annotations

import math

import pytest
import torch

from posbench.encodings import ENCODINGS, build_encoding, t5_relative_bucket

H, DH = 4, 8


def make(name: str, **cfg):
    torch.manual_seed(0)
    enc = build_encoding(ENCODINGS.schema(name)(**cfg), H * DH, H, DH, 0.02, n_layers=2)
    enc.reset_parameters()
    return enc


# ---- T5 (Raffel et al. 2020 §2.1 and the Mesh TensorFlow bucketing) ----


def paper_bucket(relative: int, num_buckets: int, max_distance: int, bidirectional: bool) -> int:
    """One relative position (key - query) at a time, in plain Python."""
    n = -relative
    base = 0
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            base, n = num_buckets, -n
    elif n < 0:
        return 0
    exact = num_buckets // 2
    if n < exact:
        return base + n
    log_bucket = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    return base + min(log_bucket, num_buckets - 1)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (64, 1000), (8, 20)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_t5_buckets_follow_the_paper_for_distances_up_to_10000(num_buckets, max_distance, bidirectional):
    relative = torch.arange(-10_000, 10_001)
    expected = torch.tensor(
        [paper_bucket(r, num_buckets, max_distance, bidirectional) for r in relative.tolist()]
    )
    assert torch.equal(t5_relative_bucket(relative, num_buckets, max_distance, bidirectional), expected)


def test_t5_default_buckets_spot_values():
    # causal, 32 buckets, 128: distances 0..15 exact, then log-spaced, everything from 128 on in 31
    b = t5_relative_bucket(-torch.tensor([0, 1, 15, 16, 31, 32, 64, 127, 128, 10_000, -5]))
    assert b.tolist() == [0, 1, 15, 16, 21, 21, 26, 31, 31, 31, 0]


def test_t5_bias_is_one_table_lookup_per_head():
    enc = make("t5")
    q_pos, k_pos = torch.tensor([40, 41]), torch.arange(42)
    bias = enc.score_bias(q_pos, k_pos)
    for a, i in enumerate(q_pos.tolist()):
        for b, j in enumerate(k_pos.tolist()):
            assert torch.equal(bias[:, a, b], enc.table.weight[paper_bucket(j - i, 32, 128, False)])
    assert sum(p.numel() for p in enc.parameters()) == 32 * H  # one table, shared by every layer


# ---- KERPLE (Chi et al. 2022 §4) ----


def test_kerple_biases_are_the_papers_kernels():
    q_pos, k_pos = torch.tensor([7, 30]), torch.arange(31)
    log_enc, power_enc = make("kerple_log"), make("kerple_power")
    d = (q_pos[:, None] - k_pos[None, :]).abs().double()
    for enc, kernel in (
        (log_enc, lambda r1, r2: -r1 * torch.log(1 + r2 * d)),
        (power_enc, lambda r1, r2: -r1 * d**r2),
    ):
        r1, r2 = enc.r1.detach().double(), enc.r2.detach().double()
        expected = torch.stack([kernel(r1[h], r2[h]) for h in range(H)])
        torch.testing.assert_close(enc.score_bias(q_pos, k_pos).double(), expected, rtol=1e-5, atol=1e-5)


def test_kerple_init_follows_the_released_code():
    log_enc, power_enc = make("kerple_log"), make("kerple_power")
    assert (
        (log_enc.r1 <= 2).all()
        and (log_enc.r2 <= 1).all()
        and (power_enc.r1 <= 1).all()
        and (power_enc.r2 < 2).all()
    )


def push(enc, loss_fn, steps: int = 50) -> None:
    """Big Adam steps that drive the parameters toward (and past) the edge of their valid range."""
    opt = torch.optim.Adam(enc.parameters(), lr=5.0)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(enc).backward()
        opt.step()


def test_kerple_parameters_stay_valid_under_optimiser_steps():
    log_enc, power_enc = make("kerple_log"), make("kerple_power")
    push(log_enc, lambda e: e.r1.sum() + e.r2.sum())  # toward zero and below
    assert (log_enc.r1 >= 0.01).all() and (log_enc.r2 >= 0.01).all()
    push(power_enc, lambda e: e.r1.sum() - e.r2.sum())  # r1 toward 0, exponent toward > 2
    assert (power_enc.r1 >= 0.01).all() and (power_enc.r2 <= 2).all() and (power_enc.r2 > 0).all()
    bias = power_enc.score_bias(torch.arange(50), torch.arange(50))
    assert torch.isfinite(bias).all()


def test_kerple_power_has_a_finite_gradient_at_distance_zero():
    enc = make("kerple_power")
    enc.score_bias(torch.arange(5), torch.arange(5)).sum().backward()
    assert torch.isfinite(enc.r2_raw.grad).all() and torch.isfinite(enc.r1_raw.grad).all()


# ---- FIRE (Li et al. 2023 §3.2) ----


def test_fire_is_an_mlp_of_the_progressively_interpolated_log_distance():
    enc = make("fire", init_threshold=20.0)
    q_pos, k_pos = torch.tensor([3, 25, 60]), torch.arange(61)
    c, L = 0.1, 20.0
    psi = lambda x: math.log(c * x + 1)  # noqa: E731
    x = torch.tensor(
        [[psi(abs(i - j)) / (psi(max(L, i)) + 1e-6) for j in k_pos.tolist()] for i in q_pos.tolist()]
    )
    expected = enc.mlp(x[..., None]).permute(2, 0, 1)
    torch.testing.assert_close(enc.score_bias(q_pos, k_pos), expected, rtol=1e-5, atol=1e-6)
    past = x[k_pos[None, :] <= q_pos[:, None]]  # keys j <= i map into [0, 1]
    assert past.max() <= 1 and past.min() >= 0


def test_fire_piecewise_linear_form_equals_its_mlp():
    """FIRE's bias goes through the MLP's exact piecewise-linear form: it must equal the MLP itself,
    with and without autograd, for weights far from their init and inputs on both sides of every
    knot, and give the MLP's gradients."""
    enc = make("fire")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in enc.mlp.parameters():
            p.normal_()
        knots = enc.piecewise_linear()[0]
        x = torch.cat([torch.linspace(-3, 3, 2001), knots, knots - 1e-4, knots + 1e-4])[None, :]
        expected = enc.mlp(x[..., None]).permute(2, 0, 1)
        torch.testing.assert_close(enc.piecewise_bias(x), expected, rtol=1e-5, atol=1e-5)
        q_pos, k_pos = torch.arange(900, 940), torch.arange(940)
        no_grad_bias = enc.score_bias(q_pos, k_pos)
    torch.testing.assert_close(no_grad_bias, enc.score_bias(q_pos, k_pos).detach(), rtol=1e-5, atol=1e-5)
    # training: the gradients of every FIRE parameter equal those through the MLP itself
    weights = torch.randn(H, 40, 940)

    def grads(bias_of):
        enc.zero_grad()
        (bias_of(enc.normalized_distance(q_pos, k_pos)) * weights).sum().backward()
        return {name: p.grad.clone() for name, p in enc.named_parameters()}

    through_pieces = grads(enc.piecewise_bias)
    through_mlp = grads(lambda x: enc.mlp(x[..., None]).permute(2, 0, 1))
    for name, grad in through_mlp.items():
        torch.testing.assert_close(through_pieces[name], grad, rtol=1e-4, atol=1e-4)


def test_fire_c_and_threshold_stay_positive_under_optimiser_steps():
    enc = make("fire")
    push(enc, lambda e: e.c + e.threshold + e.score_bias(torch.arange(20), torch.arange(20)).sum())
    assert enc.c > 0 and enc.threshold > 0
    assert torch.isfinite(enc.score_bias(torch.arange(20), torch.arange(20))).all()


def test_fire_is_relative_below_its_threshold_only():
    enc = make("fire", init_threshold=100.0)
    pos = torch.arange(30)
    torch.testing.assert_close(enc.score_bias(pos, pos), enc.score_bias(pos + 50, pos + 50))
    assert not torch.allclose(enc.score_bias(pos, pos), enc.score_bias(pos + 500, pos + 500))


# ---- Sandwich (Chi et al. 2023) ----


def test_sandwich_is_the_inner_product_of_sinusoids_over_head_ratios():
    enc = make("sandwich", sinusoid_dim=16)
    q_pos, k_pos = torch.tensor([5, 99]), torch.arange(100)
    for h in range(H):
        ratio = (h + 1) * 8 / H
        for a, i in enumerate(q_pos.tolist()):
            for j in (0, 4, 5, 50, 99):
                p_i = [f(i / 10000 ** (2 * k / 16)) for k in range(8) for f in (math.sin, math.cos)]
                p_j = [f(j / 10000 ** (2 * k / 16)) for k in range(8) for f in (math.sin, math.cos)]
                dot = sum(x * y for x, y in zip(p_i, p_j))
                assert enc.score_bias(q_pos, k_pos)[h, a, j].item() == pytest.approx(dot / ratio, abs=1e-5)
    assert not list(enc.parameters())


# ---- xPos (Sun et al. 2022 §3.2) ----


def test_xpos_decay_is_symmetric_and_depends_on_distance_only():
    enc = make("xpos")
    zeta = (torch.arange(0, DH, 2, dtype=torch.float64) / DH + 0.4) / 1.4
    torch.testing.assert_close(enc.zeta, zeta)
    for pos, centre in ((torch.arange(64), 31), (torch.arange(64) + 1000, 0), (torch.arange(7, 300, 3), 150)):
        scale = enc.qk_decay(pos, centre)  # q factors; the key at the same position gets their reciprocal
        assert scale.shape == (pos.numel(), DH)
        torch.testing.assert_close(
            scale[:, : DH // 2], scale[:, DH // 2 :]
        )  # a rotated pair shares its factor
        n, m = 40, 9
        expected = zeta ** ((pos[n] - pos[m]).item() / 512.0)
        torch.testing.assert_close(scale[n, : DH // 2] / scale[m, : DH // 2], expected)


def test_xpos_scores_are_rope_scores_times_the_decay():
    from posbench.model.blocks import scale_qk

    xpos, rope = make("xpos"), make("rope")
    q, k = torch.randn(1, H, 50, DH), torch.randn(1, H, 50, DH)
    half = DH // 2
    for i in range(half):  # one rotated pair at a time, so the decay of that pair can be read off
        mask = torch.zeros(DH)
        mask[[i, i + half]] = 1
        for pos in (torch.arange(50), torch.arange(50) + 777):
            rotated = xpos.rotate_qk(q * mask, k * mask, pos)
            xs = torch.einsum("bhid,bhjd->bhij", *scale_qk(*rotated, xpos.qk_decay(pos, int(pos[25]))))
            rs = torch.einsum("bhid,bhjd->bhij", *rope.rotate_qk(q * mask, k * mask, pos))
            dist = (pos[:, None] - pos[None, :]).double()
            torch.testing.assert_close(
                xs.double(), rs.double() * xpos.zeta[i] ** (dist / 512), rtol=1e-4, atol=1e-5
            )


def test_xpos_decay_window_is_where_centred_factors_reach_the_fp32_limit():
    """Centred on a window of decay_window positions the largest q-factor x k-factor product is
    e^80 (finite in fp32 with room for |q||k|); twice that window it is e^160 (inf)."""
    enc = make("xpos")
    for length, finite in ((enc.decay_window, True), (2 * enc.decay_window, False)):
        factors = enc.qk_decay(torch.arange(length), length // 2)
        largest = factors[0] * factors[-1].reciprocal()  # query at 0 with the key at the far end (masked)
        assert bool(torch.isfinite(largest.float()).all()) == finite
        assert (largest.max().log() <= 80.01) == finite


# ---- CoPE (Golovneva et al. 2024 §3) ----


def paper_cope(scores: torch.Tensor, q: torch.Tensor, table: torch.Tensor, npos_max: int) -> torch.Tensor:
    """Loops over (i, j): gates, counts, interpolated embedding, added logit. scores (Tq, Tk), q (Tq, Dh)."""
    out = scores.clone()
    for i in range(scores.shape[0]):
        for j in range(i + 1):
            p = min(sum(torch.sigmoid(scores[i, t]).item() for t in range(j, i + 1)), npos_max - 1)
            lo, hi = math.floor(p), math.ceil(p)
            e = (p - lo) * table[:, hi] + (1 - (p - lo)) * table[:, lo]
            out[i, j] = scores[i, j] + q[i] @ e
    return out


def causal_scores(t: int) -> torch.Tensor:
    return torch.randn(1, H, t, t).masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))


def test_cope_counts_gates_and_interpolates_as_the_paper():
    enc = make("cope", npos_max=5)  # small, so clipping is exercised
    with torch.no_grad():
        enc.embeddings.normal_()
    scores, q = causal_scores(9), torch.randn(1, H, 9, DH)
    out = enc.score_mod(scores, q, layer=1)
    for h in range(H):
        expected = paper_cope(scores[0, h], q[0, h], enc.embeddings[1], 5)
        torch.testing.assert_close(out[0, h], expected, rtol=1e-5, atol=1e-5)


def test_cope_is_causal():
    enc = make("cope")
    with torch.no_grad():
        enc.embeddings.normal_()
    scores, q = causal_scores(12), torch.randn(1, H, 12, DH)
    changed = scores.clone()
    changed[..., 8:, :] = torch.randn(1, H, 4, 12).masked_fill(
        torch.ones(4, 12).triu(9).bool(), float("-inf")
    )
    a, b = enc.score_mod(scores, q, 0), enc.score_mod(changed, q, 0)
    torch.testing.assert_close(a[..., :8, :], b[..., :8, :])  # later queries' keys never reach earlier rows
    assert (enc.positions_from_gates(scores)[..., :, :].triu(1) == 0).all()  # future keys count nothing


def test_cope_has_one_table_per_layer_and_explicit_scores():
    from posbench.model.planner import Settings, plan_attention

    cope = make("cope")
    assert cope.embeddings.shape == (2, DH, 64)

    def planned(requested: str, length: int) -> str:
        return plan_attention(cope.scores(), torch.arange(length), H, Settings(requested)).name

    assert planned("auto", 512) == "eager"
    assert planned("auto", 65536) == "blockwise"
    assert planned("sdpa", 512) == "eager"


# ---- relative encodings: scores unchanged when every position shifts ----


@pytest.mark.parametrize("name", ["alibi", "t5", "kerple_log", "kerple_power", "sandwich"])
def test_relative_biases_ignore_a_shift_of_all_positions(name):
    enc = make(name)
    q_pos, k_pos = torch.arange(20, 33), torch.arange(33)
    torch.testing.assert_close(enc.score_bias(q_pos, k_pos), enc.score_bias(q_pos + 4321, k_pos + 4321))


@pytest.mark.parametrize("name", ["rope", "xpos"])
def test_rotary_scores_ignore_a_shift_of_all_positions(name):
    enc = make(name)
    q, k = torch.randn(2, H, 30, DH), torch.randn(2, H, 30, DH)
    pos = torch.arange(30)
    scores = [torch.einsum("bhid,bhjd->bhij", *enc.rotate_qk(q, k, p)) for p in (pos, pos + 2345)]
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-4, atol=1e-4)


# ---- randomized positions (Ruoss et al. 2023 §3) ----


@pytest.mark.parametrize("name", ["sinusoidal", "learned", "rope", "xpos"])
def test_randomized_positions_are_sorted_distinct_samples_of_the_larger_range(name):
    extra = {"max_positions": 256} if name == "learned" else {}
    enc = make(name, random_positions_max=256, **extra)
    draws = [enc.positions(64, torch.device("cpu")) for _ in range(3)]
    for pos in draws:
        assert pos.shape == (64,) and (pos.diff() > 0).all() and pos.min() >= 0 and pos.max() < 256
    assert not torch.equal(draws[0], draws[1])  # a fresh draw every training forward
    enc.eval()
    assert torch.equal(
        enc.positions(64, torch.device("cpu")), enc.positions(64, torch.device("cpu"))
    )  # reproducible eval
    assert enc.label.endswith("+randpos")
    assert "random_positions_max" in enc.length_limit_reason(300)
    with pytest.raises(ValueError, match="random_positions_max"):
        enc.positions(300, torch.device("cpu"))


def test_learned_table_must_cover_the_random_range():
    with pytest.raises(ValueError, match="max_positions"):
        ENCODINGS.schema("learned")(max_positions=128, random_positions_max=512)


def test_plain_positions_are_0_to_t():
    assert torch.equal(make("rope").positions(5, torch.device("cpu")), torch.arange(5))


def test_fire_threshold_below_one_position_acts_as_the_formula_says():
    enc = make("fire", init_threshold=0.25)  # floored at 1 inside: positions are integers >= 0
    c, pos = enc.c.item(), torch.arange(12)
    for i in range(12):
        for j in range(i + 1):
            psi = lambda x: math.log1p(c * x)  # noqa: E731
            want = psi(i - j) / (psi(max(0.25, i)) + enc.cfg.eps)
            got = enc.normalized_distance(pos, pos)[i, j].item()
            assert got == pytest.approx(want, abs=1e-6)
