"""The certified worst case of crashes (issue 19): Omega_max, Omega_mav and Omega_worst_set (SPEC §2.1)
bracketed by [lower, upper] for crash budgets too large to enumerate.

- Crashes in the last hidden layer, raw outputs: Omega_max and Omega_mav exact for every f at once
  (`worst_additive`), Omega_worst_set by branch and bound.
- Otherwise (deeper layers, softmax outputs): an upper bound per input by bound propagation (`propagate`,
  `distance_bounds`), tightened by branch and bound over the units on the inputs that decide Omega_max; a
  lower bound from crash sets found by search (`search`: the bound's own maximising sets, greedy, swaps),
  each evaluated exactly. Omega_worst_set: the best common set found against the mean of the per-input
  upper bounds (max_S mean_x d ≤ mean_x max_S d).

Every lower figure is attained by a crash set that was evaluated; every upper figure holds for all crash sets
of the budget on the given inputs (in float64; the ∞-norm only; SPEC §6.3). A figure is exact when its bracket
is closed (`closed`: equal ends up to float64 rounding), the same test for the JSON flags and the printed
text; a budget is exact when all three figures are.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lesion import progress
from lesion.crash.budget import CrashBudget
from lesion.crash.distance_bounds import DistanceBound, distances
from lesion.crash.engines import GeneralEngine
from lesion.crash.omega import exact_omega, plan
from lesion.crash.propagate import CrashPropagation
from lesion.crash.search import greedy, greedy_common, improve
from lesion.crash.structure import MLPStructure, hidden_activations
from lesion.crash.worst_additive import CommonSetResult, CommonSetSearch, per_input_maxima, worst_set_of
from lesion.errors import LesionError

ROOT_BATCH = 64  # nodes bounded at once
SWAP_INPUTS = 16  # inputs whose sets are refined by swaps before branch and bound
ENUMERATE_SHARE = 0.25  # enumerate a budget whose exact run is estimated within this share of the time limit
ENUMERATION_BATCH = 256  # crash sets a step when enumerating


CLOSED_RTOL = 1e-9  # a bracket [lower, upper] is closed (exact) when upper ≤ lower (1 + this) + CLOSED_ATOL
CLOSED_ATOL = 1e-15
_FIGURES = ("omega_max", "omega_mav", "omega_worst_set")


def closed(lower: float, upper: float) -> bool:
    """Whether a bracket is exact: its ends equal up to the rounding of two float64 sums."""
    return upper <= lower * (1 + CLOSED_RTOL) + CLOSED_ATOL


@dataclass(frozen=True)
class WorstCase:
    """The bracketed worst case of one crash budget (keys of issue 19's `crash worst` JSON). `exact`: every
    bracket closed (`closed`); each figure's own flag is `figure_exact` (`omega_max_exact`, ...)."""

    faults: int
    omega_max_lower: float
    omega_max_upper: float
    omega_mav_lower: float
    omega_mav_upper: float
    omega_worst_set_lower: float
    omega_worst_set_upper: float
    worst_set: list[int]
    seconds: float
    omega_max_input: int
    omega_max_set: list[int]
    method: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _FIGURES:  # −0.0 (a negated zero sum) reads as 0
            for end in ("lower", "upper"):
                object.__setattr__(self, f"{name}_{end}", float(getattr(self, f"{name}_{end}")) + 0.0)

    def figure_exact(self, name: str) -> bool:
        """Whether the bracket of `name` (omega_max, omega_mav or omega_worst_set) is closed."""
        return closed(getattr(self, f"{name}_lower"), getattr(self, f"{name}_upper"))

    @property
    def omega_max_exact(self) -> bool:
        """Whether Omega_max is known exactly."""
        return self.figure_exact("omega_max")

    @property
    def omega_mav_exact(self) -> bool:
        """Whether Omega_mav is known exactly."""
        return self.figure_exact("omega_mav")

    @property
    def omega_worst_set_exact(self) -> bool:
        """Whether Omega_worst_set is known exactly (the best common crash set proved)."""
        return self.figure_exact("omega_worst_set")

    @property
    def exact(self) -> bool:
        """Every figure known exactly (Omega_max, Omega_mav and Omega_worst_set)."""
        return all(self.figure_exact(name) for name in _FIGURES)

    @property
    def max_ratio(self) -> float | None:
        """upper / lower of Omega_max: 1 when exact (an exact 0 included), None (n/a) when only the lower end is
        0."""
        if self.omega_max_exact:
            return 1.0
        return self.omega_max_upper / self.omega_max_lower if self.omega_max_lower > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out.pop("extra")
        flags = {f"{name}_exact": self.figure_exact(name) for name in _FIGURES}
        return {**out, "exact": self.exact, **flags, "omega_max_ratio": self.max_ratio, **self.extra}


def worst_case(structure: MLPStructure, x: torch.Tensor, layer: int, faults: list[int], output: str = "raw",
               time_limit: float = 60.0, common_set: bool = True, enumerate_small: bool = True) -> list[WorstCase]:
    """The certified worst case for each crash count in `faults` in hidden `layer` (1-based) on inputs `x`,
    each within about `time_limit` seconds (the best certificate so far when it runs out). Without
    `common_set`, the crash-in-the-last-layer case skips the search for Omega_worst_set (then bracketed by
    [0, Omega_mav]). With `enumerate_small`, a figure whose enumeration is estimated within a quarter of the
    time limit is enumerated instead (exact: gap 0)."""
    if output not in ("raw", "softmax"):
        raise LesionError(f"output must be raw or softmax, got {output!r}")
    if not faults:
        raise LesionError("give at least one crash count")
    width = structure.widths[layer - 1]
    hidden = hidden_activations(structure, x)[layer - 1].numpy()

    def small(f: int, engine: str) -> bool:  # engine: auto (exact_omega's choice) or general
        budget = CrashBudget((layer,), (width,), f)
        estimate = plan(structure, budget, len(x), output, engine, hidden)
        return enumerate_small and estimate.affordable(ENUMERATE_SHARE * time_limit)

    if layer == structure.depth and output == "raw":
        return _additive(structure, x, layer, faults, time_limit, common_set, small)
    return [_enumerated(structure, x, layer, f, output) if small(f, "general")
            else _propagated(structure, x, layer, f, output, time_limit) for f in faults]


def _enumerated(structure: MLPStructure, x: torch.Tensor, layer: int, f: int, output: str) -> WorstCase:
    """Every crash set on every input (the general engine of exact Omega): every figure exact, with the set of
    the worst (input, set) pair."""
    began = time.perf_counter()
    budget = CrashBudget((layer,), (structure.widths[layer - 1],), f)
    engine = GeneralEngine(structure, hidden_activations(structure, x), budget, "inf", output)
    input_max = np.zeros(len(x))
    input_rank = np.zeros(len(x), dtype=np.int64)
    set_means = np.empty(budget.count())
    for start in range(0, budget.count(), ENUMERATION_BATCH):
        sets = budget.sets_at(start, min(ENUMERATION_BATCH, budget.count() - start))
        d = engine.distances(sets)
        set_means[start:start + len(sets)] = d.mean(axis=1)
        best = d.argmax(axis=0)
        value = d[best, np.arange(len(x))]
        higher = value > input_max
        input_max[higher], input_rank[higher] = value[higher], start + best[higher]
    top, worst = int(input_max.argmax()), int(set_means.argmax())
    omega_max, omega_mav, omega_worst = float(input_max[top]), float(input_max.mean()), float(set_means[worst])
    return WorstCase(f, omega_max, omega_max, omega_mav, omega_mav, omega_worst, omega_worst,
                     list(budget.unrank(worst)), time.perf_counter() - began, top,
                     list(budget.unrank(int(input_rank[top]))), "enumeration (small budget)")


def _additive(structure: MLPStructure, x: torch.Tensor, layer: int, faults: list[int], time_limit: float,
              common_set: bool, small: Callable[[int, str], bool]) -> list[WorstCase]:
    prop = CrashPropagation(structure, layer, x, max(faults))
    hidden = prop.hidden.numpy()
    out_weight = prop.weights[layer].numpy()
    started = time.perf_counter()
    maxima = per_input_maxima(hidden, out_weight, faults)
    search = CommonSetSearch(hidden, out_weight) if common_set else None
    greedy_units = search.greedy_order(max(faults)) if search else []
    shared = (time.perf_counter() - started) / len(faults)
    rows = torch.arange(len(x))
    results = []
    with progress.bar(len(faults), f"worst case, layer {layer}", "budget") as bar:
        for f, per_input in zip(faults, maxima, strict=True):
            began = time.perf_counter()
            top = int(per_input.argmax())
            exact_max, exact_mav = float(per_input[top]), float(per_input.mean())
            if search is None:
                common = CommonSetResult(0.0, exact_mav, [], 0, False)
            elif small(f, "auto"):  # Omega_worst_set by the additive engine's enumeration
                exact = exact_omega(structure, x, CrashBudget((layer,), (prop.width,), f), time_limit=None)
                common = CommonSetResult(exact.omega_worst_set, exact.omega_worst_set,
                                         [unit for _, unit in exact.worst_set], 0, True)
            else:
                search.f = prop.faults = f
                start = torch.zeros(prop.width, dtype=torch.bool)
                start[greedy_units[:f]] = True
                deadline = time.monotonic() + time_limit / 2
                units, _ = improve(prop, "raw", rows, start, torch.tensor(search.value(greedy_units[:f]),
                                   dtype=torch.float64), common=True, deadline=deadline)
                chosen = torch.nonzero(units).flatten().tolist()
                common = search.run(chosen, search.value(chosen), max(0.0, time_limit - (time.perf_counter() - began)))
            # a search that proved its set the best: its bound is the set's value, up to the rounding of another sum
            upper = common.lower if common.exact else min(common.upper, exact_mav)
            results.append(WorstCase(
                f, exact_max, exact_max, exact_mav, exact_mav, common.lower, upper,
                common.units, time.perf_counter() - began + shared, top,
                worst_set_of(hidden[top], out_weight, f), "exact (sorted contributions)",
                {"worst_set_nodes": common.nodes}))
            bar.update(1)
    return results


@dataclass(order=True)
class _Node:
    key: float  # −upper bound
    tie: int
    row: int = field(compare=False)
    inside: tuple[int, ...] = field(compare=False)
    outside: tuple[int, ...] = field(compare=False)
    chosen: tuple[int, ...] = field(compare=False)


def _masks(nodes: list[_Node], n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = torch.tensor([node.row for node in nodes], dtype=torch.long)
    inside = torch.zeros(len(nodes), n, dtype=torch.bool)
    outside = torch.zeros(len(nodes), n, dtype=torch.bool)
    for b, node in enumerate(nodes):
        inside[b, list(node.inside)] = True
        outside[b, list(node.outside)] = True
    return rows, inside, outside


def _propagated(structure: MLPStructure, x: torch.Tensor, layer: int, f: int, output: str, time_limit: float
                ) -> WorstCase:
    began = time.perf_counter()
    deadline = time.monotonic() + time_limit
    prop = CrashPropagation(structure, layer, x, f)
    bound = DistanceBound(prop, output)
    n, X = prop.width, len(x)
    everyone = torch.arange(X)
    none = torch.zeros(X, n, dtype=torch.bool)
    # the root: a bound per input, and its maximising set as the first candidate
    upper = torch.empty(X, dtype=torch.float64)
    candidates = torch.empty(X, n, dtype=torch.bool)
    for lo in range(0, X, ROOT_BATCH):
        part = slice(lo, lo + ROOT_BATCH)
        upper[part], candidates[part] = bound(everyone[part], none[part], none[part])
    lower = distances(prop, output, everyone, candidates)
    best_sets = candidates.clone()
    grown, grown_value = greedy(prop, output, everyone)
    better = grown_value > lower
    lower = torch.where(better, grown_value, lower)
    best_sets[better] = grown[better]
    # swaps on the inputs with the largest upper bounds
    top = torch.argsort(upper, descending=True)[:SWAP_INPUTS]
    swap_deadline = time.monotonic() + time_limit / 4
    refined, refined_value = improve(prop, output, top, best_sets[top], lower[top], deadline=swap_deadline)
    lower[top], best_sets[top] = refined_value, refined
    root_max_upper = float(upper.max())
    nodes = _branch_and_bound(prop, bound, output, upper, lower, best_sets, deadline)
    # Omega_worst_set: the best common set found, against the mean of the per-input bounds
    common, common_mean = greedy_common(prop, output, everyone)
    candidates_common = [common, best_sets[int(lower.argmax())]]
    scored = [(float(distances(prop, output, everyone, c.expand(X, -1)).mean()), i)
              for i, c in enumerate(candidates_common)]
    value, which = max(scored)
    units = candidates_common[which]
    units, _ = improve(prop, output, everyone, units, torch.tensor(value, dtype=torch.float64), common=True,
                       deadline=max(deadline, time.monotonic() + 1.0), rounds=3)
    value = float(distances(prop, output, everyone, units.expand(X, -1)).mean())  # the set, evaluated afresh
    top_input = int(lower.argmax())
    return WorstCase(f, float(lower.max()), float(upper.max()), float(lower.mean()), float(upper.mean()),
                     float(value), float(upper.mean()), _units(units), time.perf_counter() - began,
                     top_input, _units(best_sets[top_input]),
                     "bound propagation + branch and bound; search for the lower bound",
                     {"branch_and_bound_nodes": nodes, "root_omega_max_upper": root_max_upper,
                      "bound_exact_at_root": bound.exact})


def _units(mask: torch.Tensor) -> list[int]:
    return sorted(torch.nonzero(mask).flatten().tolist())


def _branch_and_bound(prop: CrashPropagation, bound: DistanceBound, output: str, upper: torch.Tensor,
                      lower: torch.Tensor, best_sets: torch.Tensor, deadline: float) -> int:
    """Refine per-input upper bounds, largest first, by splitting a node on one unit of its maximising set
    (crashed / kept); updates `upper`, `lower` and `best_sets` in place; returns the nodes evaluated."""
    n = prop.width
    tie = itertools.count()
    heap = [_Node(-float(upper[r]), next(tie), r, (), (), ()) for r in range(len(upper))
            if float(upper[r]) > float(lower[r]) * (1 + 1e-9) + 1e-15]
    heapq.heapify(heap)
    open_per_row: dict[int, list[float]] = {}
    for node in heap:
        open_per_row.setdefault(node.row, []).append(-node.key)
    influence = prop.hidden * prop.weights[prop.layer].abs().sum(0)  # |h_i| ‖W_{l+1}[:, i]‖₁ per input
    evaluated = 0
    while heap and time.monotonic() < deadline:
        batch = [heapq.heappop(heap) for _ in range(min(ROOT_BATCH // 2, len(heap)))]
        children = []
        for node in batch:
            open_per_row[node.row].remove(-node.key)
            if -node.key <= float(lower[node.row]) * (1 + 1e-9):
                continue
            free = [u for u in (node.chosen or range(n)) if u not in node.inside and u not in node.outside]
            if not free:
                free = [u for u in range(n) if u not in node.inside and u not in node.outside]
            unit = max(free, key=lambda u: float(influence[node.row, u]))
            if len(node.inside) < prop.faults:
                children.append(_Node(node.key, 0, node.row, (*node.inside, unit), node.outside, ()))
            if n - len(node.inside) - len(node.outside) - 1 >= prop.faults - len(node.inside):
                children.append(_Node(node.key, 0, node.row, node.inside, (*node.outside, unit), ()))
        if children:
            rows, inside, outside = _masks(children, n)
            value, sets = bound(rows, inside, outside)
            exact_d = distances(prop, output, rows, sets)
            evaluated += len(children)
            value = torch.minimum(value, torch.tensor([-c.key for c in children], dtype=torch.float64))
            for b, child in enumerate(children):  # a child's sets are among its parent's: min of both bounds
                r = child.row
                if float(exact_d[b]) > float(lower[r]):
                    lower[r], best_sets[r] = exact_d[b], sets[b]
                if float(value[b]) > float(lower[r]) * (1 + 1e-9) + 1e-15:
                    child.key, child.tie = -float(value[b]), next(tie)
                    child.chosen = tuple(torch.nonzero(sets[b]).flatten().tolist())
                    heapq.heappush(heap, child)
                    open_per_row.setdefault(r, []).append(float(value[b]))
        for node in batch:
            r = node.row
            still = open_per_row.get(r, [])
            upper[r] = max([float(lower[r]), *still])
    return evaluated
