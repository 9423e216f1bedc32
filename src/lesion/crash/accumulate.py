"""Accumulating the four Omega figures of SPEC §2.1 over (crash set, input) pairs, in float64.

Inputs arrive in blocks and sets in rank order; per-set sums over inputs (for Omega_worst_set), per-input
maxima over sets (for Omega_mav), and the global sum, sum of squares and maximum are merged in a fixed order,
so the same blocks always give bit-identical figures (checkpoints and resumes rely on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class OmegaAccumulator:
    """Running state of an exact Omega computation for `n_sets` sets over `n_inputs` inputs.

    Per-set sums are held for one range of sets at a time (a window, `window_start` …): blocks arrive
    set-range-major (every input block of a range before the next range), so a range's sums are complete when
    a block of another range arrives; its largest sum is then folded into the worst set so far (`best`,
    `best_rank`, the first of equal sums) and the window moves. A run whose blocks cover every set at once
    holds them all, as before; one of 10¹⁰ sets holds a range (issue 18)."""

    n_sets: int
    n_inputs: int
    set_sums: np.ndarray = field(default=None)  # type: ignore[assignment]
    input_max: np.ndarray = field(default=None)  # type: ignore[assignment]
    total: float = 0.0
    total_sq: float = 0.0
    maximum: float = 0.0
    pairs: int = 0
    window_start: int = 0
    best: float = -math.inf
    best_rank: int = -1

    def __post_init__(self) -> None:
        if self.set_sums is None:
            self.set_sums = np.zeros(0, dtype=np.float64)
        if self.input_max is None:
            self.input_max = np.zeros(self.n_inputs, dtype=np.float64)

    def add_block(self, d: np.ndarray, set_start: int, input_start: int) -> None:
        """Merge distances d(x, S) of shape (sets, inputs) for sets set_start… and inputs input_start…"""
        self.add_reduced(*reduce_block(d, set_start, input_start))

    def add_reduced(self, set_start: int, set_sums: np.ndarray, input_start: int, input_max: np.ndarray,
                    total: float, total_sq: float, maximum: float, pairs: int) -> None:
        """Merge a block already reduced (`reduce_block`, or a kernel's sums over a range of sets), here or on a
        worker: the same operations either way, so the same figures to the bit."""
        offset = set_start - self.window_start
        if offset < 0 or offset + len(set_sums) > len(self.set_sums):  # a new range: the held one is complete
            self._fold()
            self.window_start, self.set_sums, offset = set_start, np.zeros(len(set_sums)), 0
        self.set_sums[offset:offset + len(set_sums)] += set_sums
        window = self.input_max[input_start:input_start + len(input_max)]
        np.maximum(window, input_max, out=window)
        self.total += total
        self.total_sq += total_sq
        self.maximum = max(self.maximum, maximum)
        self.pairs += pairs

    def _fold(self) -> None:
        """The held range's largest sum into the worst set so far."""
        if len(self.set_sums):
            k = int(np.argmax(self.set_sums))
            if self.set_sums[k] > self.best:
                self.best, self.best_rank = float(self.set_sums[k]), self.window_start + k

    def figures(self) -> dict[str, float | int]:
        """Omega_av, its standard deviation over pairs, Omega_mav, Omega_max, Omega_worst_set and its rank."""
        if self.pairs != self.n_sets * self.n_inputs:
            raise RuntimeError(f"only {self.pairs} of {self.n_sets * self.n_inputs} pairs were accumulated")
        self._fold()
        self.set_sums, self.window_start = np.zeros(0), self.n_sets
        mean = self.total / self.pairs
        var = max(0.0, self.total_sq / self.pairs - mean * mean)
        return {"omega_av": mean, "omega_std": math.sqrt(var), "omega_mav": float(self.input_max.mean()),
                "omega_max": self.maximum, "omega_worst_set": self.best / self.n_inputs,
                "worst_rank": self.best_rank}

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that checkpoint this state exactly."""
        return {"set_sums": self.set_sums, "input_max": self.input_max,
                "scalars": np.array([self.total, self.total_sq, self.maximum, self.best], dtype=np.float64),
                "pairs": np.array([self.pairs, self.window_start, self.best_rank, self.n_sets], dtype=np.int64)}

    @staticmethod
    def from_state(state: dict[str, np.ndarray]) -> OmegaAccumulator:
        """Rebuild from `state()`."""
        total, total_sq, maximum, best = (float(v) for v in state["scalars"])
        pairs, window_start, best_rank, n_sets = (int(v) for v in state["pairs"])
        return OmegaAccumulator(n_sets, len(state["input_max"]), state["set_sums"].copy(),
                                state["input_max"].copy(), total, total_sq, maximum, pairs, window_start, best,
                                best_rank)


def reduce_block(d: np.ndarray, set_start: int, input_start: int) -> tuple:
    """What an accumulator keeps of distances d (sets, inputs) for sets set_start… and inputs input_start…:
    the arguments of `OmegaAccumulator.add_reduced`."""
    return (set_start, d.sum(axis=1), input_start, d.max(axis=0), float(d.sum()), float((d * d).sum()),
            float(d.max()), d.size)
