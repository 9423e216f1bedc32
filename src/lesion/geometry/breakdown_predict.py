"""Break-down early warning (issue 20): how many more units of a layer can be deleted before accuracy breaks
down (below `share` of the undamaged network's accuracy, SPEC §3.5), predicted from the network at its
current damage and unlabelled inputs only.

Without labels, the accuracy of a damaged network is estimated through the undamaged one: with q(x) its
softmax output, Â = mean_x q(x)[ŷ(x)] for the damaged network's predictions ŷ (the undamaged network's belief
that the damaged one is right; at no damage, its mean confidence). Break-down is predicted where
Â(damaged) / Â(undamaged) falls below `share`.

Predictors (each reports its cost in forward passes over the inputs, a backward counting 2):
- `probe` (the cheap honest baseline, and the most accurate measured: benchmarks/breakdown_prediction.py):
  Â measured on sampled future damage — bisection on the number of further deleted units for the mean of Â
  over a few random continuation orders, the crossing interpolated between the levels that bracket it; the
  interval is over the orders' own crossings.
- `margin` (first order): one forward and one backward give, per input x and unit i, g_i(x) = ∂m(x)/∂α_i,
  the derivative of x's logit margin (top class minus runner-up) by a scale α_i on unit i (deleting i moves
  α_i from 1 to 0, changing the margin by about −g_i(x)). Deleting k of the n remaining units at random
  changes it by a sum of k draws without replacement: mean k·μ(x), variance k·σ²(x)·(n − k)/(n − 1); a
  normal law gives each input's chance to flip to its runner-up, hence Â(k) in closed form for every k.
- `margin-steps`: `margin` re-linearised a few steps ahead (half the predicted units deleted along a random
  order, then predicted again), along a few orders.
- `margin-calibrated`: `margin` with every unit's effect rescaled so that the model passes through Â measured
  (label-free) where it predicts the break-down, twice. First-order effects underestimate what many
  deletions do together; the rescaling corrects the level, not the shape of the curve. Once two probes lie on
  either side of the share, the model is fitted through both by a scale and a growth of the effects with the
  damage (`FirstOrder.fit_two`), so that its crossing falls between them, and where no curve of that shape
  passes through both (a fall steeper than the model can bend to), the crossing is read on the straight line
  between the two measurements. Where one scale cannot bring the curve to the share before the layer's end (a
  first-order curve that falls at once and then flattens, while the network degrades gradually: the
  benchmark's transformer), the two probes are fitted the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lesion.damage import Explicit, Target, UnitCrash, batched_damaged_outputs, realise
from lesion.damage.apply import SiteHooks
from lesion.damage.chain import chain_leaves
from lesion.errors import LesionError
from lesion.functional import eval_mode, parameters_of
from lesion.sites import Site
from lesion.stats import clipped_interval

METHODS = ("probe", "margin", "margin-steps", "margin-calibrated")
GROWTH_MIN, GROWTH_MAX = -0.9, 64.0  # the growth of units' effects with the damage, `FirstOrder.fit_two`
BACKWARD_COST = 2.0  # a backward pass costs about two forward passes
SMALL_CHUNK = 8  # configurations a step for models that are not chains of modules


@dataclass(frozen=True)
class Prediction:
    """A predicted break-down fraction (of the layer's width, counting the units already deleted)."""

    fraction: float
    interval: tuple[float, float]
    method: str
    forward_passes: float
    start: float  # the damage the prediction starts from ("from")
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (issue 20's keys: fraction, interval, method, forward_passes, from)."""
        out = asdict(self)
        out["from"] = out.pop("start")
        out["interval"] = list(self.interval)
        return out


class _ScaledSite(SiteHooks):
    """Hooks that multiply the units of one site by a per-input scale α (inputs × units), for ∂/∂α."""

    def __init__(self, model: nn.Module, site: Site) -> None:
        super().__init__(model, [site])
        self.site = site
        self.alpha: torch.Tensor | None = None

    def _changed(self, site: Site, t: torch.Tensor) -> torch.Tensor:
        if site.name != self.site.name or self.alpha is None:
            return super()._changed(site, t)
        axis = site.axis if site.axis >= 0 else t.dim() + site.axis
        shape = [t.shape[0]] + [1] * (t.dim() - 1)
        shape[axis] = -1
        return t * self.alpha.to(t.dtype).reshape(shape)


class BreakdownProblem:
    """A layer of a model, its inputs (unlabelled), the undamaged network's beliefs, and a current damage."""

    def __init__(self, model: nn.Module, x: torch.Tensor, layer: str, share: float = 0.9,
                 batch_size: int = 512) -> None:
        if not 0 < share < 1:
            raise LesionError(f"share must be in (0, 1), got {share}")
        self.model, self.x, self.share, self.batch_size = model, x, share, batch_size
        self.target = Target(model, example=x[:2])
        leaves = chain_leaves(model)
        # the damage engine sizes its chunks by the leaf modules' outputs: a model run as one piece (attention
        # computed by functions) can need far more per configuration, so its configurations go a few at a time
        self.chunk = None if leaves is not None and len(leaves) > 1 else SMALL_CHUNK
        self.site = self.target.site(layer, "unit")
        self.layer = self.site.name
        self.width = self.site.width
        clean = self.outputs([[]])[0]
        self.reference = torch.softmax(clean.double(), dim=-1)  # q(x), rows × classes
        self.reference_accuracy = float(self.reference.max(-1).values.mean())
        self.forward_passes = 1.0

    def outputs(self, deleted_sets: Sequence[Sequence[int]]) -> torch.Tensor:
        """Raw outputs (configurations, rows, classes) with each set of units deleted."""
        configs = [realise(self.target, [UnitCrash(self.layer, Explicit(tuple(int(u) for u in units)))]
                           if len(units) else [], torch.Generator()) for units in deleted_sets]
        return batched_damaged_outputs(self.model, configs, self.x, chunk_size=self.chunk,
                                       input_batch=self.batch_size)

    def check(self, method: str) -> None:
        """Refuses, before any work, a predictor this model cannot take: the margin predictors need one output
        row per input (a classifier), where a language model gives one per token."""
        rows = len(self.reference) // max(len(self.x), 1)
        if method != "probe" and len(self.reference) != len(self.x):
            raise LesionError(f"the margin predictors need one output row per input (this model gives {rows} per "
                              "input); use --predict probe")

    def estimated_accuracy(self, deleted_sets: Sequence[Sequence[int]]) -> np.ndarray:
        """Â / Â(undamaged) for each set of deleted units (label-free; one forward pass each)."""
        out = self.outputs(deleted_sets)
        self.forward_passes += len(deleted_sets)
        chosen = self.reference.unsqueeze(0).expand(len(out), -1, -1).gather(
            -1, out.argmax(-1, keepdim=True).cpu()).squeeze(-1)
        return (chosen.mean(-1) / self.reference_accuracy).numpy()

    def linearise(self, deleted: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """At the damage `deleted`: per input, ∂margin/∂α_i for every unit (rows × N), the margin, and the top
        and runner-up classes (one forward and one backward)."""
        self.check("margin")
        keep = torch.ones(self.width, dtype=torch.float64)
        keep[list(deleted)] = 0.0
        grads, margins, tops, seconds = [], [], [], []
        device = next(iter(parameters_of(self.model).values()), torch.zeros(0)).device
        hooks = _ScaledSite(self.model, self.site)
        with eval_mode(self.model), hooks:
            params = parameters_of(self.model)
            for lo in range(0, len(self.x), self.batch_size):
                xb = self.x[lo:lo + self.batch_size].to(device)
                alpha = keep.to(device).expand(len(xb), -1).clone().requires_grad_(True)
                hooks.alpha = alpha
                out = hooks.run(self.model, params, {}, xb)
                order = out.detach().topk(2, dim=-1).indices
                margin = out.gather(1, order[:, :1]) - out.gather(1, order[:, 1:2])
                (g,) = torch.autograd.grad(margin.sum(), alpha)
                grads.append(g.detach().double().cpu())
                margins.append(margin.detach().double().cpu().squeeze(1))
                tops.append(order[:, 0].cpu())
                seconds.append(order[:, 1].cpu())
        self.forward_passes += 1 + BACKWARD_COST
        return torch.cat(grads), torch.cat(margins), torch.cat(tops), torch.cat(seconds)

    def first_order_curve(self, deleted: Sequence[int]) -> FirstOrder:
        """The first-order model of further random deletions from one linearisation at `deleted`."""
        g, margin, top, runner = self.linearise(deleted)
        alive = torch.ones(self.width, dtype=torch.bool)
        alive[list(deleted)] = False
        g = g[:, alive]
        right = self.reference.gather(1, top.view(-1, 1))
        wrong = self.reference.gather(1, runner.view(-1, 1))
        return FirstOrder(g.mean(1), g.var(1, unbiased=False), margin, right, wrong, g.shape[1],
                          self.reference_accuracy)

    def crossing(self, curve: np.ndarray, already: int) -> float:
        """The break-down fraction read from a curve over further deletions k = 0, 1, …: where it first falls
        below the share, interpolated between the two counts that bracket it (as a measured curve is read,
        `crossing_fraction`); the whole layer when it never falls."""
        below = np.flatnonzero(curve < self.share)
        if not len(below):
            return (already + len(curve) - 1) / self.width
        k = int(below[0])
        if k > 0:
            k -= (self.share - curve[k]) / (curve[k - 1] - curve[k])
        return (already + k) / self.width


def sum_moments(k: torch.Tensor, n: int, mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the sum of k values drawn without replacement from n values of mean `mu` and
    (population) variance `var`: k·μ and k·σ²·(n − k)/(n − 1); rows of mu/var × entries of k."""
    mean = k.unsqueeze(0) * mu.unsqueeze(1)
    variance = (k * (n - k) / max(n - 1, 1)).unsqueeze(0) * var.unsqueeze(1)
    return mean, variance


@dataclass
class FirstOrder:
    """Per input: the mean and variance over the remaining units of the margin's derivatives, the margin, and
    the undamaged network's probabilities of the top and runner-up classes; n remaining units."""

    mu: torch.Tensor
    var: torch.Tensor
    margin: torch.Tensor
    right: torch.Tensor
    wrong: torch.Tensor
    n: int
    reference_accuracy: float

    def curve(self, scale: float = 1.0, growth: float = 0.0, ks: Sequence[int] | None = None) -> np.ndarray:
        """Â(k) / Â(undamaged) for k = 0 … n (or the `ks` given), with every unit's effect multiplied by `scale`
        (1: first order) and by 1 + growth·k/n after k deletions (the effects of a unit compound as the layer
        loses others: growth > 0)."""
        k = torch.arange(self.n + 1, dtype=torch.float64) if ks is None else torch.tensor(ks, dtype=torch.float64)
        mean, spread = sum_moments(k, self.n, self.mu * scale, self.var * scale * scale)  # rows × (n + 1)
        grow = 1.0 + growth * k / self.n
        mean, spread = mean * grow, spread * grow * grow
        shift = mean - self.margin.unsqueeze(1)  # flip when the sum exceeds the margin
        flip = torch.where(spread > 0, torch.special.ndtr(shift / spread.clamp(min=1e-300).sqrt()),
                           (shift > 0).double())
        estimate = ((1 - flip) * self.right + flip * self.wrong).mean(0)
        return (estimate / self.reference_accuracy).numpy()

    def scale_to(self, k: int, measured: float, growth: float = 0.0) -> float:
        """The scale whose curve passes through the measured Â ratio after k further deletions (bisection in
        log scale; the curve falls as the scale grows)."""
        lo, hi = math.log(1e-3), math.log(1e6)
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.curve(math.exp(mid), growth, [k])[0] > measured:
                lo = mid
            else:
                hi = mid
        return math.exp((lo + hi) / 2)

    def fit_two(self, near: tuple[int, float], far: tuple[int, float]) -> tuple[float, float]:
        """(scale, growth) whose curve passes through two measured (k, Â ratio) points, k_near < k_far: the scale
        fitted at the near point for each growth, the growth by bisection on the far point (a larger growth lowers
        the curve beyond the near point). Growth is kept in [GROWTH_MIN, GROWTH_MAX]."""
        (k1, m1), (k2, m2) = near, far
        lo, hi = GROWTH_MIN, GROWTH_MAX
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.curve(self.scale_to(k1, m1, mid), mid, [k2])[0] > m2:
                lo = mid
            else:
                hi = mid
        growth = (lo + hi) / 2
        return self.scale_to(k1, m1, growth), growth


def _orders(problem: BreakdownProblem, deleted: Sequence[int], orders: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    alive = np.setdiff1d(np.arange(problem.width), np.asarray(list(deleted), dtype=np.int64))
    return [rng.permutation(alive).tolist() for _ in range(orders)]


def predict_probe(problem: BreakdownProblem, deleted: Sequence[int], orders: int = 4, seed: int = 0,
                  current: float | None = None) -> tuple[float, list[float]]:
    """Bisection on the number of further deleted units for the mean of Â over `orders` random continuations
    (label-free): the break-down fraction, and per order the crossing read off the levels evaluated. `current`:
    Â at the current damage, when the caller has measured it (1 with nothing deleted)."""
    continuations = _orders(problem, deleted, orders, seed)
    n = len(continuations[0])
    if current is None:
        current = float(problem.estimated_accuracy([list(deleted)])[0]) if len(deleted) else 1.0
    # k → Â ratio per order; k = 0 is the current damage, as measured (taken as 1 before: crossings came late)
    levels: dict[int, np.ndarray] = {0: np.full(orders, current)}
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        levels[mid] = problem.estimated_accuracy([[*deleted, *order[:mid]] for order in continuations])
        if levels[mid].mean() < problem.share:
            hi = mid
        else:
            lo = mid
    if n not in levels:
        levels[n] = problem.estimated_accuracy([[*deleted, *continuations[0]]]).repeat(orders)
    ks = sorted(levels)
    table = np.array([levels[k] for k in ks])  # levels × orders
    fractions = [(len(deleted) + k) / problem.width for k in ks]
    per_order = [crossing_fraction(fractions, table[:, o].tolist(), problem.share) or 1.0 for o in range(orders)]
    # the crossing of the mean, interpolated between the levels that bracket it (as a measured curve is read)
    mean = crossing_fraction(fractions, table.mean(axis=1).tolist(), problem.share)
    return (mean if mean is not None else (len(deleted) + hi) / problem.width), per_order


def predict_margin_steps(problem: BreakdownProblem, deleted: Sequence[int], steps: int, orders: int = 3,
                         seed: int = 0) -> list[float]:
    """Per random order, the first-order prediction re-linearised `steps` − 1 times half-way to it."""
    predictions = []
    for order in _orders(problem, deleted, orders if steps > 1 else 1, seed):
        state = list(deleted)
        taken = 0
        for step in range(steps):
            curve = problem.first_order_curve(state).curve()
            fraction = problem.crossing(curve, len(state))
            ahead = int(round(fraction * problem.width)) - len(state)
            if step == steps - 1 or ahead < 2:
                break
            advance = ahead // 2
            if problem.estimated_accuracy([[*state, *order[taken:taken + advance]]])[0] < problem.share:
                break  # already broken half-way: the prediction stands (it was late, not early)
            state += order[taken:taken + advance]
            taken += advance
        predictions.append(fraction)
    return predictions


def predict_margin_calibrated(problem: BreakdownProblem, deleted: Sequence[int], probes: int = 2,
                              orders: int = 4, seed: int = 0, current: float = 1.0) -> tuple[float, list[float]]:
    """One linearisation at the current damage; then `probes` times: Â measured (label-free) along `orders`
    random continuations where the model predicts the break-down, and the units' effects rescaled so that the
    model passes through the mean (per order too, for the interval); fitted through two probes where they
    bracket the share, or where one scale cannot bring the curve to the share within the layer (`_calibrations`,
    module note). A probe where one was already taken is not repeated (its forward passes are saved). A crossing
    is never read beyond a probe measured below the share (`_not_beyond`; `current`: Â at the current damage)."""
    model = problem.first_order_curve(deleted)
    fraction = problem.crossing(model.curve(), len(deleted))
    continuations = _orders(problem, deleted, orders, seed)
    per_order = [fraction] * orders
    taken: dict[int, np.ndarray] = {}  # further deletions → Â ratio per order
    for probe in range(probes):
        # measure where the model predicts the break-down; the first probe short of the layer's end (a first-order
        # curve that never falls says little about where), the later ones up to one unit before it
        cap = math.ceil(0.75 * model.n) if probe == 0 else model.n - 1
        k = min(cap, max(1, int(round(fraction * problem.width)) - len(deleted)))
        if k in taken:
            break  # the model predicts where it was already measured: a probe more would add nothing
        other = max(taken, key=lambda j: abs(j - k)) if taken else None  # the probe farthest from this one
        taken[k] = problem.estimated_accuracy([[*deleted, *order[:k]] for order in continuations])
        fits, bracket = _calibrations(model, problem.share, taken, k, other)
        curves = [model.curve(scale, growth) for scale, growth in fits]
        fraction = problem.crossing(curves[0], len(deleted))
        per_order = [problem.crossing(c, len(deleted)) for c in curves[1:]]
        if bracket is not None:  # the crossing lies between the probes that bracket the share
            ends = [(len(deleted) + j) / problem.width for j in bracket]
            fraction = _between(fraction, ends, [taken[j].mean() for j in bracket], problem.share)
            per_order = [_between(f, ends, [taken[j][o] for j in bracket], problem.share)
                         for o, f in enumerate(per_order)]
    at = len(deleted)
    fraction = _not_beyond(fraction, at, problem.width, {0: current, **{k: float(m.mean()) for k, m in taken.items()}},
                           problem.share)
    per_order = [_not_beyond(f, at, problem.width, {0: current, **{k: float(m[o]) for k, m in taken.items()}},
                             problem.share) for o, f in enumerate(per_order)]
    return fraction, per_order


def _not_beyond(fraction: float, at: int, width: int, measured: dict[int, float], share: float) -> float:
    """`fraction`, unless it lies beyond the first probe measured below the share (k further deletions from `at`
    units → Â ratio; a fitted curve that cannot pass through the measurements, a scale at its bound, put the
    crossing at the layer's end): then the crossing read from the measurements, between that probe and the last
    one before it at or above the share."""
    below = [k for k, m in measured.items() if m < share]
    if not below:
        return fraction
    first = min(below)
    if fraction <= (at + first) / width:
        return fraction
    before = max(k for k, m in measured.items() if k < first and m >= share)
    read = crossing_fraction([(at + before) / width, (at + first) / width], [measured[before], measured[first]], share)
    return (at + first) / width if read is None else read


def _between(fraction: float, ends: list[float], measured: list[float], share: float) -> float:
    """A calibrated crossing kept between the two probes at `ends` where their `measured` values bracket the
    share: where the fitted curve crosses outside them (no curve of the model's shape passes through both: a
    fall steeper than it can bend to), the straight line between the two measurements is read instead. One
    order's own measurements need not bracket the share; its crossing then stands as fitted."""
    lo, hi = ends
    if lo <= fraction <= hi or not measured[0] >= share > measured[1]:
        return fraction
    read = crossing_fraction(ends, [float(m) for m in measured], share)
    return fraction if read is None else read


def _calibrations(model: FirstOrder, share: float, taken: dict[int, np.ndarray], latest: int, other: int | None
                  ) -> tuple[list[tuple[float, float]], tuple[int, int] | None]:
    """(scale, growth) of the first-order model for the mean of the probes and for each order, and the pair of
    probes that brackets the share if there is one. Through the two probes nearest the crossing on either side of
    the share when there are such; else through the latest probe by a scale, or, where one scale cannot bring
    the curve down to the share before the layer's last unit (a first-order curve that flattens), through it and
    the `other` by a scale and a growth. Fitted through two probes, each order keeps the mean's growth and takes
    its scale from its own measurement at the probe nearer the share."""
    above = [k for k, m in taken.items() if m.mean() >= share]
    below = [k for k, m in taken.items() if m.mean() < share]
    bracket = (max(above), min(below)) if above and below and max(above) < min(below) else None
    if bracket is None:
        fits = [(model.scale_to(latest, float(m)), 0.0) for m in (taken[latest].mean(), *taken[latest])]
        if other is None or model.curve(*fits[0])[:-1].min() < share:
            return fits, None
    k1, k2 = bracket or sorted((latest, other))  # type: ignore[type-var]
    scale, growth = model.fit_two((k1, float(taken[k1].mean())), (k2, float(taken[k2].mean())))
    # each order: the same shape through its own measurement at the probe nearer the share (two points of one
    # order can ask for any growth at all)
    near = min((k1, k2), key=lambda k: abs(float(taken[k].mean()) - share))
    return [(scale, growth)] + [(model.scale_to(near, float(m), growth), growth) for m in taken[near]], bracket


def predict_breakdown(model: nn.Module, x: torch.Tensor, layer: str, method: str = "probe",
                      deleted: Sequence[int] = (), share: float = 0.9, orders: int = 4, steps: int = 3,
                      seed: int = 0, problem: BreakdownProblem | None = None) -> Prediction:
    """The predicted break-down fraction of `layer` from the damage `deleted` (unit indices already gone), on
    unlabelled inputs `x`, by `method` (see the module note)."""
    if method not in METHODS:
        raise LesionError(f"unknown predictor {method!r}: {', '.join(METHODS)}")
    began = time.perf_counter()
    problem = problem or BreakdownProblem(model, x, layer, share)
    problem.forward_passes = 1.0  # the undamaged network's outputs
    if len(set(deleted)) != len(deleted) or any(not 0 <= u < problem.width for u in deleted):
        raise LesionError(f"the deleted units must be distinct indices in 0..{problem.width - 1}")
    problem.check(method)
    start = len(deleted) / problem.width
    current = float(problem.estimated_accuracy([list(deleted)])[0]) if len(deleted) else 1.0
    if current < problem.share:
        # broken down already at the current damage: no further unit can go (one forward pass to know it)
        return Prediction(start, (start, start), method, problem.forward_passes, start, time.perf_counter() - began,
                          {"per_order": [], "inputs": len(x), "share": share, "already_broken": True})
    if method == "probe":
        value, values = predict_probe(problem, deleted, orders, seed, current)
    elif method == "margin-calibrated":
        value, values = predict_margin_calibrated(problem, deleted, steps - 1, orders, seed, current)
    else:
        values = predict_margin_steps(problem, deleted, 1 if method == "margin" else steps, orders, seed)
        value = float(np.mean(values))
    interval = clipped_interval(values) if len(values) > 1 else (value, value)
    return Prediction(float(value), (float(interval[0]), float(interval[1])), method, problem.forward_passes, start,
                      time.perf_counter() - began, {"per_order": values, "inputs": len(x), "share": share})


@dataclass(frozen=True)
class MeasuredBreakdown:
    """Accuracy (with labels) as further random units are deleted after `deleted`, mean over `orders` random
    continuations, and where it falls below `share` of the undamaged network's accuracy."""

    fractions: list[float]
    accuracy: list[float]
    clean_accuracy: float
    fraction: float | None
    forward_passes: int
    start: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def measured_breakdown(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str, deleted: Sequence[int] = (),
                       share: float = 0.9, points: int = 41, orders: int = 5, seed: int = 0,
                       problem: BreakdownProblem | None = None) -> MeasuredBreakdown:
    """The measured break-down from the damage `deleted` (labels needed): `points` deletion levels from the
    current damage to the whole layer, each over `orders` random continuations; the crossing interpolated."""
    from lesion.train import evaluate_outputs

    problem = problem or BreakdownProblem(model, x, layer, share)
    clean = evaluate_outputs(problem.outputs([[]])[0], y).accuracy
    continuations = _orders(problem, deleted, orders, seed)
    n = len(continuations[0])
    counts = sorted({int(round(v)) for v in np.linspace(0, n, points)})
    sets = [[*deleted, *order[:k]] for order in continuations for k in counts]
    outputs = problem.outputs(sets)
    table = np.array([evaluate_outputs(o, y).accuracy for o in outputs]).reshape(orders, len(counts))
    fractions = [(len(deleted) + k) / problem.width for k in counts]
    accuracy = table.mean(axis=0).tolist()
    return MeasuredBreakdown(fractions, accuracy, clean, crossing_fraction(fractions, accuracy, share * clean),
                             len(sets) + 1, len(deleted) / problem.width)


def crossing_fraction(fractions: Sequence[float], accuracy: Sequence[float], threshold: float) -> float | None:
    """Where a measured curve first falls below `threshold`, interpolated linearly between grid points."""
    if len(accuracy) and accuracy[0] < threshold:
        return float(fractions[0])
    for i in range(1, len(fractions)):
        if accuracy[i] < threshold <= accuracy[i - 1]:
            a0, a1 = accuracy[i - 1], accuracy[i]
            return float(fractions[i - 1] + (a0 - threshold) / (a0 - a1) * (fractions[i] - fractions[i - 1]))
    return None


__all__ = ["METHODS", "BreakdownProblem", "Prediction", "crossing_fraction", "predict_breakdown"]
