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
    """Running state of an exact Omega computation for `n_sets` sets over `n_inputs` inputs."""

    n_sets: int
    n_inputs: int
    set_sums: np.ndarray = field(default=None)  # type: ignore[assignment]
    input_max: np.ndarray = field(default=None)  # type: ignore[assignment]
    total: float = 0.0
    total_sq: float = 0.0
    maximum: float = 0.0
    pairs: int = 0

    def __post_init__(self) -> None:
        if self.set_sums is None:
            self.set_sums = np.zeros(self.n_sets, dtype=np.float64)
        if self.input_max is None:
            self.input_max = np.zeros(self.n_inputs, dtype=np.float64)

    def add_block(self, d: np.ndarray, set_start: int, input_start: int) -> None:
        """Merge distances d(x, S) of shape (sets, inputs) for sets set_start… and inputs input_start…"""
        self.add_reduced(*reduce_block(d, set_start, input_start))

    def add_reduced(self, set_start: int, set_sums: np.ndarray, input_start: int, input_max: np.ndarray,
                    total: float, total_sq: float, maximum: float, pairs: int) -> None:
        """Merge a block already reduced (`reduce_block`, or a kernel's sums over every set, set_start 0),
        here or on a worker: the same operations either way, so the same figures to the bit."""
        self.set_sums[set_start:set_start + len(set_sums)] += set_sums
        window = self.input_max[input_start:input_start + len(input_max)]
        np.maximum(window, input_max, out=window)
        self.total += total
        self.total_sq += total_sq
        self.maximum = max(self.maximum, maximum)
        self.pairs += pairs

    def figures(self) -> dict[str, float | int]:
        """Omega_av, its standard deviation over pairs, Omega_mav, Omega_max, Omega_worst_set and its rank."""
        if self.pairs != self.n_sets * self.n_inputs:
            raise RuntimeError(f"only {self.pairs} of {self.n_sets * self.n_inputs} pairs were accumulated")
        mean = self.total / self.pairs
        var = max(0.0, self.total_sq / self.pairs - mean * mean)
        worst = int(np.argmax(self.set_sums))
        return {"omega_av": mean, "omega_std": math.sqrt(var), "omega_mav": float(self.input_max.mean()),
                "omega_max": self.maximum, "omega_worst_set": float(self.set_sums[worst] / self.n_inputs),
                "worst_rank": worst}

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that checkpoint this state exactly."""
        return {"set_sums": self.set_sums, "input_max": self.input_max,
                "scalars": np.array([self.total, self.total_sq, self.maximum], dtype=np.float64),
                "pairs": np.array([self.pairs], dtype=np.int64)}

    @staticmethod
    def from_state(state: dict[str, np.ndarray]) -> OmegaAccumulator:
        """Rebuild from `state()`."""
        total, total_sq, maximum = (float(v) for v in state["scalars"])
        return OmegaAccumulator(len(state["set_sums"]), len(state["input_max"]), state["set_sums"].copy(),
                                state["input_max"].copy(), total, total_sq, maximum, int(state["pairs"][0]))


def reduce_block(d: np.ndarray, set_start: int, input_start: int) -> tuple:
    """What an accumulator keeps of distances d (sets, inputs) for sets set_start… and inputs input_start…:
    the arguments of `OmegaAccumulator.add_reduced`."""
    return (set_start, d.sum(axis=1), input_start, d.max(axis=0), float(d.sum()), float((d * d).sum()),
            float(d.max()), d.size)
