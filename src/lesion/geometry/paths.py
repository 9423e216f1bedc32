"""Damage paths and break-down acceleration ([G] §4, SPEC §3.5).

Along a path γ(t) from the trained weights w_t to damaged weights w_d (straight: γ(t) = w_t + t(w_d − w_t)),
with F(t) the stacked outputs f(x; γ(t)) on the |X| analysis inputs:
- speed s(t) = γ'ᵀ g γ' = ‖dF/dt‖²/|X|;
- break-down acceleration ds/dt = 2⟨dF/dt, d²F/dt²⟩/|X| ([G] Eq. 11);
- covariant acceleration: ‖∇_γ'γ'‖_g = ‖P_range(J) d²F/dt²‖/√|X|, where d²F/dt² comes from forward-mode
  derivatives (jvp of jvp) and P projects onto the range of the Jacobian (the identity when J has full row
  rank). This is exact: the pull-back metric's Christoffel symbols of the first kind are ⟨∂_i∂_j F, ∂_l F⟩, so
  J∇_γ'γ' = Jγ'' + J g⁺ Jᵀ ∂²F[γ', γ'] = P d²F/dt².
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import jvp

from lesion.errors import LesionError
from lesion.geometry.gram import gram_matrix
from lesion.geometry.metric import MetricOperator


@dataclass(frozen=True)
class PathPoint:
    """Speed, its derivative and the covariant acceleration at time t of a path."""

    t: float
    speed: float
    speed_derivative: float
    covariant_acceleration: float
    euclidean_acceleration: float


def straight_path(w_start: torch.Tensor, w_end: torch.Tensor) -> tuple[Callable[[float], torch.Tensor],
                                                                        Callable[[float], torch.Tensor],
                                                                        Callable[[float], torch.Tensor]]:
    """γ(t) = w_start + t(w_end − w_start), γ' = w_end − w_start, γ'' = 0."""
    delta = w_end - w_start
    return (lambda t: w_start + t * delta), (lambda t: delta), (lambda t: torch.zeros_like(delta))


def output_derivatives(op: MetricOperator, w: torch.Tensor, velocity: torch.Tensor,
                       acceleration: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dF/dt, d²F/dt²) at weights w along a path with γ' = velocity and γ'' = acceleration (jvp of jvp)."""
    f = op.outputs_fn(op.x)

    def first(weights: torch.Tensor) -> torch.Tensor:
        return jvp(f, (weights,), (velocity,))[1]

    dF, d2F = jvp(first, (w,), (velocity,))
    if acceleration is not None and bool(acceleration.any()):
        d2F = d2F + jvp(f, (w,), (acceleration,))[1]
    return dF, d2F


def range_projection(op: MetricOperator, w: torch.Tensor, vectors: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """P_range(J) applied to output-space vectors (|X|, m) at weights w, through the Gram matrix K = JJᵀ (formed
    and decomposed: refused, before the work, where the spectrum's automatic route would not form it)."""
    from lesion.geometry.spectrum import automatic_route

    rows = op.inputs * op.m
    if automatic_route(op.flat.mlp is not None, rows, op.n, op.weights.element_size()) != "gram":
        raise LesionError(f"the covariant acceleration needs the range of J on {rows:,} output rows ({op.inputs:,} "
                          f"rows of {op.m} outputs), too many to form and decompose K = JJᵀ here; use fewer "
                          "analysis inputs (--inputs)")
    K = gram_matrix(op.at(w)).double()
    lam, U = torch.linalg.eigh(K)
    keep = lam > lam.max() * rtol
    U = U[:, keep]
    flat = vectors.reshape(-1).double()
    return (U @ (U.T @ flat)).reshape(vectors.shape)


def path_point(op: MetricOperator, t: float, gamma: Callable[[float], torch.Tensor],
               velocity: Callable[[float], torch.Tensor], acceleration: Callable[[float], torch.Tensor],
               project: bool = True) -> PathPoint:
    """Speed, ds/dt and the covariant acceleration at time t (SPEC §3.5)."""
    w = gamma(t)
    dF, d2F = output_derivatives(op, w, velocity(t), acceleration(t))
    B = op.inputs
    speed = float((dF.double() ** 2).sum() / B)
    ds = float(2 * (dF.double() * d2F.double()).sum() / B)
    projected = range_projection(op, w, d2F) if project else d2F.double()
    cov = float(projected.norm() / B**0.5)
    return PathPoint(t, speed, ds, cov, float(d2F.double().norm() / B**0.5))


def predicted_breakdown(t: list[float], acceleration: list[float], factor: float = 10.0) -> float | None:
    """The first t where the covariant acceleration exceeds `factor` times its value at the start of the path
    (the spike [G] reads break-down from), or None."""
    if not acceleration:
        return None
    start = max(acceleration[0], 1e-12 * max(acceleration))
    for time_, value in zip(t, acceleration, strict=True):
        if value > factor * start:
            return time_
    return None
