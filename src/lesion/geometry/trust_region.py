"""The trust-region step of geodesic recovery ([G] Eq. 12, SPEC §3.6), solved in the Gram space.

    θ = argmin θᵀ g θ − β θᵀ v  subject to ‖θ‖² ≤ r²,   g = AᵀA / b  (A: the b·m Jacobian rows of a minibatch)

has the solution θ(μ) = (β/2)(g + μI)⁻¹ v with the smallest μ ≥ 0 such that ‖θ(μ)‖ ≤ r. With K = A Aᵀ = U Λ Uᵀ
(size b·m) and y = Uᵀ A v, the Woodbury identity gives, for μ > 0,
    (g + μI)⁻¹ v = (v − Aᵀ U diag(1 / (bμ + λ)) y) / μ,
    ‖(g + μI)⁻¹ v‖² = (‖v‖² − Σ y_i² (2bμ + λ_i) / (bμ + λ_i)²) / μ²,
a scalar function of μ; it is evaluated without cancellation by splitting v into its parts in range(g) and
in the null space, and solved by a safeguarded bisection. When v lies in range(g) and the unconstrained step
θ = (β/2) g⁺ v fits in the ball, μ = 0 (inactive constraint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lesion.geometry.rows import ExplicitRows, JacobianRows


@dataclass(frozen=True)
class TrustRegionStep:
    """θ, the multiplier μ, whether the constraint is active, and θᵀgθ (the step's metric length)."""

    theta: torch.Tensor
    mu: float
    active: bool
    metric_length: float


def trust_region_step(A: torch.Tensor | JacobianRows, batch: int, v: torch.Tensor, beta: float,
                      radius: float, rtol: float = 1e-10) -> TrustRegionStep:
    """Solve the subproblem for g = AᵀA/batch (A: a (rows, n) matrix or a rows object from `rows`),
    direction v (n,), β > 0 and radius r."""
    rows = ExplicitRows(A) if isinstance(A, torch.Tensor) else A
    v = v.double()
    K = rows.gram()
    lam, U = torch.linalg.eigh(K)
    keep = lam > float(lam.max()) * K.shape[0] * 2.2e-16 if K.numel() else lam > 0
    lam, U = lam[keep], U[:, keep]
    y = U.T @ rows.apply(v)
    scale = beta / 2.0
    # v = v_range + v_null: v_range = Aᵀ U Λ⁻¹ y is v's part in range(g); along eigenvector q_i of g
    # (eigenvalue λ_i/b) v has coefficient y_i/√λ_i
    v_null = v - rows.apply_t(U @ (y / lam))
    null2 = float(v_null @ v_null)
    if null2 <= 1e-12 * float(v @ v):
        null2, v_null = 0.0, torch.zeros_like(v)
    weight = y**2 / lam

    def theta(mu: float) -> torch.Tensor:
        ranged = scale * rows.apply_t(U @ (batch * y / (lam * (lam + batch * mu))))
        return ranged if mu == 0.0 else ranged + scale * v_null / mu

    def norm2(mu: float) -> float:
        ranged = float((weight * batch**2 / (lam + batch * mu) ** 2).sum())
        return scale**2 * (ranged + (null2 / mu**2 if mu > 0 else (math.inf if null2 else 0.0)))

    if norm2(0.0) <= radius**2:  # v in range(g) and the step θ = (β/2) g⁺ v inside the ball
        step = theta(0.0)
        return TrustRegionStep(step, 0.0, False, _metric_length(rows, batch, step))
    lo, hi = 0.0, 1.0
    while norm2(hi) > radius**2:
        lo, hi = hi, hi * 10.0
    for _ in range(2000):  # bisection on log μ (‖θ(μ)‖ decreases with μ); from 0, steps of 10³ down first
        mid = hi * 1e-3 if lo == 0.0 else math.sqrt(lo * hi)
        if mid == 0.0:
            break
        if norm2(mid) > radius**2:
            lo = mid
        else:
            hi = mid
        if lo > 0.0 and hi / lo - 1.0 < rtol:
            break
    step = theta(hi)
    return TrustRegionStep(step, hi, True, _metric_length(rows, batch, step))


def _metric_length(rows: JacobianRows, batch: int, theta: torch.Tensor) -> float:
    """θᵀ g θ = ‖Aθ‖² / b ([G] Eq. 6, one step of the path length)."""
    return float((rows.apply(theta) ** 2).sum() / batch)
