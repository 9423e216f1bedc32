"""Deletion curves and break-down points ([G] §4, Fig. 3A/B; SPEC §3.5).

Accuracy as a growing fraction of the units of one layer is deleted (crashed: output 0), in three orders:
random (several seeded orders, mean and Student-t interval over them), smallest incoming-weight norm first,
and most harmful first by the metric (unit i ranked by d_iᵀ g d_i, d_i the weight change that deletes it).
The break-down point is the smallest fraction whose mean accuracy falls below a share of clean accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lesion.damage import Explicit, HeadCrash, Target, UnitCrash, batched_damaged_outputs, realise
from lesion.errors import LesionError
from lesion.geometry.damage_set import unit_damage_set
from lesion.geometry.metric import MetricOperator
from lesion.sites.modules import unit_rows
from lesion.stats import clipped_interval
from lesion.train import evaluate_outputs

ORDERS = ("random", "magnitude", "metric")


@dataclass(frozen=True)
class DeletionCurve:
    """Accuracy against the fraction of deleted units of one layer, for one order."""

    layer: str
    order: str
    fractions: list[float]
    accuracy: list[float]
    accuracy_ci: list[list[float]]
    clean_accuracy: float
    breakdown_fraction: float | None
    share: float
    orders: int
    units: int
    inputs: int
    per_order: list[list[float]] = field(default_factory=list)
    kind: str = ""  # the site's kind (`attention-head`: the units are heads)

    @property
    def unit_word(self) -> str:
        """What one of the site's units is: a head or a unit."""
        return "heads" if self.kind == "attention-head" else "units"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def unit_order(model: nn.Module, layer: str, order: str, rng: np.random.Generator,
               x_analysis: torch.Tensor | None = None) -> list[int]:
    """The order in which the units of `layer` are deleted."""
    target = Target(model, example=x_analysis)
    site = target.site(layer, None)
    if order == "random":
        return rng.permutation(site.width).tolist()
    if site.kind == "attention-head" and order in ORDERS:
        raise LesionError(f"{site.name} is a site of attention heads: only the random order deletes heads")
    if order == "magnitude":
        if site.layer is None:
            raise LesionError(f"{site.name} has no layer of its own: the magnitude order needs one")
        weight = target.base[f"{site.layer}.weight"]
        rows_axis = unit_rows(dict(model.named_modules())[site.layer])[1]
        norms = weight.movedim(rows_axis, 0).reshape(weight.shape[rows_axis], -1).norm(dim=1)
        return torch.argsort(norms, stable=True).tolist()
    if order == "metric":
        if x_analysis is None:
            raise LesionError("the metric order needs analysis inputs")
        op = MetricOperator(model, x_analysis)
        harm = []
        for unit in range(site.width):
            d = torch.zeros_like(op.weights)
            idx = unit_damage_set(model, layer, Explicit((unit,)), torch.Generator(), target=target,
                                  check=unit == 0).indices  # the site's readers are the same for every unit
            d[idx] = -op.weights[idx]
            harm.append(op.quadratic(d))
        return np.argsort(harm)[::-1].tolist()
    raise LesionError(f"unknown order {order!r}: {', '.join(ORDERS)}")


def nearest_count(fraction: float, width: int) -> int:
    """The number of units nearest fraction·width, halves rounded up (Python's round sends 2.5 to 2)."""
    return min(width, max(0, math.floor(fraction * width + 0.5 + 1e-9)))


def deletion_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str,
                   fractions: Sequence[float] = tuple(np.linspace(0, 1, 11)), order: str = "random",
                   orders: int = 5, share: float = 0.9, seed: int = 0,
                   x_analysis: torch.Tensor | None = None, executor: Any = None) -> DeletionCurve:
    """Accuracy on (x, y) with the first k units of the order deleted, k the count nearest f·N (halves up), for
    each fraction f; the curve's fractions are those deleted, k/N, once each (a 5-unit layer asked for 0.3, 0.4
    and 0.5 deletes 2, 2 and 3 units: the points 0.4 and 0.6). The orders are drawn here; with a Ray `executor`
    (`lesion.scale.ray_executor.RayPool`) each order's curve is evaluated on a worker holding the model and
    inputs (`DeletionWorker`), the same numbers as here (issue 18)."""
    rng = np.random.default_rng(seed)
    target = Target(model, example=x)
    site = target.site(layer, None)
    fractions = [count / site.width for count in dict.fromkeys(nearest_count(f, site.width) for f in fractions)]
    runs = orders if order == "random" else 1
    clean = evaluate_outputs(batched_damaged_outputs(model, [realise(target, [], torch.Generator())], x)[0], y)
    sequences = [unit_order(model, layer, order, rng, x if x_analysis is None else x_analysis) for _ in range(runs)]
    jobs = [(layer, [int(u) for u in sequence], [float(f) for f in fractions], order) for sequence in sequences]
    if executor is not None and hasattr(executor, "ordered"):
        executor.start(DeletionWorker, (model, x, y), len(jobs))
        per_order = [accuracies for _, accuracies in executor.ordered("accuracies", jobs)]
    else:
        per_order = [order_accuracies(model, target, x, y, *job) for job in jobs]
    table = np.asarray(per_order)
    means = table.mean(axis=0).tolist()
    cis = [list(clipped_interval(list(col))) for col in table.T]
    below = [f for f, a in zip(fractions, means, strict=True) if a < share * clean.accuracy]
    return DeletionCurve(site.name, order, [float(f) for f in fractions], means, cis, clean.accuracy,
                         float(below[0]) if below else None, share, runs, site.width, len(x), table.tolist(),
                         site.kind)


def order_accuracies(model: nn.Module, target: Target, x: torch.Tensor, y: torch.Tensor, layer: str,
                     sequence: Sequence[int], fractions: Sequence[float], order: str = "random") -> list[float]:
    """Accuracy with the first `nearest_count(f, N)` units of `sequence` crashed, for each fraction f (one
    deletion order); at a site of attention heads, the first heads of the sequence (`HeadCrash`, SPEC §6.1)."""
    site = target.site(layer, None)
    kind = HeadCrash if site.kind == "attention-head" else UnitCrash
    configs = []
    for f in fractions:
        count = nearest_count(f, site.width)
        damage = [kind(layer, Explicit(tuple(sequence[:count])))] if count else []
        configs.append(realise(target, damage, torch.Generator()))
    outputs = batched_damaged_outputs(model, configs, x, desc=f"deletion ({order})")
    return [evaluate_outputs(o, y).accuracy for o in outputs]


class DeletionWorker:
    """Deletion orders on one Ray worker: its own copy of the model and inputs (shipped once), evaluating one
    order's curve per call (`order_accuracies`)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threads: int) -> None:
        import os

        torch.set_num_threads(threads)
        os.environ.setdefault("LESION_NO_PROGRESS", "1")
        self.model, self.x, self.y = model, x, y
        self.target = Target(model, example=x)

    def pid(self) -> int:
        """The worker's process id."""
        import os

        return os.getpid()

    def accuracies(self, layer: str, sequence: list[int], fractions: list[float], order: str) -> list[float]:
        """One order's accuracies (`order_accuracies`)."""
        return order_accuracies(self.model, self.target, self.x, self.y, layer, sequence, fractions, order)


@dataclass(frozen=True)
class PathProfileResult:
    """Geometry along one progressive deletion path: at fraction t the first ⌈tN⌉ units of the order are
    gone and the next one is being scaled down (γ' = −N·its weights, γ'' = 0 inside a segment)."""

    t: list[float]
    speed: list[float]
    acceleration: list[float]
    covariant_acceleration: list[float]
    accuracy: list[float]
    predicted_breakdown: float | None
    order_seed: int
    loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def path_seconds(model: nn.Module, x_analysis: torch.Tensor, points: int, units_per_point: int = 3) -> float:
    """An estimate of one `progressive_path` (issue 14: cost before long work): one path point (jvp of jvp and the
    range projection on the analysis inputs) is timed, warm, and multiplied by the points the path evaluates."""
    import time

    from lesion.geometry.paths import path_point

    op = MetricOperator(model, x_analysis)
    d = torch.randn(op.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(op.weights)
    times = []
    for _ in range(2):
        started = time.perf_counter()
        path_point(op, 0.0, lambda _t: op.weights, lambda _t: d, lambda _t: torch.zeros_like(d))
        times.append(time.perf_counter() - started)
    return times[-1] * points * units_per_point


def progressive_path(model: nn.Module, layer: str, sequence: Sequence[int], x_analysis: torch.Tensor,
                     x: torch.Tensor, y: torch.Tensor, fractions: Sequence[float], units_per_point: int = 3,
                     factor: float = 10.0, order_seed: int = 0) -> PathProfileResult:
    """Speed, ds/dt and covariant acceleration (averaged over `units_per_point` consecutive units) along the
    path that deletes the units of `layer` one after the other in `sequence`; accuracy on (x, y)."""
    from lesion.geometry.paths import path_point, predicted_breakdown

    op = MetricOperator(model, x_analysis)
    target = Target(model, example=x_analysis)
    site = target.site(layer)
    width = site.width
    unit_indices = {u: unit_damage_set(model, layer, Explicit((u,)), torch.Generator(), target=target,
                                       check=u == sequence[0]).indices  # the same readers for every unit
                    for u in sequence}
    keep = torch.ones_like(op.weights)
    rows: dict[str, list[float]] = {"speed": [], "acceleration": [], "cov": [], "accuracy": [], "loss": []}
    ts = []
    deleted = 0
    for f in fractions:
        target_count = min(int(round(f * width)), width - 1)
        while deleted < target_count:
            keep[unit_indices[sequence[deleted]]] = 0.0
            deleted += 1
        w = op.weights * keep
        values = []
        for k in range(deleted, min(width, deleted + units_per_point)):
            d = torch.zeros_like(w)
            idx = unit_indices[sequence[k]]
            d[idx] = -op.weights[idx] * width
            point = path_point(op, 0.0, lambda _t, w=w: w, lambda _t, d=d: d, lambda _t, d=d: torch.zeros_like(d))
            values.append(point)
        ts.append(float(deleted / width))
        rows["speed"].append(float(np.mean([p.speed for p in values])))
        rows["acceleration"].append(float(np.mean([p.speed_derivative for p in values])))
        rows["cov"].append(float(np.mean([p.covariant_acceleration for p in values])))
        damage = [UnitCrash(layer, Explicit(tuple(sequence[:deleted])))] if deleted else []
        config = realise(target, damage, torch.Generator())
        evaluation = evaluate_outputs(batched_damaged_outputs(model, [config], x)[0], y)
        rows["accuracy"].append(evaluation.accuracy)
        rows["loss"].append(evaluation.loss)
    return PathProfileResult(ts, rows["speed"], rows["acceleration"], rows["cov"], rows["accuracy"],
                             predicted_breakdown(ts, rows["cov"], factor), order_seed, rows["loss"])


def path_embedding(model: nn.Module, layer: str, sequences: Sequence[Sequence[int]], x: torch.Tensor,
                   y: torch.Tensor, end_fraction: float = 0.9, points: int = 10, neighbours: int = 8
                   ) -> dict[str, Any]:
    """[G] Fig. 3F: networks along several deletion paths between the same endpoints (the trained network and
    the one with `end_fraction` of the units deleted — the same units, in different orders), embedded in 2-D
    by Isomap on their outputs on x, with their accuracy."""
    from sklearn.manifold import Isomap

    target = Target(model, example=x)
    width = target.site(layer).width
    final = int(round(end_fraction * width))
    chosen = sorted(sequences[0][:final])
    configs, labels = [], []
    for p, sequence in enumerate(sequences):
        inside = [u for u in sequence if u in set(chosen)]  # the same deleted set, each path in its own order
        for k in range(points + 1):
            count = int(round(k / points * final))
            damage = [UnitCrash(layer, Explicit(tuple(inside[:count])))] if count else []
            configs.append(realise(target, damage, torch.Generator()))
            labels.append((p, count / width))
    outputs = batched_damaged_outputs(model, configs, x)
    accuracy = [evaluate_outputs(o, y).accuracy for o in outputs]
    features = outputs.reshape(len(configs), -1).double().cpu().numpy()
    coords = Isomap(n_neighbors=min(neighbours, len(configs) - 1), n_components=2).fit_transform(features)
    return {"path": [p for p, _ in labels], "fraction": [f for _, f in labels], "x": coords[:, 0].tolist(),
            "y": coords[:, 1].tolist(), "accuracy": accuracy, "end_fraction": end_fraction, "inputs": len(x)}
