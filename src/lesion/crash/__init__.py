"""Crash robustness of [R] (ARCHITECTURE.md: crash/; SPEC §2): the analytical bound Erf/Erf_av, the measured
error Omega (exact engines and Monte Carlo) and the tolerance to crashes."""

from lesion.crash.bounds import BoundResult, OutputBounds, budget_bound, crash_bound, output_bounds
from lesion.crash.budget import CrashBudget
from lesion.crash.omega import OmegaResult, Plan, exact_omega, monte_carlo_omega, plan
from lesion.crash.structure import MLPStructure, hidden_activations, mlp_structure
from lesion.crash.tolerance import Tolerance, tolerance

__all__ = [
    "BoundResult",
    "CrashBudget",
    "MLPStructure",
    "OmegaResult",
    "OutputBounds",
    "Plan",
    "Tolerance",
    "budget_bound",
    "crash_bound",
    "exact_omega",
    "hidden_activations",
    "mlp_structure",
    "monte_carlo_omega",
    "output_bounds",
    "plan",
    "tolerance",
]
