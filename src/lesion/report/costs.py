"""What each stage of `lesion report` will cost, before the work, and the sizes that fit `--time-limit`
(issue 14: cost before long work; issue 21: a budget picks the work per section and says which).

A few timed probes on the model (a forward pass per input; one g·v product on a few inputs; one path point on
two inputs; three optimiser steps) are scaled by what each stage computes at each of its sizes. Every stage
offers its sizes from the richest to the leanest; while the total is above the limit, the stage with the largest
estimate that can shrink takes its next size. When even the leanest sizes are above the limit, the report is
refused before any stage runs, with the estimate of each stage.

The estimates are first-order (a forward or a product costs the same on every input); the report records, per
stage, the estimate beside the seconds it took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from lesion.errors import LesionError

if TYPE_CHECKING:
    from lesion.crash.structure import MLPStructure
    from lesion.report.builder import ReportContext

FRACTIONS = 11  # deletion levels 0, 0.1, …, 1 of the break-down stage
LANCZOS_PRODUCTS = 3  # products per Lanczos vector (eigsh takes some 2–4 × max(2k + 1, 20))
HUTCHINSON = 100  # Rademacher vectors of the trace on the Lanczos route, one jvp (half a product) each
TOP = 20  # eigenvalues and eigenvectors the geometry stage asks for
EIGH_FLOPS = 5e9  # dense symmetric eigen-decomposition speed assumed for the Gram route, flops per second
JACOBIAN_ROWS = 2048  # stacked Jacobian rows of one input above which they are not timed (nor used) here


@dataclass(frozen=True)
class StageOption:
    """One size of a stage: the sizes its runner reads, the estimated seconds, and what the size means."""

    sizes: dict[str, Any]
    seconds: float
    note: str = ""


@dataclass
class ReportPlan:
    """The size chosen for every stage to run, its estimate, and the stages sized down to fit the limit."""

    chosen: dict[str, StageOption]
    time_limit: float | None
    downsized: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """The estimated total."""
        return sum(o.seconds for o in self.chosen.values())

    def lines(self) -> list[str]:
        """The estimate, one line per stage, for the log."""
        out = [f"estimated time: about {self.seconds:,.0f} s"
               + ("" if self.time_limit is None else f" (--time-limit {self.time_limit:g} s)")]
        for name, option in self.chosen.items():
            shrunk = (f"; sized down to fit: {self.downsized[name]}"
                      if name in self.downsized and not option.sizes.get("skip") else "")
            out.append(f"  {name}: about {option.seconds:,.1f} s" + (f" ({option.note})" if option.note else "")
                       + shrunk)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-able values (kept beside the stages, so that a resumed report keeps its sizes)."""
        return {"chosen": {name: {"sizes": o.sizes, "seconds": o.seconds, "note": o.note}
                           for name, o in self.chosen.items()},
                "time_limit": self.time_limit, "downsized": dict(self.downsized)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReportPlan:
        """The plan `to_dict` wrote (KeyError, TypeError or ValueError when it is not one)."""
        chosen = {str(name): StageOption(dict(o["sizes"]), float(o["seconds"]), str(o["note"]))
                  for name, o in d["chosen"].items()}
        limit = d["time_limit"]
        return cls(chosen, None if limit is None else float(limit), {str(k): str(v) for k, v in d["downsized"].items()})

    def record(self, name: str) -> dict[str, Any]:
        """What the stage's result keeps of the plan."""
        option = self.chosen[name]
        return {"estimate_seconds": option.seconds, "sizes": option.sizes, "note": option.note,
                "sized_down": self.downsized.get(name)}


class Probe:
    """Timings of the model that the estimates scale: each measured once, when a stage first needs it."""

    def __init__(self, ctx: ReportContext) -> None:
        self.ctx = ctx

    @cached_property
    def forward(self) -> float:
        """Seconds of one evaluation forward pass per input (the second of two, on up to 256 inputs)."""
        from lesion.functional import forward_with

        x = self.ctx.x_eval[:256]
        forward_with(self.ctx.model, {}, x[:2])
        started = time.perf_counter()
        forward_with(self.ctx.model, {}, x)
        return (time.perf_counter() - started) / len(x)

    @cached_property
    def flipped_forward(self) -> float:
        """Seconds per (configuration, input) of the batched damaged engine on random weight bit flips (about
        ten a configuration; the second of two runs of 4 configurations on up to 64 inputs): a transformer's
        configurations run vmapped, at several times a plain forward; an MLP's sparse engine runs faster."""
        from lesion.damage import BitFlip, batched_damaged_outputs, realise

        target, x = self.ctx.target, self.ctx.x_eval[:64]
        names = target.match("all", stored=True)
        try:
            bits = 8 * sum(target.tensors[n].numel() * target.tensors[n].element_size() for n in names)
            flip = BitFlip("all", ber=min(1.0, 10.0 / bits))
            flip.stored_format(target, names)
        except LesionError:  # no format for these weights: the bit-flip stage is left out anyway
            return self.forward
        configs = [realise(target, [flip], torch.Generator().manual_seed(s)) for s in range(4)]
        batched_damaged_outputs(self.ctx.model, configs, x, desc="timing")
        started = time.perf_counter()
        batched_damaged_outputs(self.ctx.model, configs, x, desc="timing")
        return (time.perf_counter() - started) / (len(configs) * len(x))

    @cached_property
    def metric(self) -> tuple[float, int, int, int, int]:
        """(seconds of one g·v product per analysis input, outputs m, rows per input, n, element size)."""
        from lesion.geometry.metric import MetricOperator

        x = self.ctx.data.x_train[:4]
        op = MetricOperator(self.ctx.model, x)
        return op.time_matvec() / len(x), op.m, op.rows_per_input, op.n, op.weights.element_size()

    @cached_property
    def jacobian(self) -> float:
        """Seconds of the stacked Jacobian rows of one analysis input (the Gram route of a model that is not an
        MLP; timed once, its set-up included)."""
        from lesion.geometry.flat import FlatModel

        x = self.ctx.data.x_train[:1]
        flat = FlatModel(self.ctx.model, x)
        if flat.largest_jacobian_batch() < 1 or flat.rows_per_input * flat.m > JACOBIAN_ROWS:
            return float("inf")  # the rows of one input do not fit in memory, or are too many to time
        started = time.perf_counter()
        flat.stacked_jacobians(flat.weights, x)
        return time.perf_counter() - started

    @cached_property
    def path_point(self) -> float:
        """Seconds of one path point of [G] §4 per analysis input (timed on two inputs)."""
        from lesion.geometry.breakdown import path_seconds

        return path_seconds(self.ctx.model, self.ctx.data.x_train[:2], 1, 1) / 2

    @cached_property
    def mlp(self) -> MLPStructure | None:
        """The model as an MLP of [R], or None."""
        from lesion.crash import mlp_structure

        try:
            return mlp_structure(self.ctx.model)
        except LesionError:
            return None


def _network(ctx: ReportContext, probe: Probe) -> list[StageOption]:
    n = len(ctx.data.x_test) if ctx.data.y_test is not None else 0
    return [StageOption({}, (n + 2) * probe.forward)]


@dataclass(frozen=True)
class CrashPoint:
    """One (layer, f) of the crash stage: exact over every crash set when its plan fits the stage's per-point
    limit, Monte Carlo otherwise (SPEC §2.1)."""

    layer: int
    faults: int
    width: int
    exact: bool
    seconds: float


def crash_points(ctx: ReportContext, structure: MLPStructure, x: torch.Tensor,
                 forward_per_input: float | None = None) -> list[CrashPoint]:
    """f = 1..5 in each hidden layer, each exact or sampled by its plan (`forward_per_input` prices a Monte
    Carlo point; without it, its seconds are 0)."""
    from lesion.crash import CrashBudget, plan
    from lesion.crash.structure import hidden_activations

    hidden = hidden_activations(structure, x)[0].cpu().numpy()  # the plans count the silent units skipped
    limit = ctx.size(5.0, 30.0)
    points = []
    for layer in range(1, structure.depth + 1):
        width = structure.widths[layer - 1]
        for f in range(1, min(5, width) + 1):
            p = plan(structure, CrashBudget((layer,), (width,), f), len(x), hidden=hidden)
            exact = p.affordable(limit)
            sampled = ctx.size(200, 1000) * len(x) * (forward_per_input or 0.0)
            points.append(CrashPoint(layer, f, width, exact, p.estimated_seconds if exact else sampled))
    return points


def crash_inputs(ctx: ReportContext) -> torch.Tensor:
    """The test inputs of the crash stage, on the CPU (where the exact engines run)."""
    return ctx.data.x_test[: ctx.size(300, 1000)].cpu()


def certificate_seconds(ctx: ReportContext) -> float:
    """The crash stage's time limit for each certified worst case (one per hidden layer and f = 1..3)."""
    return ctx.size(1.0, 4.0)


def _crash(ctx: ReportContext, probe: Probe) -> list[StageOption]:
    if probe.mlp is None:
        return [StageOption({}, 0.0, "left out: the bound of [R] needs an MLP")]
    structure = probe.mlp.on_cpu()
    points = crash_points(ctx, structure, crash_inputs(ctx), probe.forward)
    exact = sum(p.exact for p in points)
    # the certified worst cases: each f of each layer within its time limit (at most; small ones enumerate)
    certificates = sum(min(3, width) for width in structure.widths) * certificate_seconds(ctx)
    return [StageOption({}, sum(p.seconds for p in points) + certificates,
                        f"{exact} of {len(points)} (layer, f) points exact, the others Monte Carlo; certified "
                        f"worst cases within {certificate_seconds(ctx):g} s each")]


def _geometry(ctx: ReportContext, probe: Probe) -> list[StageOption]:
    from lesion.geometry.attack import HALVING_STEPS
    from lesion.geometry.spectrum import automatic_route

    per_input, m, rows_per_input, n, element = probe.metric
    labelled = ctx.data.y_train is not None and ctx.y_eval is not None
    directions = ctx.size(50, 300)
    # the random directions, the adversarial search, and the ‖du‖ that halves accuracy along 1 + ctx.size(4, 8)
    # directions (a bracket and HALVING_STEPS bisections: about 12 forwards each on the evaluation inputs)
    forwards = directions + 60 + (1 + ctx.size(4, 8)) * (HALVING_STEPS + 6)
    attack_forwards = forwards * len(ctx.x_eval) * probe.forward if labelled else 0.0
    options = []
    inputs = min(ctx.size(100, 500), len(ctx.data.x_train))
    while True:
        rows = inputs * rows_per_input * m
        product = per_input * inputs
        route = automatic_route(probe.mlp is not None, rows, n, element)
        if route == "gram":  # K from the layer factors of an MLP, else from stacked per-input Jacobians
            build = 2 * product if probe.mlp is not None else probe.jacobian * inputs
            vectors = TOP * product  # eigenvectors of g from those of K, one vjp each
            seconds = build + rows**3 / EIGH_FLOPS + ((build + vectors) if labelled else 0.0)
        else:
            lanczos = LANCZOS_PRODUCTS * max(2 * TOP + 1, 20) * product
            seconds = lanczos + HUTCHINSON / 2 * product + (lanczos if labelled else 0.0)
        options.append(StageOption({"inputs": inputs}, seconds + attack_forwards,
                                   f"{route} route on {inputs} inputs" + (f", attack with {directions} random "
                                                                          "directions" if labelled else "")))
        if inputs <= 2:
            return options
        inputs = max(2, inputs // 2)


def unit_sites(ctx: ReportContext) -> list[Any]:
    """The sites of the break-down stage, in forward order: unit sites with a layer of their own (hidden units,
    conv channels, a transformer's MLP neurons) and sites of attention heads (deleted a head at a time)."""

    return [s for s in ctx.target.sites if s.kind == "attention-head" or s.layer]


def no_unit_sites(ctx: ReportContext) -> str:
    """Why the model has no site the break-down and recovery stages can delete units of."""
    if ctx.target.stored:
        return ("an int8 model's layers store integers, which lesion's deletion masks do not reach: run this stage "
                "on the float model it was quantised from (lesion campaign --damage crash:PATH:UNITS measures the "
                "int8 model's crashes; lesion sites lists its PATHs)")
    return "the model has no unit sites with a layer of their own"


def _breakdown(ctx: ReportContext, probe: Probe) -> list[StageOption]:
    if ctx.y_eval is None:
        return [StageOption({}, 0.0, "left out: no test labels")]
    sites = len(unit_sites(ctx))
    if not sites:
        return [StageOption({}, 0.0, f"left out: {no_unit_sites(ctx)}")]
    orders = ctx.size(2, 5)
    per_curve = orders * FRACTIONS * len(ctx.x_eval) * probe.forward
    path_inputs = ctx.size(30, 100)
    options = []
    try:
        path = FRACTIONS * 3 * path_inputs * probe.path_point + FRACTIONS * len(ctx.x_eval) * probe.forward
        options.append(StageOption({"sites": sites, "path": True}, sites * per_curve + path,
                                   f"{sites} sites × {orders} orders, and a deletion path on {path_inputs} inputs"))
    except LesionError:  # no path on this model (e.g. its metric does not fit): the curves alone
        pass
    for k in sorted({sites, min(sites, 4), min(sites, 1)}, reverse=True):
        options.append(StageOption({"sites": k, "path": False}, k * per_curve,
                                   f"{k} of {sites} sites × {orders} orders, no deletion path"))
    return options


def _recovery(ctx: ReportContext, probe: Probe) -> list[StageOption]:
    from lesion.geometry.recovery import StepTimes, estimate_seconds

    found = recovery_problem(ctx)
    if isinstance(found, str):
        return [StageOption({}, 0.0, f"left out: {found}")]
    problem, _ = found
    explicit = problem.flat.mlp is None
    times = StepTimes.of(problem, probe.jacobian if explicit else None)
    fits = problem.flat.largest_jacobian_batch() if explicit else 32
    batch = 0 if times.jacobian_per_input == float("inf") else min(32, fits)
    options = []
    for epochs, steps in ((ctx.size(1.0, 3.0), 200), (0.5, 50), (0.1, 20), (0.1, 5)):
        methods = recovery_methods(batch, epochs)
        seconds = estimate_seconds(problem, methods, epochs, max(batch, 1), steps, 1, times)
        evaluations = (steps + 4) * len(ctx.x_eval) * probe.forward
        geodesic = f", geodesic up to {steps} steps on {batch} inputs" if batch >= 1 else \
            ", no geodesic (the Jacobian rows of one input are too many to stack here)"
        options.append(StageOption({"epochs": epochs, "max_steps": steps, "batch": batch},
                                   seconds + evaluations, f"fine-tuning {epochs:g} epochs" + geodesic))
    return options


def recovery_methods(batch: int, epochs: float) -> list[str]:
    """The recovery stage's methods: naive deletion, compensation alone, followed by a label-free distillation of
    a twentieth of the budget and by a fine-tune of a fifth of it, the geodesic (when a Jacobian batch fits), and
    fine-tuning for the whole budget."""
    return (["naive", "compensate", f"compensate+distill:{epochs / 20:g}", f"compensate+finetune:{epochs / 5:g}"]
            + (["geodesic"] if batch >= 1 else []) + ["finetune"])


def recovery_problem(ctx: ReportContext) -> tuple[Any, str] | str:
    """The recovery stage's problem (80% of the units of the first site lesion can repair) and its damage
    spec, or the reason there is none; built once per report (the plan and the stage share it)."""
    if "_recovery_problem" not in ctx.__dict__:
        ctx.__dict__["_recovery_problem"] = _new_recovery_problem(ctx)
    return ctx.__dict__["_recovery_problem"]


def _new_recovery_problem(ctx: ReportContext) -> tuple[Any, str] | str:
    from lesion.geometry.damage_set import parse_delete
    from lesion.geometry.recovery import RecoveryProblem

    if ctx.data.y_train is None or ctx.y_eval is None:
        return "the data have no labels: recovery is judged by accuracy and fine-tuning needs labels"
    reasons = []
    for site in ctx.target.table.unit_sites():
        spec = f"units:{site.index}:frac=0.8"
        try:
            damage = parse_delete(ctx.model, spec, torch.Generator().manual_seed(ctx.seed), ctx.x_eval[:2])
        except LesionError as err:
            reasons.append(f"{site.name}: {err}")
            continue
        x_train = ctx.data.x_train[: ctx.size(2000, 10000)]
        problem = RecoveryProblem(ctx.model, x_train, ctx.data.y_train[: len(x_train)], ctx.x_eval, ctx.y_eval,
                                  damage)
        return problem, spec
    if not reasons:
        return no_unit_sites(ctx)
    return "no site whose deletion lesion can repair: " + "; ".join(reasons[:3])


BIT_RATES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)  # from rare to every pattern failing on small nets
SINGLE_BITS = 5  # the sign and the top exponent bits of each candidate weight, in its own format


def _bitflips(ctx: ReportContext, probe: Probe) -> list[StageOption]:
    if ctx.y_eval is None:
        return [StageOption({}, 0.0, "left out: no test labels")]
    per_config = len(ctx.x_eval) * probe.flipped_forward
    options = []
    for samples, weights in ((ctx.size(20, 100), ctx.size(10, 30)), (10, 5), (4, 2)):
        configs = len(BIT_RATES) * samples + weights * SINGLE_BITS
        options.append(StageOption({"samples": samples, "weights": weights}, configs * per_config,
                                   f"{samples} fault patterns per rate, the top {weights} weights' single bits"))
    return options


ESTIMATORS: dict[str, Callable[[ReportContext, Probe], list[StageOption]]] = {
    "network": _network, "crash": _crash, "geometry": _geometry, "breakdown": _breakdown,
    "recovery": _recovery, "bitflips": _bitflips}


def plan_report(ctx: ReportContext, stages: tuple[str, ...], time_limit: float | None) -> ReportPlan:
    """The size of every stage in `stages`, the largest that keep the estimated total within `time_limit`
    (None: the richest); a LesionError when even the leanest sizes are above it."""
    probe = Probe(ctx)
    options = {}
    for name in stages:
        try:
            options[name] = ESTIMATORS[name](ctx, probe)
        except LesionError as err:  # a stage this model cannot have (the metric of an int8 model): left out, said
            options[name] = [StageOption({"skip": True}, 0.0, str(err))]
    for name in stages:
        full = options[name][0]
        if name != "network" and full.seconds > 0:
            options[name].append(StageOption({"skip": True}, 0.0, f"left out to fit --time-limit (it would take "
                                                                 f"about {full.seconds:,.0f} s: {full.note})"))
    at = dict.fromkeys(stages, 0)

    def total() -> float:
        return sum(options[name][at[name]].seconds for name in stages)

    while time_limit is not None and total() > time_limit:
        shrinkable = [name for name in stages if at[name] + 1 < len(options[name])]
        if not shrinkable:
            each = ", ".join(f"{name} {options[name][at[name]].seconds:,.0f} s" for name in stages)
            raise LesionError(f"the report would take at least about {total():,.0f} s ({each}), above --time-limit "
                              f"{time_limit:g}; leave stages out with --stages, use --quick, or raise --time-limit")
        largest = max(shrinkable, key=lambda name: options[name][at[name]].seconds)
        at[largest] += 1
    chosen = {name: options[name][at[name]] for name in stages}
    analyses = [name for name in stages if name != "network" and options[name][0].seconds > 0]
    if analyses and all(chosen[name].sizes.get("skip") for name in analyses):  # nothing would be analysed
        each = ", ".join(f"{name} {options[name][-2].seconds:,.0f} s" for name in analyses)
        raise LesionError(f"no analysis stage fits --time-limit {time_limit:g} even at its smallest size ({each}); "
                          "raise --time-limit, use --quick, or leave stages out with --stages")
    downsized = {name: f"{options[name][0].note} would take about {options[name][0].seconds:,.0f} s"
                 for name in stages if at[name] > 0}
    return ReportPlan(chosen, time_limit, downsized)
