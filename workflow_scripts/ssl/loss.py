"""Contrastive losses of SimCLR and the alignment / uniformity health signals.

Notation: a batch of N objects gives two views, z1 and z2 (N, D) (projections z = g(f(x))).
They are stacked into 2N vectors u_a = z_a / ||z_a|| (a = 0 .. 2N-1; view 1 first), the
positive of a is p(a) = a + N mod 2N (the other view of the same object) and its 2N - 2
negatives are every b not in {a, p(a)}. s_ab = u_a . u_b is the cosine similarity.
All three losses are means over the 2N anchors, so each ordered positive pair (i, j) and
(j, i) counts, as in Chen et al. 2020.

Numerics: every function promotes its inputs to float32 (float64 stays float64) and runs
with autocast disabled, so
under ``torch.autocast(..., dtype=torch.bfloat16)`` the similarities, the logsumexp and the
result are float32 (bf16 has an 8-bit mantissa: cosine similarities would be wrong by ~4e-3,
i.e. by 0.08 in logit units at tau = 0.05). Vectors are rescaled by their (detached) max
|component| before the L2 normalisation, so norms up to the float32 / bf16 range do not
overflow when squared; u is unchanged by this and so are the gradients (u is invariant to
the scale of z). Exponentials only appear inside logsumexp / cross_entropy / logsigmoid.

References: Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework for Contrastive
Learning of Visual Representations" (ICML), Table 2 and appendix (loss comparison);
Schroff, Kalenichenko & Philbin 2015 (FaceNet; semi-hard negatives); Wang & Isola 2020,
"Understanding Contrastive Representation Learning through Alignment and Uniformity on
the Hypersphere" (ICML).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def _fp32(x: Tensor) -> Tensor:
    """Promote to at least float32 (float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def l2_normalize(z: Tensor, eps: float = 1e-12) -> Tensor:
    """z / ||z|| along the last dim in >= float32, safe for huge norms (pre-scaled by the
    detached max |z_k|, which leaves the result and its gradient unchanged); zero -> zero."""
    z = _fp32(z)
    scale = z.detach().abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    return F.normalize(z / scale, dim=-1, eps=eps)


def _no_autocast(t: Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def _check_pair(z1: Tensor, z2: Tensor) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D) with equal shapes, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError("contrastive losses need N >= 2 objects (so that negatives exist)")


def _similarities(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(S, pos, neg_mask): S (2N, 2N) float32 cosine similarities, pos (2N,) index of each
    anchor's positive, neg_mask (2N, 2N) True where b is a negative of a."""
    _check_pair(z1, z2)
    n = z1.shape[0]
    u = l2_normalize(torch.cat([z1, z2], dim=0))
    s = u @ u.T
    idx = torch.arange(2 * n, device=u.device)
    pos = (idx + n) % (2 * n)
    neg = torch.ones(2 * n, 2 * n, dtype=torch.bool, device=u.device)
    neg[idx, idx] = False
    neg[idx, pos] = False
    return s, pos, neg


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent, the normalised temperature-scaled cross entropy (Chen et al. 2020, eq. 1):

        l(a) = -log[ exp(s_{a,p(a)} / tau) / sum_{b != a} exp(s_ab / tau) ],
        L = (1 / 2N) sum_a l(a).

    Computed as ``cross_entropy(S / tau with the diagonal set to -inf, p)``: the
    log-softmax subtracts the row maximum, so nothing overflows for any tau > 0.
    L > 0. Its minimum (D >= N - 1): both views equal (s_ap = 1) and the N objects on a
    regular simplex (s = -1 / (N - 1)), L_min = log(1 + (2N - 2) exp(-N / ((N - 1) tau))).
    """
    _check_temperature(temperature)
    with _no_autocast(z1):
        s, pos, _ = _similarities(z1, z2)
        logits = (s / temperature).fill_diagonal_(float("-inf"))
        return F.cross_entropy(logits, pos)


def nt_logistic(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Logistic (Chen et al. 2020, Table 2): binary logistic regression of positives vs
    negatives on the scaled similarity, with the negatives re-weighted:

        l(a) = -log sigmoid(s_{a,p(a)} / tau) - (1 / (2N - 2)) sum_{b neg} log sigmoid(-s_ab / tau),
        L = (1 / 2N) sum_a l(a).

    Re-weighting: an anchor has one positive and 2N - 2 negatives; as in the paper's
    comparison (appendix), the negative terms are averaged instead of summed, so positives
    and negatives carry equal total weight (otherwise the negatives outweigh the positive
    2N - 2 : 1 and the optimum pushes everything apart). All 2N - 2 negatives of both views
    are used (no mining). log sigmoid is evaluated with F.logsigmoid (stable for any tau).
    """
    _check_temperature(temperature)
    with _no_autocast(z1):
        s, pos, neg = _similarities(z1, z2)
        logits = s / temperature
        idx = torch.arange(s.shape[0], device=s.device)
        pos_term = -F.logsigmoid(logits[idx, pos])
        neg_term = -(F.logsigmoid(-logits) * neg).sum(dim=1) / neg.sum(dim=1)
        return (pos_term + neg_term).mean()


def margin_triplet(z1: Tensor, z2: Tensor, margin: float, semi_hard: bool = False) -> Tensor:
    """Margin triplet loss on cosine similarities (Chen et al. 2020, Table 2):

    all negatives (default):
        l(a) = (1 / (2N - 2)) sum_{b neg} max(s_ab - s_{a,p(a)} + m, 0)
    semi-hard (``semi_hard=True``; Schroff et al. 2015, the "sh" rows of Chen et al. Table 4):
        l(a) = max(s_{a,n(a)} - s_{a,p(a)} + m, 0), n(a) = the most similar negative that is
        still less similar than the positive (s_ab < s_ap); if there is none, the least
        similar negative (the fallback of TensorFlow's triplet_semihard_loss).
    L = (1 / 2N) sum_a l(a). Zero once every negative is at least m below its positive.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    with _no_autocast(z1):
        s, pos, neg = _similarities(z1, z2)
        idx = torch.arange(s.shape[0], device=s.device)
        s_pos = s[idx, pos].unsqueeze(1)
        if not semi_hard:
            hinge = F.relu(s - s_pos + margin) * neg
            return (hinge.sum(dim=1) / neg.sum(dim=1)).mean()
        inf = torch.tensor(float("inf"), device=s.device)
        semi = neg & (s < s_pos)
        hardest_semi = torch.where(semi, s, -inf).amax(dim=1)
        easiest = torch.where(neg, s, inf).amin(dim=1)
        s_neg = torch.where(semi.any(dim=1), hardest_semi, easiest)
        return F.relu(s_neg - s_pos.squeeze(1) + margin).mean()


LOSSES: dict[str, Callable[..., Tensor]] = {
    "nt_xent": nt_xent,
    "nt_logistic": nt_logistic,
    "margin_triplet": margin_triplet,
}


def make_loss(name: str, temperature: float = 0.5, margin: float = 0.4, semi_hard: bool = False) -> LossFn:
    """``loss(z1, z2) -> scalar`` for a name in LOSSES. temperature is used by nt_xent and
    nt_logistic, margin and semi_hard by margin_triplet."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {sorted(LOSSES)}")
    if name == "margin_triplet":
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        return lambda z1, z2: margin_triplet(z1, z2, margin, semi_hard=semi_hard)
    _check_temperature(temperature)
    fn = LOSSES[name]
    return lambda z1, z2: fn(z1, z2, temperature)


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment (Wang & Isola 2020): L_align = E_pairs ||u1 - u2||^alpha over positive pairs
    of L2-normalised embeddings (normalised here). 0 for identical views; at most 2^alpha.
    Lower is better."""
    _check_pair(z1, z2)
    with _no_autocast(z1):
        return (l2_normalize(z1) - l2_normalize(z2)).norm(dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity (Wang & Isola 2020): L_unif = log E_{a<b} exp(-t ||u_a - u_b||^2) over all
    distinct pairs of L2-normalised embeddings (normalised here), via logsumexp. 0 when all
    points coincide; -t * 4 for two antipodal points; lower (more negative) = more uniform
    on the sphere. Pass one view (or both stacked)."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"z must be (M, D) with M >= 2, got {tuple(z.shape)}")
    with _no_autocast(z):
        u = l2_normalize(z)
        # ||u_a - u_b||^2 = 2 - 2 u_a.u_b on the sphere (differentiable everywhere, unlike pdist at 0)
        sq = (2.0 - 2.0 * (u @ u.T)).clamp_min(0.0)
        iu = torch.triu_indices(u.shape[0], u.shape[0], offset=1, device=u.device)
        d2 = sq[iu[0], iu[1]]
        return torch.logsumexp(-t * d2, dim=0) - math.log(d2.numel())
