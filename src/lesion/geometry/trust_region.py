"""The trust-region step of geodesic recovery ([G] Eq. 12, SPEC §3.6), solved in the Gram space.

    θ = argmin θᵀ g θ − β θᵀ v  subject to ‖θ‖² ≤ r²,   g = AᵀA / b  (A: the b·m Jacobian rows of a minibatch)

has the solution θ(μ) = (β/2)(g + μI)⁻¹ v with the smallest μ ≥ 0 such that ‖θ(μ)‖ ≤ r. With K = A Aᵀ = U Λ Uᵀ
(size b·m) and y = Uᵀ A v, the Woodbury identity gives, for μ > 0,
    (g + μI)⁻¹ v = (v − Aᵀ U diag(1 / (bμ + λ)) y) / μ,
    ‖(g + μI)⁻¹ v‖² = (‖v‖² − Σ y_i² (2bμ + λ_i) / (bμ + λ_i)²) / μ²,
a scalar function of μ solved by a safeguarded bisection on log μ. When v lies in range(g) and the
unconstrained step θ = (β/2) g⁺ v fits in the ball, μ = 0 (inactive constraint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lesion.geometry.rows import ExplicitRows, MLPRows


@dataclass(frozen=True)
class TrustRegionStep:
    """θ, the multiplier μ, whether the constraint is active, and θᵀgθ (the step's metric length)."""

    theta: torch.Tensor
    mu: float
    active: bool
    metric_length: float


def trust_region_step(A: torch.Tensor | ExplicitRows | MLPRows, batch: int, v: torch.Tensor, beta: float,
                      radius: float, rtol: float = 1e-10) -> TrustRegionStep:
    """Solve the subproblem for g = AᵀA/batch (A: a (rows, n) matrix or a rows object from `rows`),
    direction v (n,), β > 0 and radius r."""
    rows = ExplicitRows(A) if isinstance(A, torch.Tensor) else A
    v = v.double()
    K = rows.gram()
    lam, U = torch.linalg.eigh(K)
    lam = lam.clamp_min(0.0)
    y = U.T @ rows.apply(v)
    vv = float(v @ v)
    scale = beta / 2.0
    tiny = float(lam.max()) * K.shape[0] * 2.2e-16 if K.numel() else 0.0

    def theta(mu: float) -> torch.Tensor:
        if mu == 0.0:  # θ = (β/2) g⁺ v = (β/2) b Aᵀ U Λ⁻² Uᵀ A v on range(g)
            inv = torch.where(lam > tiny, 1.0 / lam.clamp_min(tiny) ** 2, torch.zeros_like(lam))
            return scale * batch * rows.apply_t(U @ (inv * y))
        return scale * (v - rows.apply_t(U @ (y / (batch * mu + lam)))) / mu

    def norm2(mu: float) -> float:
        return scale**2 * max(0.0, vv - float((y**2 * (2 * batch * mu + lam) / (batch * mu + lam) ** 2).sum())) / mu**2

    # inactive constraint: v in range(g) and the pseudo-inverse step inside the ball
    in_range = float((y[lam > tiny] ** 2 / lam[lam > tiny]).sum()) if bool((lam > tiny).any()) else 0.0
    if vv > 0 and abs(vv - in_range) <= 1e-9 * vv:
        step = theta(0.0)
        if float(step @ step) <= radius**2:
            return TrustRegionStep(step, 0.0, False, _metric_length(rows, batch, step))
    lo, hi = 1e-12, 1.0
    while norm2(hi) > radius**2:
        hi *= 10.0
    while norm2(lo) < radius**2 and lo < hi:
        lo *= 0.1
        if lo < 1e-300:
            break
    for _ in range(200):  # bisection on log μ: ‖θ(μ)‖ decreases with μ
        mid = math.sqrt(lo * hi)
        if norm2(mid) > radius**2:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < rtol:
            break
    step = theta(hi)
    return TrustRegionStep(step, hi, True, _metric_length(rows, batch, step))


def _metric_length(rows: ExplicitRows | MLPRows, batch: int, theta: torch.Tensor) -> float:
    """θᵀ g θ = ‖Aθ‖² / b ([G] Eq. 6, one step of the path length)."""
    return float((rows.apply(theta) ** 2).sum() / batch)
