"""Exact worst cases of the additive case (issue 19, item 1): crashes in the last hidden layer, raw outputs.

There F(x) − F_S(x) = Σ_{i∈S} c_i(x) with c_i(x) = w_i^{(L+1)} y_i(x) (SPEC §2.1), so for each input and
output k the largest |Σ_{i∈S} c_ik| over the sets of f units is the larger of the sum of the f largest c_ik
and minus the sum of the f smallest. One sort of the N contributions per (input, output) gives it for every
f at once: Omega_max(f) = max_x max_S d(x, S) and Omega_mav(f) = mean_x max_S d(x, S), exactly, with the
worst set of every input (the f units at the chosen end of the sorted order), in O(N log N) per input and
output instead of C(N, f).

Omega_worst_set = max_S mean_x d(x, S) does not separate over inputs: `CommonSetSearch` finds it by branch
and bound over units (include / exclude), bounding a node by the mean over inputs of each input's own best
completion (per-input sorted sums), with the incumbent from greedy search and swaps; when time runs out,
the gap between the incumbent and the largest open bound is reported.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass

import numpy as np

CHUNK = 4096  # inputs sorted at once


def contributions(hidden: np.ndarray, out_weight: np.ndarray) -> np.ndarray:
    """c[x, k, i] = w_{k,i} · y_i(x): hidden (X, N), out_weight (m, N) → (X, m, N), float64."""
    return hidden[:, None, :] * out_weight[None, :, :]


def per_input_maxima(hidden: np.ndarray, out_weight: np.ndarray, faults: list[int]) -> np.ndarray:
    """max over sets of f units of d(x, S) (∞-norm, raw outputs) for every input and every f in `faults`:
    (len(faults), X), exact."""
    n = hidden.shape[1]
    f = np.asarray(faults)
    out = np.empty((len(f), len(hidden)))
    for lo in range(0, len(hidden), CHUNK):
        c = np.sort(contributions(hidden[lo:lo + CHUNK], out_weight), axis=-1)  # ascending
        cum = np.cumsum(c, axis=-1)
        total = cum[..., -1:]
        low = cum[..., f - 1]  # sum of the f smallest
        above = np.where(f < n, f, 0)
        high = total - np.where(f < n, cum[..., n - above - 1], 0.0)  # sum of the f largest
        out[:, lo:lo + CHUNK] = np.maximum(high, -low).max(axis=1).T
    return out


def worst_set_of(hidden_row: np.ndarray, out_weight: np.ndarray, f: int) -> list[int]:
    """The set of f units attaining max_S d(x, S) for one input (hidden_row (N,))."""
    c = contributions(hidden_row[None], out_weight)[0]  # (m, N)
    order = np.argsort(c, axis=-1, kind="stable")
    ends = np.take_along_axis(c, order, -1)
    high = ends[:, -f:].sum(-1)
    low = ends[:, :f].sum(-1)
    k = int(np.argmax(np.maximum(high, -low)))
    units = order[k, -f:] if high[k] >= -low[k] else order[k, :f]
    return sorted(int(u) for u in units)


@dataclass
class CommonSetResult:
    """Omega_worst_set bracketed: `lower` is attained by `units`; `upper` holds for every set."""

    lower: float
    upper: float
    units: list[int]
    nodes: int
    exact: bool


class CommonSetSearch:
    """max over sets S of f units of mean_x ‖Σ_{i∈S} c_i(x)‖∞, by branch and bound (see the module note)."""

    def __init__(self, hidden: np.ndarray, out_weight: np.ndarray, f: int = 1) -> None:
        self.c = contributions(hidden, out_weight)  # (X, m, N)
        self.n, self.f = hidden.shape[1], f  # f: the budget `bound` and `run` work on (settable)
        order = np.argsort(-self.c, axis=-1, kind="stable")  # descending per (x, k), shared by every f
        self.order = order
        self.sorted = np.take_along_axis(self.c, order, -1)
        strength = np.abs(self.c).max(axis=1).mean(axis=0)
        self.branch_order = [int(u) for u in np.argsort(-strength, kind="stable")]

    def greedy_order(self, steps: int) -> list[int]:
        """Units in the order greedy search adds them (each raising mean_x d most): the greedy set of every f
        ≤ `steps` is a prefix."""
        partial = np.zeros(self.c.shape[:2])
        taken: list[int] = []
        for _ in range(steps):
            gain = np.abs(partial[:, :, None] + self.c).max(axis=1).mean(axis=0)
            gain[taken] = -np.inf
            unit = int(np.argmax(gain))
            taken.append(unit)
            partial += self.c[:, :, unit]
        return taken

    def value(self, units: list[int]) -> float:
        """mean_x d(x, S) for the set `units`."""
        return float(np.abs(self.c[:, :, units].sum(-1)).max(-1).mean())

    def bound(self, inside: list[int], outside: set[int]) -> float:
        """mean over inputs of max over completions of the node (its own per input): an upper bound."""
        r = self.f - len(inside)
        fixed = self.c[:, :, inside].sum(-1) if inside else np.zeros(self.c.shape[:2])
        if r == 0:
            return float(np.abs(fixed).max(-1).mean())
        free = np.ones(self.n, dtype=bool)
        free[list(inside)] = False
        free[list(outside)] = False
        free_sorted = free[self.order]
        top = np.where(free_sorted & (np.cumsum(free_sorted, -1) <= r), self.sorted, 0.0).sum(-1)
        tail = free_sorted[..., ::-1]
        bottom = np.where(tail & (np.cumsum(tail, -1) <= r), self.sorted[..., ::-1], 0.0).sum(-1)
        return float(np.maximum(fixed + top, -(fixed + bottom)).max(-1).mean())

    def run(self, incumbent: list[int], incumbent_value: float, time_limit: float) -> CommonSetResult:
        """Branch and bound from the incumbent set, best bound first, until closed or `time_limit` seconds."""
        deadline = time.monotonic() + time_limit
        best_units, best = list(incumbent), incumbent_value
        tie = itertools.count()
        root = self.bound([], set())
        heap = [(-root, next(tie), [], frozenset())]
        nodes = 1
        tolerance = 1e-12 * max(1.0, abs(root))
        while heap:
            top_bound = -heap[0][0]
            if top_bound <= best + tolerance or time.monotonic() > deadline:
                break
            _, _, inside, outside = heapq.heappop(heap)
            unit = next(u for u in self.branch_order if u not in inside and u not in outside)
            children = []
            if len(inside) < self.f:
                children.append((sorted([*inside, unit]), outside))
            if self.n - len(inside) - len(outside) - 1 >= self.f - len(inside):
                children.append((inside, outside | {unit}))
            for child_in, child_out in children:
                nodes += 1
                free = self.n - len(child_in) - len(child_out)
                if len(child_in) == self.f or free == self.f - len(child_in):
                    units = child_in if len(child_in) == self.f else sorted(
                        set(range(self.n)) - set(child_out))
                    value = self.value(units)
                    if value > best:
                        best, best_units = value, units
                    continue
                b = self.bound(child_in, set(child_out))
                if b > best + tolerance:
                    heapq.heappush(heap, (-b, next(tie), child_in, child_out))
        upper = max(best, -heap[0][0]) if heap else best
        return CommonSetResult(best, upper, sorted(best_units), nodes, not heap or upper <= best + tolerance)
