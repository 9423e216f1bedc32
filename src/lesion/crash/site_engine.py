"""Omega for any network (SPEC §2.1: Omega is defined for any network; only Erf needs an MLP).

The crash budget's "layers" are sites (SPEC §6.1, their 1-based indices in the site table); a crash set zeroes
its units at their sites through the damage engine (`lesion.damage.batched_damaged_outputs`, vmapped over
sets), and d(x, S) = ‖F(x) − F_S(x)‖_q is taken per output row (per input, or per (input, token) pair of a
sequence model), in float64. Exact enumeration for budgets whose cost fits the time limit (estimated from a
timed first batch), Monte Carlo otherwise.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from lesion import progress
from lesion.crash.accumulate import OmegaAccumulator
from lesion.crash.budget import CrashBudget
from lesion.crash.engines import NORM_ORDERS, _transform
from lesion.crash.omega import OmegaResult
from lesion.damage.apply import batched_damaged_outputs, damaged_outputs
from lesion.damage.realised import Realised, UnitOverride
from lesion.errors import LesionError
from lesion.sites import Site

SET_BATCH = 32


class SiteEngine:
    """Distances d(x, S) for batches of crash sets over the units of some sites of any model."""

    def __init__(self, model: nn.Module, x: torch.Tensor, sites: list[Site], budget: CrashBudget, norm: str,
                 output: str) -> None:
        if [s.width for s in sites] != list(budget.widths):
            raise LesionError("the crash budget's widths must be those of its sites")
        self.model, self.x, self.sites, self.budget, self.norm, self.output = model, x, sites, budget, norm, output
        self.clean = _transform(damaged_outputs(model, Realised(), x).double(), output)
        device = self.clean.device
        self.identity = {s.name: UnitOverride.identity(s, device) for s in sites}

    @property
    def rows(self) -> int:
        """Output rows per forward: the inputs, or the (input, token) pairs."""
        return int(self.clean.shape[0])

    def configuration(self, units: np.ndarray) -> Realised:
        """The damaged network of one crash set (global unit indices)."""
        state = Realised()
        for site, offset, width in zip(self.sites, self.budget.offsets, self.budget.widths, strict=True):
            mine = units[(units >= offset) & (units < offset + width)] - offset
            if len(mine):
                state = state.with_units(self.identity[site.name].force(torch.from_numpy(mine), 0.0), None)
        return state

    def distances(self, sets: np.ndarray) -> np.ndarray:
        """d(x, S) for crash sets `sets` (B, f): (B, rows)."""
        outputs = batched_damaged_outputs(self.model, [self.configuration(s) for s in sets], self.x,
                                          desc="crash sets")
        diff = _transform(outputs.double(), self.output) - self.clean.unsqueeze(0)
        return torch.linalg.vector_norm(diff, ord=NORM_ORDERS[self.norm], dim=-1).cpu().numpy()


def site_crash_omega(model: nn.Module, x: torch.Tensor, sites: list[Site], faults: int, norm: str = "inf",
                     output: str = "raw", samples: int | None = None, ci_width: float | None = None, seed: int = 0,
                     time_limit: float = 600.0) -> OmegaResult:
    """Omega (SPEC §2.1) of `faults` crashes anywhere among the units of `sites`, for any model."""
    budget = CrashBudget(tuple(s.index for s in sites), tuple(s.width for s in sites), faults)
    engine = SiteEngine(model, x, sites, budget, norm, output)
    figures = site_omega(engine, samples, ci_width, seed, time_limit)
    return OmegaResult(faults, budget.layers, None, inputs=engine.rows, norm=norm, output=output,
                       engine="sites" if figures["exact"] else "monte-carlo (sites)", **figures,
                       extra={"sites": [s.name for s in sites]})


def site_omega(engine: SiteEngine, samples: int | None = None, ci_width: float | None = None, seed: int = 0,
               time_limit: float = 600.0, max_samples: int = 100_000) -> dict:
    """Omega figures over the engine's budget: exact when neither `samples` nor `ci_width` is given (refused
    with the estimate above `time_limit`), else Monte Carlo (max-type figures are lower bounds)."""
    budget = engine.budget
    started = time.perf_counter()
    if samples is None and ci_width is None:
        count = budget.count()
        sets = budget.sets()
        first = np.array([next(sets) for _ in range(min(SET_BATCH, count))])
        d = engine.distances(first)
        estimate = (time.perf_counter() - started) * count / len(first)
        if estimate > time_limit:
            raise LesionError(f"{budget.describe()}: {count:,} crash sets × {engine.rows:,} rows would take about "
                              f"{estimate:,.0f} s (above --time-limit {time_limit:g}); use Monte Carlo with "
                              "--samples N or --ci-width W")
        acc = OmegaAccumulator(count, engine.rows)
        acc.add_block(d, 0, 0)
        done = len(first)
        with progress.bar(count, f"Omega (exact), {budget.describe()}", "set") as bar:
            bar.update(done)
            while done < count:
                batch = np.array([next(sets) for _ in range(min(SET_BATCH, count - done))])
                acc.add_block(engine.distances(batch), done, 0)
                done += len(batch)
                bar.update(len(batch))
        figures = acc.figures()
        rank = figures.pop("worst_rank")
        worst = next(s for i, s in enumerate(budget.sets()) if i == rank)
        return {**figures, "worst_set": [list(budget.locate(u)) for u in worst], "exact": True, "sets": count,
                "samples": None, "omega_av_ci": None, "max_figures_are_lower_bounds": False,
                "seconds": time.perf_counter() - started}
    from lesion.crash.omega import sampled_figures  # noqa: I001 - kept beside its one use

    return sampled_figures(engine.distances, engine.rows, budget, samples, ci_width, seed, SET_BATCH, max_samples)
