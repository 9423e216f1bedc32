"""Tolerance to crashes (SPEC §2.3): the largest number of crashes within an error budget.

For an error budget ε and the network's own error ε' (default 0), the tolerated f is the largest f such that
every f' ≤ f keeps the figure within ε − ε': by Erf_av (certified on average), by Erf (worst case), and by
the measured Omega_av when inputs are given. Networks can be ranked by it without data ([R] §IV-C).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lesion.crash.bounds import OutputBounds, budget_bound
from lesion.crash.budget import CrashBudget
from lesion.crash.omega import exact_omega, monte_carlo_omega, plan
from lesion.crash.structure import MLPStructure, hidden_activations
from lesion.errors import LesionError


@dataclass(frozen=True)
class Tolerance:
    """Tolerated crash counts in `layers` for budget ε − ε', and the curve they were read from. `examined`: the
    largest crash count read; `capped[name]`: that answer is `examined` with every count up to it within the
    budget while more units could crash, so the true answer is at least it (printed "≥ F")."""

    epsilon: float
    epsilon_own: float
    layers: tuple[int, ...]
    by_erf: int
    by_erf_av: int
    by_omega_av: int | None
    curve: list[dict[str, Any]] = field(default_factory=list)
    C_source: str = ""
    examined: int = 0
    capped: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def largest_within(values: Sequence[float], limit: float, faults: Sequence[int] | None = None) -> int:
    """The largest f such that every f' ≤ f keeps its figure within the limit; values[i] is the figure for
    faults[i] crashes (default f = i + 1), the faults ascending from 1 without gaps (a gap ends the reading);
    0 when f = 1 already exceeds it."""
    faults = range(1, len(values) + 1) if faults is None else faults
    tolerated = 0
    for expected, (f, value) in enumerate(zip(faults, values, strict=True), start=1):
        if f != expected or value > limit:
            break
        tolerated = f
    return tolerated


def tolerance(structure: MLPStructure, epsilon: float, C: OutputBounds, layers: Sequence[int] = (1,),
              epsilon_own: float = 0.0, K: float | None = None, x: torch.Tensor | None = None,
              max_faults: int | None = None, norm: str = "inf", output: str = "raw",
              time_limit: float = 60.0, samples: int = 2000, seed: int = 0) -> Tolerance:
    """Tolerated crashes by Erf, Erf_av and (with inputs `x`) measured Omega_av; exact Omega where the plan
    fits in `time_limit` seconds, else Monte Carlo with `samples` sets (recorded in the curve)."""
    limit = epsilon - epsilon_own
    if limit <= 0:
        raise LesionError(f"the error budget ε − ε' = {limit:g} must be positive")
    widths = [structure.widths[layer - 1] for layer in layers]
    top = min(sum(widths), max_faults or sum(widths))
    curve, erfs, erf_avs, omegas = [], [], [], []
    hidden = None if x is None else hidden_activations(structure, x)[0].numpy()  # for the plans
    for f in range(1, top + 1):
        bound = budget_bound(structure, f, layers, C, K)
        erfs.append(bound.erf)
        erf_avs.append(bound.erf_av)
        point: dict[str, Any] = {"faults": f, "erf": bound.erf, "erf_av": bound.erf_av}
        measuring = x is not None and (not omegas or omegas[-1] <= limit)
        if measuring:
            budget = CrashBudget(tuple(layers), tuple(widths), f)
            if plan(structure, budget, len(x), output, hidden=hidden).affordable(time_limit):
                result = exact_omega(structure, x, budget, norm, output, time_limit=None)
            else:
                result = monte_carlo_omega(structure, x, budget, norm, output, samples=samples, seed=seed)
            omegas.append(result.omega_av)
            point.update(omega_av=result.omega_av, exact=result.exact)
        curve.append(point)
        if min(erfs[-1], erf_avs[-1]) > limit and not measuring:
            break
    answers = {"by_erf": largest_within(erfs, limit), "by_erf_av": largest_within(erf_avs, limit),
               "by_omega_av": largest_within(omegas, limit) if x is not None else None}
    examined = len(curve)
    more = examined < sum(widths)  # crashing every unit is the end of the range, not a cap
    capped = {name: more and value == examined for name, value in answers.items() if value is not None}
    return Tolerance(epsilon, epsilon_own, tuple(layers), answers["by_erf"], answers["by_erf_av"],
                     answers["by_omega_av"], curve, C.source, examined, capped)
