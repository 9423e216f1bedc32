"""The additive engine for exact Omega (SPEC §2.1): one hidden layer and a linear output.

Then F(x) − F_S(x) = Σ_{i∈S} c_i(x) with c_i(x) = w_i^{(2)} y_i(x) ∈ R^m, the contribution of unit i.

Enumeration. A set S = P ∪ {d, i} (P its first f − 2 units, d < i its last two) is split into a prefix P,
enumerated in lexicographic order with incremental partial sums, and the pair (d, i). For one prefix the
rows U_d = Σ_P c + c_d (every d after P) and the columns c_i form a triangle of pairs d < i, covered by
register tiles of 3 rows × 2 columns (and smaller tiles on its edges): a tile loads 5 vectors per output
and input and evaluates 6 sets, where a set at a time loads 2 per set. Sets are visited in lexicographic
order, so that set ranks are computed, not stored.

Silent units. A unit whose contribution is zero on every input of a block (a ReLU unit that never fires
there: the hidden layer of a trained ReLU net is sparse) changes no distance: d(x, S) = d(x, S ∩ L) with L
the block's live units, exactly, since adding ±0 is exact. A block then runs the kernel on its live units
only, for every size k = f − (silent units in S) that occurs, and each of the C(n, f) sets takes the sum of
its live part (`expand`). The sets of size f over n units cost Σ_k C(l, k) distances instead of C(n, f);
`activity_order` orders the inputs so that the inputs of a block share their silent units.

Inputs are processed in chunks of `CHUNK` inputs (the rows and columns of a chunk stay in L1/L2); a block
of inputs is split into `LANES` lanes of consecutive chunks, each lane accumulating its own per-set sums,
per-input maxima and sum of squares, merged in lane order. The lanes run on threads (the kernels release
the GIL; torch is idle meanwhile), and the result does not depend on the number of threads.

The kernels are generated Python source (the tile shapes and the output count m are unrolled, so that each
input loop vectorises with its accumulators in registers), written to a cache folder and compiled by
numba once per (m, norm); numba's on-disk cache keeps them across processes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import math
import os
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

from lesion.crash.engines import NORM_ORDERS

CHUNK = 32  # inputs per kernel chunk
LANES = 4  # lanes per block (fixed, so that results do not depend on the number of threads)
KERNEL_VERSION = 3

# Tiles: name -> (rows, columns, the (row, column) pairs evaluated). `tri` covers the three pairs of rows
# d, d+1 and columns d+1, d+2 with row < column, the corner of a triangle.
_TILES = {
    "full": (3, 2, [(r, c) for r in range(3) for c in range(2)]),
    "col": (3, 1, [(0, 0), (1, 0), (2, 0)]),
    "tri": (2, 2, [(0, 0), (0, 1), (1, 1)]),
    "one": (1, 1, [(0, 0)]),
}


def _accumulate(norm: str, acc: str, expr: str, first: bool) -> str:
    """One output's term of the distance ‖·‖_q, folded into `acc` (q = ∞: max |·|; q = 1: Σ |·|; q = 2: Σ ·²)."""
    if norm == "inf":
        return f"{acc} = abs({expr})" if first else f"{acc} = max({acc}, abs({expr}))"
    if norm == "1":
        return f"{acc} = abs({expr})" if first else f"{acc} += abs({expr})"
    return f"{acc} = ({expr}) ** 2" if first else f"{acc} += ({expr}) ** 2"


def _tile_source(name: str, m: int, rows: int, cols: int, pairs: list[tuple[int, int]], norm: str) -> str:
    """A tile: the distances of rows U[d0 + r] + columns C[i0 + c] for its pairs over the chunk's inputs;
    returns their sums over inputs and the sum of their squares, and raises input_max."""
    lines = ["@numba.njit(cache=True, fastmath=True, nogil=True, boundscheck=False, inline='always')",
             f"def {name}(U, C, d0, i0, nx, input_max):"]
    lines += [f"    u{r} = U[d0 + {r}]" for r in range(rows)]
    lines += [f"    v{c} = C[i0 + {c}]" for c in range(cols)]
    lines += [f"    s{r}{c} = 0.0" for r, c in pairs]
    lines += ["    sq = 0.0", "    for x in range(nx):"]
    for k in range(m):
        lines += [f"        p{r} = u{r}[{k}, x]" for r in range(rows)]
        lines += [f"        q{c} = v{c}[{k}, x]" for c in range(cols)]
        lines += ["        " + _accumulate(norm, f"a{r}{c}", f"p{r} + q{c}", k == 0) for r, c in pairs]
    if norm == "2":
        lines += [f"        a{r}{c} = np.sqrt(a{r}{c})" for r, c in pairs]
    lines += [f"        s{r}{c} += a{r}{c}" for r, c in pairs]
    lines.append("        sq += " + " + ".join(f"a{r}{c} * a{r}{c}" for r, c in pairs))
    largest = "a{}{}".format(*pairs[0])
    for r, c in pairs[1:]:
        largest = f"max({largest}, a{r}{c})"
    lines.append(f"        input_max[x] = max(input_max[x], {largest})")
    lines.append("    return (" + ", ".join(f"s{r}{c}" for r, c in pairs) + ", sq)")
    return "\n".join(lines)


# The set enumeration, the lane kernel and the expansion of live-unit sums (M is the output count,
# substituted). In the lane kernel, for a prefix P (idx[0..p-1], p = f − 2), pair (d, i) has rank
# `off_d + i − d − 1` where off_d = rank of (d, d+1); the rows of one row tile start at o0, o1, o2.
_LANE_SOURCE = '''
@numba.njit(cache=True, nogil=True, boundscheck=False, inline='always')
def next_set(idx, n, p):
    """Advances idx[0..p-1] to the next p-set of range(n) in lexicographic order; returns the first place
    that changed, or -1 after the last set."""
    j = p - 1
    while j >= 0 and idx[j] == n - p + j:
        j -= 1
    if j < 0:
        return -1
    idx[j] += 1
    for t in range(j + 1, p):
        idx[t] = idx[t - 1] + 1
    return j

@numba.njit(cache=True, fastmath=True, nogil=True, boundscheck=False)
def lane(contrib, f, set_sums, input_max, offset):
    """Every set of f units over the lane's inputs, chunk by chunk, each set's contributions added to `offset`
    (M, inputs; zero, or a fixed prefix's sum): adds each set's distances to set_sums[rank], raises input_max;
    returns the sum of squared distances."""
    n, _, width = contrib.shape
    sq = 0.0
    for start in range(0, width, CHUNK):
        stop = min(width, start + CHUNK)
        nx = stop - start
        C = np.ascontiguousarray(contrib[:, :, start:stop])
        imax = input_max[start:stop]
        if f == 1:
            first = np.empty((1, M, nx))
            first[0] = offset[:, start:stop]
            for i in range(n):
                s, q = one(first, C, 0, i, nx, imax)
                set_sums[i] += s
                sq += q
            continue
        p = f - 2
        partial = np.zeros((p + 1, M, nx))
        partial[0] = offset[:, start:stop]
        U = np.empty((n, M, nx))
        idx = np.arange(max(p, 1))
        for t in range(p):
            partial[t + 1] = partial[t] + C[idx[t]]
        rank = 0
        while True:
            base = partial[p]
            lo = idx[p - 1] + 1 if p > 0 else 0
            for d in range(lo, n - 1):
                for k in range(M):
                    for x in range(nx):
                        U[d, k, x] = base[k, x] + C[d, k, x]
            off = rank
            d = lo
            while d + 2 <= n - 2:  # rows d, d+1, d+2, each with a column to its right
                o0 = off
                o1 = o0 + n - 1 - d
                o2 = o1 + n - 2 - d
                t0, t1, t2, tq = tri(U, C, d, d + 1, nx, imax)
                set_sums[o0] += t0
                set_sums[o0 + 1] += t1
                set_sums[o1] += t2
                sq += tq
                i = d + 3
                while i + 2 <= n:
                    r00, r01, r10, r11, r20, r21, rq = full(U, C, d, i, nx, imax)
                    set_sums[o0 + i - d - 1] += r00
                    set_sums[o0 + i - d] += r01
                    set_sums[o1 + i - d - 2] += r10
                    set_sums[o1 + i - d - 1] += r11
                    set_sums[o2 + i - d - 3] += r20
                    set_sums[o2 + i - d - 2] += r21
                    sq += rq
                    i += 2
                if i < n:
                    c0, c1, c2, cq = col(U, C, d, i, nx, imax)
                    set_sums[o0 + i - d - 1] += c0
                    set_sums[o1 + i - d - 2] += c1
                    set_sums[o2 + i - d - 3] += c2
                    sq += cq
                off = o2 + n - 3 - d
                d += 3
            if d == n - 3:
                t0, t1, t2, tq = tri(U, C, d, d + 1, nx, imax)
                set_sums[off] += t0
                set_sums[off + 1] += t1
                set_sums[off + 2] += t2
                sq += tq
            elif d == n - 2:
                s, q = one(U, C, d, d + 1, nx, imax)
                set_sums[off] += s
                sq += q
            remaining = n - lo
            rank += remaining * (remaining - 1) // 2
            if p == 0:
                break
            j = next_set(idx, n - 2, p)  # the prefix leaves two units after it
            if j < 0:
                break
            for t in range(j, p):
                partial[t + 1] = partial[t] + C[idx[t]]
    return sq


@numba.njit(cache=True, nogil=True, boundscheck=False)
def expand(n, f, live_index, n_live, live_sums, offsets, binom, set_sums):
    """set_sums[rank(S)] += live_sums[offsets[k] + rank(S ∩ L)] for every set S of f of the n units in
    lexicographic order, where S ∩ L (k units) is ranked lexicographically among the k-sets of the n_live
    live units (live_index[u] is u's place among them, −1 for a silent unit):
    rank(T) = C(l, k) − 1 − Σ_j C(l − 1 − t_j, k − j + 1) over T's members t_1 < … < t_k."""
    idx = np.arange(f)
    rank = 0
    while True:
        k = 0
        acc = 0
        for j in range(f - 1, -1, -1):
            t = live_index[idx[j]]
            if t >= 0:
                k += 1
                acc += binom[n_live - 1 - t, k]
        set_sums[rank] += live_sums[offsets[k] + binom[n_live, k] - 1 - acc]
        rank += 1
        if next_set(idx, n, f) < 0:
            break
'''


def kernel_source(m: int, norm: str) -> str:
    """The generated module for m outputs and norm q: the tiles and the lane kernel."""
    if norm not in NORM_ORDERS:
        raise ValueError(f"unknown norm {norm!r}")
    parts = ["import numba", "import numpy as np", "", f"M = {m}", f"CHUNK = {CHUNK}", ""]
    for name, (rows, cols, pairs) in _TILES.items():
        parts += [_tile_source(name, m, rows, cols, pairs, norm), ""]
    parts.append(_LANE_SOURCE)
    return "\n".join(parts)


def _cache_dir() -> Path:
    root = os.environ.get("LESION_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lesion")
    path = Path(root) / "kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    if not os.access(path, os.W_OK):
        path = Path(tempfile.gettempdir()) / f"lesion-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"
        path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def kernel_module(m: int, norm: str) -> ModuleType:
    """The compiled module for m outputs and norm q, with `lane` and `expand` (compiled once; cached on disk
    by numba)."""
    source = kernel_source(m, norm)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    name = f"lesion_additive_m{m}_{norm}_{digest}"
    path = _cache_dir() / f"{name}.py"
    if not path.exists():  # the name holds the source's digest
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        tmp.replace(path)  # atomic: concurrent processes see a whole file
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def contributions(hidden: np.ndarray, out_weight: np.ndarray) -> np.ndarray:
    """c_i(x) = w_i^{(2)} y_i(x), laid out (units, outputs, inputs) for the kernel: hidden (inputs, units),
    out_weight (outputs, units), both float64."""
    return np.ascontiguousarray(np.einsum("xu,ku->ukx", hidden, out_weight))


def activity_order(hidden: np.ndarray) -> np.ndarray:
    """An order of the inputs (rows of `hidden`) that groups inputs with the same silent units: sorted by
    their pattern of zero activations, the units most often zero first (so that consecutive blocks of
    inputs share many silent units)."""
    zero = hidden == 0
    units = np.argsort(-zero.mean(axis=0), kind="stable")
    return np.lexsort(zero[:, units].T[::-1])


def silent_per_block(hidden: np.ndarray, block: int) -> list[tuple[int, int]]:
    """(inputs, silent units) of each block of `block` inputs of `hidden` (inputs × units), taken in
    `activity_order`: the blocks the engine runs."""
    zero = hidden[activity_order(hidden)] == 0
    blocks = (zero[i:i + block] for i in range(0, len(zero), block))
    return [(len(part), int(part.all(axis=0).sum())) for part in blocks]


def kernel_pairs(hidden: np.ndarray, f: int, block: int) -> int:
    """The (set, input) pairs whose distance the kernel evaluates for every set of f units over the inputs
    of `hidden` in blocks of `block`: a block of l live units evaluates Σ_k C(l, k) sets over the sizes
    1 ≤ k ≤ f of S ∩ L that occur, where one with no silent unit evaluates C(n, f)."""
    n = hidden.shape[1]
    total = 0
    for inputs, silent in silent_per_block(hidden, block):
        live = n - silent
        total += inputs * sum(math.comb(live, k) for k in range(max(1, f - silent), min(f, live) + 1))
    return total


def _lanes(kernel: Callable, contrib: np.ndarray, f: int, n_sets: int, input_max: np.ndarray,
           threads: int, base: np.ndarray) -> tuple[np.ndarray, float]:
    """Every set of f of contrib's units (added to `base`) over its inputs, in `LANES` lanes merged in lane
    order: the per-set sums and the sum of squared distances; raises input_max."""
    nx = contrib.shape[2]
    per_lane = max(CHUNK, math.ceil(nx / LANES / CHUNK) * CHUNK)
    bounds = [(lo, min(nx, lo + per_lane)) for lo in range(0, nx, per_lane)]

    def one(bound: tuple[int, int]) -> tuple[np.ndarray, float]:
        lo, hi = bound
        sums = np.zeros(n_sets)
        sq = kernel(contrib[:, :, lo:hi], f, sums, input_max[lo:hi], base[:, lo:hi])
        return sums, sq

    if threads > 1 and len(bounds) > 1:
        with ThreadPoolExecutor(max_workers=min(threads, len(bounds))) as pool:
            parts = list(pool.map(one, bounds))
    else:
        parts = [one(b) for b in bounds]
    set_sums = parts[0][0]
    for sums, _ in parts[1:]:
        set_sums += sums
    total_sq = 0.0
    for _, sq in parts:
        total_sq += sq
    return set_sums, total_sq


def run_block(contrib: np.ndarray, f: int, norm: str, n_sets: int, threads: int = 1,
              base: np.ndarray | None = None) -> tuple:
    """Every set of f units over a block of inputs (contrib from `contributions`), on the block's live units
    (see the module's note on silent units), each size in `LANES` lanes run on `threads` threads; with `base`
    (outputs, inputs), the distances are ‖base + Σ_S c‖ (a fixed prefix of the sets, `prefix_groups`). Returns
    the per-set sums (n_sets,), the per-input maxima (inputs,) and [sum, sum of squares, max] over the
    block's pairs."""
    n, m, nx = contrib.shape
    module = kernel_module(m, norm)
    kernel = module.lane
    base = np.zeros((m, nx)) if base is None else np.ascontiguousarray(base, dtype=np.float64)
    input_max = np.zeros(nx)
    live = np.flatnonzero(np.any(contrib != 0, axis=(1, 2)))
    n_live, silent = len(live), n - len(live)
    if silent == 0:
        set_sums, total_sq = _lanes(kernel, contrib, f, n_sets, input_max, threads, base)
    else:
        sizes = range(max(0, f - silent), min(f, n_live) + 1)  # the sizes of S ∩ L that occur
        live_contrib = np.ascontiguousarray(contrib[live])
        # C(a, b) beyond int64 (f of 400 units from f = 11 on) is never read: the ranks read are below C(n_live, k),
        # the count of sets enumerated, so such entries are capped rather than overflowing
        cap = np.iinfo(np.int64).max
        binom = np.array([[min(math.comb(a, b), cap) for b in range(f + 1)] for a in range(n + 1)], dtype=np.int64)
        offsets = np.zeros(f + 2, dtype=np.int64)
        parts, total_sq = [], 0.0
        for k in range(f + 1):
            count = math.comb(n_live, k) if k in sizes else 0
            offsets[k + 1] = offsets[k] + count
            if count == 0:
                continue
            if k == 0:  # the empty live part: d = ‖base‖ (0 without a prefix)
                alone = np.linalg.norm(base, ord=NORM_ORDERS[norm], axis=0)
                np.maximum(input_max, alone, out=input_max)
                parts.append(np.array([alone.sum()]))
                total_sq += math.comb(silent, f) * float((alone * alone).sum())
                continue
            sums, sq = _lanes(kernel, live_contrib, k, count, input_max, threads, base)
            parts.append(sums)
            total_sq += math.comb(silent, f - k) * sq
        live_index = np.full(n, -1, dtype=np.int64)
        live_index[live] = np.arange(n_live)
        set_sums = np.zeros(n_sets)
        module.expand(n, f, live_index, n_live, np.concatenate(parts), offsets, binom, set_sums)
    totals = np.array([float(set_sums.sum()), total_sq, float(input_max.max()) if nx else 0.0])
    return set_sums, input_max, totals


@dataclass(frozen=True)
class PrefixGroup:
    """Consecutive crash sets sharing their first q units, by prefix: sets `start` … `start + count − 1` in
    lexicographic rank, made of each prefix P of `prefixes` (in order) followed by every (f − q)-set of the
    units after P's last."""

    start: int
    count: int
    prefixes: tuple[tuple[int, ...], ...]


def prefix_groups(n: int, f: int, max_sets: int) -> list[PrefixGroup]:
    """The sets of f of n units cut into consecutive rank ranges of at most about `max_sets` sets (a range with
    one prefix may hold more when no shorter prefix divides it): the shortest prefix length q (0 ≤ q < f) whose
    largest range, C(n − q, f − q) sets, fits, then consecutive prefixes grouped while their sets fit. With q = 0
    there is one group of all C(n, f) sets. Every step of an exact run covers one group (issue 18: a step ships
    its range's sums, not every set's)."""
    q = 0
    while q < f - 1 and math.comb(n - q, f - q) > max_sets:
        q += 1
    groups: list[PrefixGroup] = []
    start, count, prefixes = 0, 0, []
    for prefix in itertools.combinations(range(n), q):
        sets = math.comb(n - 1 - prefix[-1], f - q) if q else math.comb(n, f)
        if sets == 0:
            continue
        if prefixes and count + sets > max_sets:
            groups.append(PrefixGroup(start, count, tuple(prefixes)))
            start, count, prefixes = start + count, 0, []
        prefixes.append(prefix)
        count += sets
    if prefixes:
        groups.append(PrefixGroup(start, count, tuple(prefixes)))
    return groups


def run_group(contrib: np.ndarray, f: int, norm: str, group: PrefixGroup, threads: int = 1) -> tuple:
    """`run_block` over the sets of one `PrefixGroup` (prefix by prefix, in order): the group's per-set sums,
    the per-input maxima over its sets, and [sum, sum of squares, max] over its pairs."""
    nx = contrib.shape[2]
    sums, input_max, totals = [], np.zeros(nx), np.zeros(3)
    for prefix in group.prefixes:
        q = len(prefix)
        if q == 0:
            return run_block(contrib, f, norm, group.count, threads)
        base = contrib[prefix[0]].copy()
        for u in prefix[1:]:
            base += contrib[u]
        rest = contrib[prefix[-1] + 1:]
        part_sums, part_max, part_totals = run_block(rest, f - q, norm, math.comb(len(rest), f - q), threads,
                                                     base)
        sums.append(part_sums)
        np.maximum(input_max, part_max, out=input_max)
        totals[:2] += part_totals[:2]
        totals[2] = max(totals[2], part_totals[2])
    return np.concatenate(sums), input_max, totals
