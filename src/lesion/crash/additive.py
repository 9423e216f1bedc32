"""The additive engine for exact Omega (SPEC §2.1): one hidden layer and a linear output.

Then F(x) − F_S(x) = Σ_{i∈S} c_i(x) with c_i(x) = w_i^{(2)} y_i(x) ∈ R^m, the contribution of unit i. Sets
are enumerated in lexicographic order with incremental partial sums: the sum over the first f − 1 units of
a set is kept, so each set costs one m-vector addition per input. Inputs are processed in chunks small
enough that the chunk's contributions stay in the CPU cache, several chunks in parallel; each chunk reduces
to per-set sums, per-input maxima and scalar totals, merged in chunk order (bit-identical for a given chunk
size, whatever the number of threads).

The kernel is compiled (numba) with the output dimension as a constant, so that its loop over inputs
vectorises; it releases the GIL and chunks run on as many threads as torch is allowed (torch is idle then).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numba
import numpy as np

NORMS = {"inf": 0, "1": 1, "2": 2}
# Full fast-math: contributions are finite (validated weights), so sums and maxima may be reordered and the
# loops over inputs vectorise. The order is fixed by the compiled code, so results repeat bit for bit.
_FAST = True


@cache
def _kernel(M: int) -> Callable:
    """The chunk kernel for M outputs (a compile-time constant: the loop over outputs unrolls and the loop
    over inputs vectorises). It releases the GIL, so chunks run in parallel threads."""

    @numba.njit(cache=True, fastmath=_FAST, nogil=True)
    def distances(base: np.ndarray, ci: np.ndarray, norm: int, out: np.ndarray) -> None:
        """out[x] = ‖base[:, x] + ci[:, x]‖ over the M outputs."""
        nx = out.shape[0]
        if norm == 0:
            for x in range(nx):
                acc = 0.0
                for k in range(M):
                    a = abs(base[k, x] + ci[k, x])
                    acc = a if a > acc else acc
                out[x] = acc
        elif norm == 1:
            for x in range(nx):
                acc = 0.0
                for k in range(M):
                    acc += abs(base[k, x] + ci[k, x])
                out[x] = acc
        else:
            for x in range(nx):
                acc = 0.0
                for k in range(M):
                    v = base[k, x] + ci[k, x]
                    acc += v * v
                out[x] = np.sqrt(acc)

    @numba.njit(cache=True, fastmath=_FAST, nogil=True)
    def reduce_row(d: np.ndarray, input_max: np.ndarray) -> tuple:
        """(Σ d, Σ d²) of one set's distances; input_max[x] ← max(input_max[x], d[x])."""
        total = 0.0
        total_sq = 0.0
        for x in range(d.shape[0]):
            v = d[x]
            total += v
            total_sq += v * v
            input_max[x] = v if v > input_max[x] else input_max[x]
        return total, total_sq

    @numba.njit(cache=True, fastmath=_FAST, nogil=True, boundscheck=False)
    def chunk(contrib: np.ndarray, f: int, norm: int, set_sums: np.ndarray, input_max: np.ndarray) -> np.ndarray:
        n, _, nx = contrib.shape
        partial = np.zeros((f, M, nx))  # partial[t + 1] = Σ contributions of idx[0..t]; partial[0] = 0
        d = np.zeros(nx)
        idx = np.arange(f)
        for t in range(f - 1):
            partial[t + 1] = partial[t] + contrib[idx[t]]
        total = 0.0
        total_sq = 0.0
        rank = 0
        while True:
            base = partial[f - 1]
            for i in range(idx[f - 2] + 1 if f >= 2 else 0, n):
                distances(base, contrib[i], norm, d)
                row_total, row_sq = reduce_row(d, input_max)
                total += row_total
                total_sq += row_sq
                set_sums[rank] += row_total
                rank += 1
            j = f - 2  # next prefix idx[0..f-2]; idx[j] is at most n - f + j
            while j >= 0 and idx[j] == n - f + j:
                j -= 1
            if j < 0:
                break
            idx[j] += 1
            for t in range(j + 1, f - 1):
                idx[t] = idx[t - 1] + 1
            for t in range(j, f - 1):
                partial[t + 1] = partial[t] + contrib[idx[t]]
        out = np.empty(3)
        out[0] = total
        out[1] = total_sq
        out[2] = input_max.max()  # the largest distance of the chunk: its per-input maxima hold it
        return out

    return chunk


def contributions(hidden: np.ndarray, out_weight: np.ndarray) -> np.ndarray:
    """c_i(x) = w_i^{(2)} y_i(x), laid out (units, outputs, inputs) for the kernel: hidden (inputs, units),
    out_weight (outputs, units), both float64."""
    return np.ascontiguousarray(np.einsum("xu,ku->ukx", hidden, out_weight))


def run_block(contrib: np.ndarray, f: int, norm: str, n_sets: int, chunk: int, threads: int = 1) -> tuple:
    """Every set of f units over a block of inputs (contrib from `contributions`), split into chunks of
    `chunk` inputs run on `threads` threads. Returns the per-set sums (n_sets,), the per-input maxima
    (inputs,) and [sum, sum of squares, max] over the block's pairs, merged in chunk order."""
    kernel = _kernel(contrib.shape[1])
    nx = contrib.shape[2]
    bounds = [(lo, min(nx, lo + chunk)) for lo in range(0, nx, chunk)]
    input_max = np.zeros(nx)

    def one(bound: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = bound
        sums = np.zeros(n_sets)
        scalars = kernel(np.ascontiguousarray(contrib[:, :, lo:hi]), f, NORMS[norm], sums, input_max[lo:hi])
        return sums, scalars

    if threads > 1 and len(bounds) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = list(pool.map(one, bounds))
    else:
        parts = [one(b) for b in bounds]
    set_sums = np.zeros(n_sets)
    totals = np.zeros(3)
    for sums, scalars in parts:
        set_sums += sums
        totals[0] += scalars[0]
        totals[1] += scalars[1]
        totals[2] = max(totals[2], scalars[2])
    return set_sums, input_max, totals
