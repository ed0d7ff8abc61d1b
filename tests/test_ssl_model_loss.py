"""ssl.model (encoder, projection head) and ssl.loss (NT-Xent, NT-Logistic, margin triplet,
alignment / uniformity): hand-written float64 references, bf16 autocast stability, shapes,
channels_last, determinism, and a tiny overfit run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workflow_scripts.ssl.loss import (LOSSES, alignment, make_loss, margin_triplet, nt_logistic, nt_xent,
                                       uniformity)
from workflow_scripts.ssl.model import (DEFAULT_CONFIG, Encoder, ProjectionHead, SimCLRModel, build_model,
                                        count_parameters)

TEMPERATURES = (0.05, 0.1, 0.5, 1.0)


# ---------------------------------------------------------------- float64 loop references

def _views(z1: torch.Tensor, z2: torch.Tensor) -> tuple[list[np.ndarray], int]:
    rows = [np.asarray(r, dtype=np.float64) for r in torch.cat([z1, z2]).detach().double().numpy()]
    return [r / math.sqrt(sum(v * v for v in r)) for r in rows], z1.shape[0]


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(sum(a * b for a, b in zip(u, v)))


def ref_nt_xent(z1, z2, tau):
    u, n = _views(z1, z2)
    total = 0.0
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        den = sum(math.exp(_cos(u[a], u[b]) / tau) for b in range(2 * n) if b != a)
        total += -math.log(math.exp(_cos(u[a], u[p]) / tau) / den)
    return total / (2 * n)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_nt_logistic(z1, z2, tau):
    u, n = _views(z1, z2)
    total = 0.0
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        negs = [b for b in range(2 * n) if b not in (a, p)]
        total += -_log_sigmoid(_cos(u[a], u[p]) / tau)
        total += -sum(_log_sigmoid(-_cos(u[a], u[b]) / tau) for b in negs) / len(negs)
    return total / (2 * n)


def ref_margin_triplet(z1, z2, m, semi_hard=False):
    u, n = _views(z1, z2)
    total = 0.0
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        sp = _cos(u[a], u[p])
        sn = [_cos(u[a], u[b]) for b in range(2 * n) if b not in (a, p)]
        if not semi_hard:
            total += sum(max(s - sp + m, 0.0) for s in sn) / len(sn)
        else:
            semi = [s for s in sn if s < sp]
            s_neg = max(semi) if semi else min(sn)
            total += max(s_neg - sp + m, 0.0)
    return total / (2 * n)


def ref_alignment(z1, z2, alpha):
    u, n = _views(z1, z2)
    return sum(math.sqrt(sum((x - y) ** 2 for x, y in zip(u[i], u[i + n]))) ** alpha for i in range(n)) / n


def ref_uniformity(z, t):
    u, _ = _views(z, z)
    u = u[: z.shape[0]]
    vals = [math.exp(-t * sum((x - y) ** 2 for x, y in zip(u[i], u[j])))
            for i in range(len(u)) for j in range(i + 1, len(u))]
    return math.log(sum(vals) / len(vals))


def _pair(seed: int, n: int = 4, d: int = 3, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _simplex_views(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of a regular simplex (pairwise cosine -1/(n-1)) in d >= n dims; both views equal."""
    e = torch.eye(n, d, dtype=torch.float64)
    u = F.normalize(e - e.mean(dim=0, keepdim=True), dim=1)
    return u.clone(), u.clone()


# ---------------------------------------------------------------- losses vs references

@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nt_xent_matches_loop_reference(seed, tau):
    z1, z2 = _pair(seed)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(ref_nt_xent(z1, z2, tau), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nt_logistic_matches_loop_reference(seed, tau):
    z1, z2 = _pair(seed)
    assert nt_logistic(z1, z2, tau).item() == pytest.approx(ref_nt_logistic(z1, z2, tau), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("semi_hard", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.4, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_margin_triplet_matches_loop_reference(seed, margin, semi_hard):
    z1, z2 = _pair(seed)
    got = margin_triplet(z1, z2, margin, semi_hard=semi_hard).item()
    assert got == pytest.approx(ref_margin_triplet(z1, z2, margin, semi_hard), rel=1e-5, abs=1e-6)


def test_semi_hard_fallback_uses_least_similar_negative():
    # anchor's positive is orthogonal; all negatives are more similar than the positive
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.05]])
    z2 = torch.tensor([[0.0, 1.0], [1.0, -0.05]])
    got = margin_triplet(z1, z2, 0.1, semi_hard=True).item()
    assert got == pytest.approx(ref_margin_triplet(z1, z2, 0.1, True), rel=1e-5)


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_nt_xent_equals_cross_entropy_formulation(tau):
    """The SimCLR reference form: logits [ab | aa] with the self-similarity masked by a large
    number, softmax cross entropy with label = the matching index in the other view."""
    z1, z2 = _pair(7, n=8, d=5)
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    big = 1e9 * torch.eye(n)
    logits_a = torch.cat([u1 @ u2.T / tau, u1 @ u1.T / tau - big], dim=1)
    logits_b = torch.cat([u2 @ u1.T / tau, u2 @ u2.T / tau - big], dim=1)
    labels = torch.arange(n)
    expected = 0.5 * (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels))
    assert nt_xent(z1, z2, tau).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_finite_and_nonzero(name):
    z1, z2 = _pair(3, n=6, d=4)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    make_loss(name, temperature=0.1, margin=0.5)(z1, z2).backward()
    for g in (z1.grad, z2.grad):
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_loss_is_scale_invariant_per_vector():
    z1, z2 = _pair(4, n=5, d=4)
    s = torch.tensor([1e-3, 1.0, 7.0, 1e4, 1e20]).unsqueeze(1)
    for name in LOSSES:
        fn = make_loss(name, 0.1, 0.4)
        assert fn(z1 * s, z2 * s.flip(0)).item() == pytest.approx(fn(z1, z2).item(), rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------- numerical stability

def _near_identical(n=32, d=64, norm=1e4, noise=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    base[1] = base[0] + noise * torch.randn(d, generator=g)   # a near-duplicate object (a hard negative)
    z1 = norm * F.normalize(base, dim=1)
    z2 = norm * F.normalize(base + noise * torch.randn(n, d, generator=g), dim=1)
    return z1, z2


@pytest.mark.parametrize("tau", [0.05, 0.1])
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("noise", [0.0, 1e-3, 0.3])
def test_bf16_autocast_finite_and_close_to_fp32(name, tau, noise):
    z1, z2 = _near_identical(noise=noise)
    lin = torch.nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(64))
    fn = make_loss(name, temperature=tau, margin=0.4)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        a1, a2 = lin(z1), lin(z2)        # bf16 activations, as a bf16 projection head gives
        assert a1.dtype == torch.bfloat16
        loss_bf16 = fn(a1, a2)
    loss_bf16.backward()
    assert loss_bf16.dtype == torch.float32
    assert torch.isfinite(loss_bf16)
    assert torch.isfinite(lin.weight.grad).all()

    # float32 on the very same (bf16-rounded) values: the loss itself adds no bf16 error
    # (a bf16 similarity matmul would be off by ~1 % here)
    b1, b2 = a1.detach().float(), a2.detach().float()
    loss_fp32 = fn(b1, b2)
    assert loss_bf16.item() == pytest.approx(loss_fp32.item(), rel=1e-5, abs=1e-7)
    # and against the unrounded float32 inputs (only the bf16 rounding of z differs)
    if noise > 0:
        assert loss_bf16.item() == pytest.approx(fn(z1, z2).item(), rel=1e-2, abs=1e-3)


@pytest.mark.parametrize("tau", [0.05, 0.1])
def test_nt_xent_extreme_inputs_finite(tau):
    z = torch.randn(8, 16)
    for z1, z2 in [(z, z.clone()), (1e30 * z, 1e30 * z), (torch.ones(8, 16), torch.ones(8, 16)),
                   (z.bfloat16() * 1e35, z.bfloat16() * 1e35)]:
        z1 = z1.clone().requires_grad_(True)
        for name in LOSSES:
            z1.grad = None
            loss = make_loss(name, tau, 0.4)(z1, z2)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(z1.grad).all(), (name, z1.abs().max())


# ---------------------------------------------------------------- minima

@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_perfect_alignment_on_simplex_is_minimal(tau):
    n = 4
    s1, s2 = _simplex_views(n, 6)
    expected = math.log1p((2 * n - 2) * math.exp(-n / ((n - 1) * tau)))
    best_xent = nt_xent(s1, s2, tau).item()
    assert best_xent == pytest.approx(expected, rel=1e-6)
    best_log = nt_logistic(s1, s2, tau).item()
    assert margin_triplet(s1, s2, 0.4).item() == 0.0
    for seed in range(50):
        z1, z2 = _pair(seed, n=n, d=6, dtype=torch.float64)
        assert nt_xent(z1, z2, tau).item() > best_xent
        assert nt_logistic(z1, z2, tau).item() > best_log
    # misaligning the views of the optimum raises the loss
    rot = s2 + 0.2 * torch.randn(n, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert nt_xent(s1, rot, tau).item() > best_xent
    assert nt_logistic(s1, rot, tau).item() > best_log


# ---------------------------------------------------------------- alignment / uniformity

@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_alignment_reference_and_identical_pairs(alpha):
    z1, z2 = _pair(5, n=6, d=3)
    assert alignment(z1, z2, alpha).item() == pytest.approx(ref_alignment(z1, z2, alpha), rel=1e-5)
    assert alignment(z1, 3.0 * z1, alpha).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment(z1, -z1, alpha).item() == pytest.approx(2.0**alpha, rel=1e-5)


def test_uniformity_reference_and_known_values():
    z = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    assert uniformity(z, 2.0).item() == pytest.approx(ref_uniformity(z, 2.0), rel=1e-5)
    assert uniformity(torch.ones(5, 3)).item() == pytest.approx(0.0, abs=1e-6)
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), t=2.0).item() == pytest.approx(-8.0, rel=1e-6)
    spread = torch.cat([torch.eye(8), -torch.eye(8)])                        # 16 points spread on S^7
    clustered = torch.eye(8)[0] + 0.05 * torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    assert uniformity(spread).item() < uniformity(clustered).item() - 1.0


def test_alignment_uniformity_bf16_autocast():
    z = torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = alignment(z.bfloat16(), z.bfloat16())
        u = uniformity(z.bfloat16())
    assert a.dtype == u.dtype == torch.float32 and torch.isfinite(a) and torch.isfinite(u)


# ---------------------------------------------------------------- make_loss

def test_make_loss_names_and_errors():
    z1, z2 = _pair(0)
    assert make_loss("nt_xent", 0.2, 0.4)(z1, z2).item() == pytest.approx(nt_xent(z1, z2, 0.2).item())
    assert make_loss("nt_logistic", 0.2, 0.4)(z1, z2).item() == pytest.approx(nt_logistic(z1, z2, 0.2).item())
    assert make_loss("margin_triplet", 0.2, 0.3)(z1, z2).item() == pytest.approx(
        margin_triplet(z1, z2, 0.3).item())
    with pytest.raises(ValueError, match="margin_triplet.*nt_logistic.*nt_xent"):
        make_loss("infonce", 0.1, 0.4)
    with pytest.raises(ValueError, match="temperature"):
        make_loss("nt_xent", 0.0, 0.4)
    with pytest.raises(ValueError):
        nt_xent(z1, z2[:3], 0.1)


# ---------------------------------------------------------------- model

@pytest.mark.parametrize("channels", [5, 7])
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_encoder_shapes(channels, norm):
    torch.manual_seed(0)
    model = build_model(channels, {"width": 8, "blocks": [1, 1, 1], "norm": norm})
    x = torch.randn(6, channels, 35, 35)
    h, z = model(x)
    assert h.shape == (6, DEFAULT_CONFIG["repr_dim"]) and z.shape == (6, DEFAULT_CONFIG["proj_dim"])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.represent(x), model(x)[0])


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_channels_last_matches_contiguous(norm):
    torch.manual_seed(0)
    model = build_model(7, {"width": 16, "blocks": (1, 2), "norm": norm})
    x = torch.randn(8, 7, 35, 35)
    model.train()
    with torch.no_grad():
        model(x)                                     # populate BN running statistics
    model.eval()
    with torch.no_grad():
        h_ref, z_ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        h_cl, z_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(h_cl, h_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z_cl, z_ref, rtol=1e-4, atol=1e-5)


def test_default_config_parameter_count():
    model = build_model(7, {})
    n = count_parameters(model)
    assert n == 762_720                      # reported in the design notes: 0.71 M encoder + 0.05 M head
    assert count_parameters(model.encoder) == 712_992
    assert 100_000 < count_parameters(build_model(5, {})) < 2_000_000
    assert isinstance(model, SimCLRModel)
    assert isinstance(model.encoder, Encoder) and isinstance(model.head, ProjectionHead)


def test_build_model_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="depth.*dropout|dropout.*depth"):
        build_model(5, {"width": 8, "depth": 3, "dropout": 0.1})
    with pytest.raises(ValueError, match="norm"):
        build_model(5, {"norm": "layer"})
    with pytest.raises(ValueError, match="blocks"):
        build_model(5, {"blocks": []})


def test_determinism_with_fixed_seed():
    x = torch.randn(4, 5, 35, 35, generator=torch.Generator().manual_seed(9))
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(5, {"width": 8, "blocks": (1, 1)})
        outs.append(model(x))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)


def test_model_bf16_autocast_forward_backward():
    torch.manual_seed(0)
    model = build_model(7, {"width": 8, "blocks": (1, 1)}).to(memory_format=torch.channels_last)
    x = torch.randn(8, 7, 35, 35).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, z = model(x)
        loss = nt_xent(z[:4], z[4:], 0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tiny_overfit_lowers_nt_xent():
    torch.manual_seed(0)
    x = torch.randn(16, 5, 35, 35)
    x[:, :, 15:20, 15:20] += 3.0 * torch.rand(16, 5, 1, 1)   # a central "source" with per-object colours
    v1, v2 = torch.flip(x, dims=[3]), torch.rot90(x, 1, dims=[2, 3])
    model = build_model(5, {"width": 8, "blocks": (1, 1), "repr_dim": 32, "proj_hidden_dim": 64, "proj_dim": 32})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(24):
        _, z = model(torch.cat([v1, v2]))
        loss = nt_xent(z[:16], z[16:], 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses
    assert losses[-1] > math.log1p(30 * math.exp(-16 / (15 * 0.2))) - 1e-4   # the NT-Xent minimum
