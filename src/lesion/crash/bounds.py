"""The analytical crash bound Erf and its average version Erf_av ([R] Eq. 4, Theorem 2; SPEC §2.2).

    Erf = Σ_{l=1}^{L} C_l · f_l · K^{L−l} · w_m^{(L+1)} · Π_{l'=l+1}^{L} (N_{l'} − f_{l'}) · w_m^{(l')}

w_m^{(l)} = max |w| over the weights entering layer l (biases excluded); Erf_av uses w_av^{(l)} = mean |w|
over that layer's weights instead. Every term is summed in log space, so products that overflow a float
are still reported (as log10 values; the plain value is then inf).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from lesion.crash.propagate import is_monotone
from lesion.crash.structure import MLPStructure, hidden_activations
from lesion.errors import LesionError


@dataclass(frozen=True)
class OutputBounds:
    """C_1 … C_L and where they came from."""

    values: tuple[float, ...]
    source: str  # activation | measured | interval | given
    data_dependent: bool


def output_bounds(structure: MLPStructure, x: torch.Tensor | None = None, given: Sequence[float] | None = None,
                  box: tuple[float, float] | None = None) -> OutputBounds:
    """C_l = max |y| of a unit of layer l (SPEC §2.2).

    Order of preference: `given` values; the bound of every layer's activation if all are bounded (1 for sigmoid
    and tanh, max(|min|, |max|) for Hardtanh and ReLU6);
    the maximum observed on inputs `x` (data-dependent: the bound then holds on those inputs); an interval
    propagation of the input box [lo, hi]^d through the network (data-free and sound).
    """
    depth = structure.depth
    if given is not None:
        values = tuple(float(c) for c in given)
        if len(values) == 1:
            values *= depth
        if len(values) != depth or min(values) < 0:
            raise LesionError(f"give one C ≥ 0, or one per hidden layer ({depth})")
        return OutputBounds(values, "given", False)
    bounded = structure.bounded_outputs()
    if all(b is not None for b in bounded):
        return OutputBounds(tuple(float(b) for b in bounded), "activation", False)
    if x is not None:
        acts = hidden_activations(structure, x)[:-1]
        measured = tuple(float(a.abs().max()) if a.numel() else 0.0 for a in acts)
        values = tuple(m if b is None else b for m, b in zip(measured, bounded, strict=True))
        return OutputBounds(values, "measured", True)
    if box is not None:
        return OutputBounds(_interval_bounds(structure, box), "interval", False)
    raise LesionError("the activation is unbounded (ReLU): C needs --data (measured maximum, data-dependent), an "
                      "input range (--input-range LO,HI) or given values (--C)")


def _interval_bounds(structure: MLPStructure, box: tuple[float, float]) -> tuple[float, ...]:
    """max |y| per hidden layer over all inputs in [lo, hi]^d, by interval arithmetic (activations are
    monotone non-decreasing)."""
    lo_in, hi_in = box
    d = structure.weights[0].shape[1]
    lower = torch.full((d,), float(lo_in), dtype=torch.float64)
    upper = torch.full((d,), float(hi_in), dtype=torch.float64)
    values = []
    for layer in range(structure.depth):
        weight = structure.weights[layer].double()
        bias = structure.biases[layer]
        centre, radius = (upper + lower) / 2, (upper - lower) / 2
        mid = weight @ centre + (0 if bias is None else bias.double())
        spread = weight.abs() @ radius
        act = structure.activations[layer]
        if not is_monotone(act):
            raise LesionError(f"an input range bounds C only through monotone activations; {act} is not: "
                              "measure C on data instead (--data)")
        with torch.no_grad():
            lower, upper = act(mid - spread), act(mid + spread)
        values.append(float(torch.maximum(lower.abs(), upper.abs()).max()))
    return tuple(values)


def weight_scales(structure: MLPStructure) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(w_m^{(l)}, w_av^{(l)}) for l = 1..L+1: max and mean |w| over the weights entering layer l."""
    maxima = tuple(float(w.abs().max()) for w in structure.weights)
    means = tuple(float(w.abs().double().mean()) for w in structure.weights)
    return maxima, means


def log_erf(faults: Sequence[int], widths: Sequence[int], K: float, C: Sequence[float],
            scales: Sequence[float]) -> float:
    """Natural log of Erf (SPEC §2.2) for per-layer crash counts `faults` (f_1 … f_L), layer widths N_l, the
    Lipschitz constant, output bounds C_l and per-layer weight scales w^{(1)} … w^{(L+1)}; −inf when 0."""
    depth = len(widths)
    if len(faults) != depth or len(C) != depth or len(scales) != depth + 1:
        raise ValueError("faults, widths, C and scales must describe the same network")
    for f, n in zip(faults, widths, strict=True):
        if not 0 <= f <= n:
            raise LesionError(f"cannot crash {f} of {n} units")
    terms = []
    for l in range(depth):  # 0-based layer l is [R]'s layer l + 1
        if faults[l] == 0 or C[l] == 0:
            continue
        factors = [C[l], faults[l], scales[depth]]
        for later in range(l + 1, depth):
            factors += [widths[later] - faults[later], scales[later]]
        if min(factors) <= 0:
            continue
        terms.append(sum(math.log(v) for v in factors) + (depth - 1 - l) * math.log(K))
    if not terms:
        return -math.inf
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


@dataclass(frozen=True)
class BoundResult:
    """Erf and Erf_av for one crash budget, with everything they were computed from."""

    faults: tuple[int, ...]
    erf: float
    erf_av: float
    log10_erf: float
    log10_erf_av: float
    K: float
    C: tuple[float, ...]
    C_source: str
    data_dependent: bool
    w_max: tuple[float, ...]
    w_av: tuple[float, ...]
    widths: tuple[int, ...]

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)


def _exp(log_value: float) -> float:
    if log_value == -math.inf:
        return 0.0
    return math.exp(log_value) if log_value < 709.0 else math.inf


def crash_bound(structure: MLPStructure, faults: Sequence[int], C: OutputBounds, K: float | None = None
                ) -> BoundResult:
    """Erf and Erf_av (SPEC §2.2) for per-layer crash counts `faults`."""
    k = structure.lipschitz(K)
    w_max, w_av = weight_scales(structure)
    widths = structure.widths
    log_max = log_erf(faults, widths, k, C.values, w_max)
    log_av = log_erf(faults, widths, k, C.values, w_av)
    return BoundResult(tuple(int(f) for f in faults), _exp(log_max), _exp(log_av), log_max / math.log(10),
                       log_av / math.log(10), k, C.values, C.source, C.data_dependent, w_max, w_av, widths)


def splits(total: int, layers: Sequence[int], widths: Sequence[int]) -> list[tuple[int, ...]]:
    """Every way to place `total` crashes among the hidden `layers` (1-based), as per-layer counts."""
    out = []
    for counts in itertools.product(*[range(min(total, widths[l - 1]) + 1) for l in layers]):
        if sum(counts) == total:
            faults = [0] * len(widths)
            for layer, count in zip(layers, counts, strict=True):
                faults[layer - 1] = count
            out.append(tuple(faults))
    if not out:
        raise LesionError(f"{total} crashes do not fit in layers {list(layers)} of widths {list(widths)}")
    return out


def budget_bound(structure: MLPStructure, total: int, layers: Sequence[int], C: OutputBounds,
                 K: float | None = None) -> BoundResult:
    """Erf and Erf_av for `total` crashes anywhere in `layers`: the largest over the ways to split them
    (worst case over placements; with one layer, the plain bound)."""
    results = [crash_bound(structure, f, C, K) for f in splits(total, layers, structure.widths)]
    worst = max(results, key=lambda r: r.log10_erf)
    worst_av = max(results, key=lambda r: r.log10_erf_av)
    return BoundResult(worst.faults, worst.erf, worst_av.erf_av, worst.log10_erf, worst_av.log10_erf_av, worst.K,
                       worst.C, worst.C_source, worst.data_dependent, worst.w_max, worst.w_av, worst.widths)
