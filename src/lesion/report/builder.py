"""`lesion report`: the whole analysis of one network in six stages, each saved as it finishes so that an
interrupted run resumes from the finished ones (issue "The main job").

Stages: network and data; crash robustness ([R], MLPs); local vulnerability ([G] §3); break-down ([G] §4);
recovery ([G] §5); bit-flip sensitivity. Each writes `stages/<name>.json` and its PNGs into the output folder;
`report.html` (figures embedded) and `results.json` are assembled from them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lesion.data.dataset import Dataset
from lesion.devices import model_device
from lesion.digests import tensor_digest
from lesion.errors import LesionError
from lesion.report.jsonio import provenance, to_jsonable, write_json

STAGES = ("network", "crash", "geometry", "breakdown", "recovery", "bitflips")
RESULTS_SCHEMA = "lesion-report/2 (docs/REPORT_SCHEMA.md)"


@dataclass
class ReportContext:
    """What every stage needs: the model, its data, sizes for a quick or full run, and where to write."""

    model: nn.Module
    model_info: dict[str, Any]
    data: Dataset
    out: Path
    quick: bool
    seed: int = 0
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    executor: Any = None  # where campaigns and Omega run (`lesion.scale`; None: this process)

    def size(self, quick: int, full: int) -> int:
        """A sample size for this run."""
        return quick if self.quick else full

    def chosen(self, stage: str, key: str, default: Any) -> Any:
        """The size `key` of `stage` that the plan chose to fit --time-limit (`lesion.report.costs`), else
        `default`."""
        return self.sizes.get(stage, {}).get(key, default)

    @cached_property
    def target(self) -> Any:
        """The model's `Target` on the evaluation inputs: its site table, recorded once for every stage."""
        from lesion.damage import Target

        return Target(self.model, example=self.x_eval)

    @property
    def x_eval(self) -> torch.Tensor:
        """Test inputs for accuracies."""
        return self.data.x_test[: self.size(500, 2000)]

    @property
    def y_eval(self) -> torch.Tensor | None:
        """Their labels."""
        return None if self.data.y_test is None else self.data.y_test[: len(self.x_eval)]


def stage_network(ctx: ReportContext) -> dict[str, Any]:
    """Section 1: architecture, parameters, data, clean accuracy with its Wilson interval; for a sequence model
    with a label per token, accuracy and loss by token position (`per_token`)."""
    from lesion.train import evaluate_outputs, predict

    result: dict[str, Any] = {"model": ctx.model_info, "data": ctx.data.to_dict(),
                              "parameters": sum(p.numel() for p in ctx.model.parameters()),
                              "architecture": str(ctx.model),
                              "sites": [s.to_dict() for s in ctx.target.sites]}
    if ctx.target.stored:  # an int8 model: its stored integer weights, and the activations after its layers
        result["int8"] = {"stored": {name: words.numel() for name, words in ctx.target.stored.items()},
                          "activations": [s.to_dict() for s in ctx.target.int8_activations]}
    y = ctx.data.y_test
    if y is not None:
        outputs = predict(ctx.model, ctx.data.x_test, 256)
        result["clean"] = evaluate_outputs(outputs, y).to_dict()
        subset = len(ctx.x_eval)
        if subset < len(ctx.data.x_test):  # the later sections measure on the first `subset` test inputs
            result["evaluation"] = {"inputs": subset,
                                    "accuracy": evaluate_outputs(outputs[:subset * (len(outputs) // len(y))],
                                                                 y[:subset]).accuracy}
        if y.dim() == 2:
            result["per_token"] = _per_token(ctx, outputs, y)
    return result


def _per_token(ctx: ReportContext, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Accuracy (Wilson interval over the sequences) and mean cross-entropy at each token position of (N, T)
    labels, and their figure: early positions see little context."""
    import torch.nn.functional as F

    from lesion.report.plots import Series, line_plot
    from lesion.stats import wilson_interval

    n, t = y.shape
    flat = y.reshape(-1)
    right = ((outputs.argmax(1) == flat) & torch.isfinite(outputs).all(1)).reshape(n, t).sum(0).tolist()
    loss = F.cross_entropy(outputs.double(), flat, reduction="none").reshape(n, t).mean(0).tolist()
    accuracy = [r / n for r in right]
    ci = [list(wilson_interval(int(r), n)) for r in right]
    positions = list(range(1, t + 1))
    line_plot(ctx.out / "tokens.png", [Series("accuracy", positions, accuracy, [c[0] for c in ci],
                                              [c[1] for c in ci], style="-")],
              "token position", "test accuracy", "Clean accuracy by token position",
              f"{n} test sequences of {t} tokens; band: 95% Wilson interval at each position")
    return {"sequences": n, "tokens_per_sequence": t, "accuracy_by_position": accuracy,
            "accuracy_ci_by_position": ci, "loss_by_position": loss, "figures": ["tokens.png"]}


def stage_crash(ctx: ReportContext) -> dict[str, Any]:
    """Section 2: Erf_av against measured Omega_av for f = 1..5 in each hidden layer, tolerated crashes."""
    from lesion.crash import CrashBudget, budget_bound, exact_omega, mlp_structure, monte_carlo_omega, output_bounds
    from lesion.report.costs import crash_inputs, crash_points
    from lesion.report.plots import Series, line_plot

    try:
        structure = mlp_structure(ctx.model).on_cpu()
    except LesionError as err:
        return {"skipped": f"the crash bound of [R] is defined for MLPs only: {err}"}
    x = crash_inputs(ctx)
    C = output_bounds(structure, x)
    rows, series = [], []
    for point in crash_points(ctx, structure, x):
        layer, f = point.layer, point.faults
        budget = CrashBudget((layer,), (point.width,), f)
        bound = budget_bound(structure, f, (layer,), C)
        if point.exact:
            omega = exact_omega(structure, x, budget, time_limit=None, executor=ctx.executor)
        else:
            omega = monte_carlo_omega(structure, x, budget, samples=ctx.size(200, 1000), seed=ctx.seed,
                                      executor=ctx.executor)
        rows.append({"layer": layer, "faults": f, "erf": bound.erf, "erf_av": bound.erf_av,
                     "omega_av": omega.omega_av, "omega_av_ci": omega.omega_av_ci, "omega_max": omega.omega_max,
                     "exact": omega.exact, "sets": omega.sets, "samples": omega.samples})
    for layer in range(1, structure.depth + 1):
        points = [p for p in rows if p["layer"] == layer]
        fs = [p["faults"] for p in points]
        color = {"color": f"C{layer - 1}"}
        series.append(Series(f"Omega_av, layer {layer}", fs, [p["omega_av"] for p in points], extra=color))
        series.append(Series(f"Erf_av, layer {layer}", fs, [p["erf_av"] for p in points], style="--", extra=color))
    plot = line_plot(ctx.out / "crash.png", series, "crashed units f", "error on the raw outputs (‖·‖∞)",
                     "Crash robustness: measured Omega_av against the bound Erf_av",
                     f"{len(x)} test inputs of {ctx.data.name}; exact over every crash set where affordable, else "
                     f"Monte Carlo ({ctx.size(200, 1000)} sets, 95% CI in the table); C measured on these inputs "
                     f"({', '.join(f'{c:.3g}' for c in C.values)}): the bound is data-dependent", logy=True)
    budgets = [0.1, 0.5, 1.0]
    tolerance = []
    for layer in range(1, structure.depth + 1):
        mine = [p for p in rows if p["layer"] == layer]
        for eps in budgets:
            row = {"layer": layer, "epsilon": eps}
            for key in ("erf", "erf_av", "omega_av"):
                tolerated = 0
                for p in mine:
                    if p[key] > eps:
                        break
                    tolerated = p["faults"]
                row[key] = tolerated
            # the largest f measured: a figure equal to it (short of the layer's width) is a lower bound, "≥ f"
            row["measured_up_to"], row["width"] = max(p["faults"] for p in mine), structure.widths[layer - 1]
            tolerance.append(row)
    certified = _certified_crashes(ctx, structure, x, rows)
    return {"rows": rows, "tolerance": tolerance, "certified": certified, "inputs": len(x), "C": list(C.values),
            "figures": [plot.name]}


def _certified_crashes(ctx: ReportContext, structure: Any, x: torch.Tensor, rows: list[dict[str, Any]]
                       ) -> list[dict[str, Any]]:
    """Per hidden layer, the certified worst case (issue 19) of f = 1..3 crashes, and the most crashes it
    certifies within ε = 1 beside measured Omega_av's answer."""
    from lesion.crash.tolerance import largest_within
    from lesion.crash.worst import worst_case
    from lesion.report.costs import certificate_seconds
    from lesion.report.scorecard import CERTIFIED_EPSILON

    out = []
    for layer in range(1, structure.depth + 1):
        faults = list(range(1, min(3, structure.widths[layer - 1]) + 1))
        found = worst_case(structure, x, layer, faults, time_limit=certificate_seconds(ctx))
        measured = [r["omega_av"] for r in rows if r["layer"] == layer]
        out.append({"layer": layer, "epsilon": CERTIFIED_EPSILON, "faults": faults,
                    "omega_max_lower": [w.omega_max_lower for w in found],
                    "omega_max_upper": [w.omega_max_upper for w in found],
                    "certified": largest_within([w.omega_max_upper for w in found], CERTIFIED_EPSILON, faults),
                    "by_omega_av": largest_within(measured, CERTIFIED_EPSILON),
                    "omega_measured_up_to": len(measured), "width": structure.widths[layer - 1]})
    return out


def stage_geometry(ctx: ReportContext) -> dict[str, Any]:
    """Section 3: spectrum of the metric, ρ, random against adversarial weight perturbation at σ = 1."""
    from lesion.geometry.attack import attack
    from lesion.geometry.metric import MetricOperator
    from lesion.geometry.spectrum import spectrum
    from lesion.report.plots import attack_plot, spectrum_plot

    inputs = ctx.chosen("geometry", "inputs", ctx.size(100, 500))
    x_an = ctx.data.x_train[:inputs]
    spec = spectrum(MetricOperator(ctx.model, x_an), top=20, seed=ctx.seed)
    figures = [spectrum_plot(ctx.out / "spectrum.png", {"g": spec.eigenvalues}, spec.threshold,
                             "Spectrum of the metric tensor g",
                             f"{inputs} training inputs of {ctx.data.name}; {spec.method} route; "
                             f"{'all nonzero' if spec.all_nonzero else 'top'} eigenvalues",
                             density=spec.all_nonzero).name]
    result: dict[str, Any] = {"spectrum": spec.to_dict()}
    if ctx.data.y_train is not None and ctx.y_eval is not None:
        att = attack(ctx.model, x_an, ctx.data.y_train[:inputs], ctx.x_eval, ctx.y_eval, 1.0,
                     ctx.size(50, 300), k=10, seed=ctx.seed, bitflips=False, halving=ctx.size(4, 8))
        result["attack"] = att.to_dict()
        figures.append(attack_plot(ctx.out / "attack.png", {"network": att.to_dict()}, 1.0).name)
    result["figures"] = figures
    return result


def stage_breakdown(ctx: ReportContext) -> dict[str, Any]:
    """Section 4: deletion curves per hidden layer, measured and predicted break-down points."""
    from lesion.geometry.breakdown import deletion_curve, progressive_path, unit_order
    from lesion.report.costs import FRACTIONS, no_unit_sites, unit_sites
    from lesion.report.plots import breakdown_plot

    if ctx.y_eval is None:
        return {"skipped": "the data have no test labels: deletion curves need accuracy"}
    fractions = tuple(float(f) for f in np.round(np.linspace(0, 1, FRACTIONS), 6))
    every = unit_sites(ctx)
    if not every:
        return {"skipped": no_unit_sites(ctx)}
    sites = every[: ctx.chosen("breakdown", "sites", len(every))]
    # layers are addressed by their 1-based index: module names may themselves be digits (nn.Sequential)
    curves = [deletion_curve(ctx.model, ctx.x_eval, ctx.y_eval, str(site.index), fractions, "random",
                             ctx.size(2, 5), 0.9, ctx.seed, executor=ctx.executor) for site in sites]
    on_path = next((s for s in sites if s.kind != "attention-head"), None)  # a path deletes units, not heads
    first = str(on_path.index) if on_path is not None else ""
    profiles: list[Any] = []
    path: dict[str, Any]
    if not ctx.chosen("breakdown", "path", True):
        path = {"skipped": "left out to fit --time-limit", "predicted_breakdown": None}
    elif on_path is None:
        path = {"skipped": "the sites chosen are all attention heads; a deletion path deletes units",
                "predicted_breakdown": None}
    else:
        try:
            sequence = unit_order(ctx.model, first, "random", np.random.default_rng(ctx.seed + 1000), ctx.x_eval)
            profiles = [progressive_path(ctx.model, first, sequence, ctx.data.x_train[: ctx.size(30, 100)],
                                         ctx.x_eval, ctx.y_eval, fractions)]
            path = profiles[0].to_dict()
        except LesionError as err:  # e.g. no layer reads the first site's units directly
            path = {"skipped": str(err), "predicted_breakdown": None}
    right = (f"right: covariant acceleration along a deletion path of {on_path.name}" if profiles else
             f"right: no deletion path ({path['skipped']})")
    breakdown_plot(str(ctx.out / "breakdown.png"), curves, profiles, "Break-down under unit deletion",
                   f"{len(ctx.x_eval)} test inputs; {ctx.size(2, 5)} random orders per layer (band: 95% CI); dotted: "
                   f"measured break-down (below 90% of clean); {right}")
    return {"curves": [c.to_dict() for c in curves], "path": path, "sites": len(every), "figures": ["breakdown.png"]}


def stage_recovery(ctx: ReportContext) -> dict[str, Any]:
    """Section 5: geodesic recovery against naive deletion and fine-tuning for 80% of the units of the first site
    whose readers lesion can tell (the first hidden layer of an MLP; the first MLP block of a transformer)."""
    from lesion.geometry.recovery import recover
    from lesion.report.costs import recovery_methods, recovery_problem
    from lesion.report.plots import Series, line_plot

    found = recovery_problem(ctx)
    if isinstance(found, str):
        return {"skipped": found}
    problem, spec = found
    damage, x_train = problem.damage, problem.x_train
    epochs = ctx.chosen("recovery", "epochs", ctx.size(1.0, 3.0))
    batch = ctx.chosen("recovery", "batch", 32)
    methods = recovery_methods(batch, epochs)
    results, _ = recover(problem, methods, epochs, ctx.seed,
                         {"betas": (1.0,), "radius": 1.0, "batch": batch,
                          "max_steps": ctx.chosen("recovery", "max_steps", 200)})
    series = [Series(n, [r.epoch_equivalents], [r.accuracy], style="o") for n, r in results.items()]
    line_plot(ctx.out / "recovery.png", series, "epoch-equivalents", "test accuracy",
              f"Recovery after deleting {damage.describe()}",
              f"{len(x_train)} training and {len(ctx.x_eval)} test inputs; geodesic: trust-region steps on "
              f"{batch}-input minibatches; fine-tuning with the deleted weights held at zero; compensate: the "
              "deleted units fitted from the kept ones on unlabelled inputs, folded into the next layer")
    return {"damage": spec, "description": damage.describe(), "methods": {n: r.to_dict() for n, r in results.items()},
            "figures": ["recovery.png"]}


def stage_bitflips(ctx: ReportContext) -> dict[str, Any]:
    """Section 6: accuracy under random bit errors at several rates, in the format the weights are stored in
    (float32, float16, bfloat16, int8: `BitFlip.stored_format`); the most damaging single bits."""
    from lesion.damage import BitFlip, batched_damaged_outputs, realise
    from lesion.damage import bits as bitlib
    from lesion.damage.campaign import Campaign
    from lesion.report.costs import BIT_RATES, SINGLE_BITS
    from lesion.report.plots import Series, line_plot
    from lesion.train import evaluate_outputs

    if ctx.y_eval is None:
        return {"skipped": "the data have no test labels"}
    target = ctx.target
    try:
        fmt = BitFlip("all", ber=0.0).stored_format(target, target.match("all", stored=True))
    except LesionError as err:
        return {"skipped": str(err)}
    rates = list(BIT_RATES)
    samples = ctx.chosen("bitflips", "samples", ctx.size(20, 100))
    rows = []
    for rate in rates:
        res = Campaign(ctx.model, ctx.x_eval, ctx.y_eval, [BitFlip("all", ber=rate)], seed=ctx.seed).run(
            samples=samples, executor=ctx.executor)
        rows.append({"ber": rate, **res.accuracy, "failure_rate": res.failure_rate})
    plot = line_plot(ctx.out / "bitflips.png",
                     [Series("mean accuracy", rates, [r["mean"] for r in rows], [r["ci"][0] for r in rows],
                             [r["ci"][1] for r in rows]),
                      Series("worst sample", rates, [r["min"] for r in rows], style="--")],
                     f"bit-error rate ({fmt}, all weights)", "test accuracy", "Bit-flip sensitivity",
                     f"{samples} random fault patterns per rate on {len(ctx.x_eval)} test inputs; band: "
                     "95% CI of the mean", logx=True)
    tensors = target.tensors  # float parameters and a quantised model's stored integers
    flat = torch.cat([v.reshape(-1).double() for v in tensors.values()])
    names = list(tensors)
    sizes = np.cumsum([0] + [v.numel() for v in tensors.values()])
    top = torch.topk(flat.abs(), min(ctx.chosen("bitflips", "weights", ctx.size(10, 30)), len(flat))).indices.tolist()
    candidates = []
    for index in top:
        which = int(np.searchsorted(sizes, index, side="right") - 1)
        width = bitlib.FORMATS[BitFlip(names[which], index="0", bit=0).stored_format(target, names[which:which + 1])]
        for bit in range(width - 1, width - 1 - SINGLE_BITS, -1):
            candidates.append((names[which], index - int(sizes[which]), bit))
    configs = [realise(target, [BitFlip(n, index=str(i), bit=b)], torch.Generator()) for n, i, b in candidates]
    outputs = batched_damaged_outputs(ctx.model, configs, ctx.x_eval, desc="single bits")
    singles = []
    for (n, i, b), config, out in zip(candidates, configs, outputs, strict=True):
        fault = config.faults[0]
        singles.append({"param": n, "index": i, "bit": b, "bit_name": bitlib.bit_name(fault["format"], b),
                        "format": fault["format"],
                        "before": fault["before"], "after": fault["after"],
                        "accuracy": evaluate_outputs(out, ctx.y_eval).accuracy})
    singles.sort(key=lambda r: r["accuracy"])
    return {"format": fmt, "rates": rows, "single_bits": singles[:10], "candidates": len(candidates),
            "figures": [plot.name]}


RUNNERS: dict[str, Callable[[ReportContext], dict[str, Any]]] = {
    "network": stage_network, "crash": stage_crash, "geometry": stage_geometry, "breakdown": stage_breakdown,
    "recovery": stage_recovery, "bitflips": stage_bitflips}


def stage_key(ctx: ReportContext) -> dict[str, Any]:
    """What a saved stage must have been run on to be reused: the model's weights and its outputs on a few
    inputs (the same weights behind another activation differ there), the data's values (a file rewritten under
    the same name), the size of the run and the seed."""
    with torch.no_grad():
        probe = ctx.model(ctx.data.x_test[:32].to(model_device(ctx.model)))
    data = ctx.data
    return {"model": ctx.model_info.get("digest"), "outputs": tensor_digest(probe.float()), "data": data.name,
            "data_digest": tensor_digest(data.x_train, data.y_train, data.x_test, data.y_test),
            "quick": ctx.quick, "seed": ctx.seed}


def _pictures(folder: Path) -> dict[Path, tuple[int, int]]:
    """The PNGs in `folder` with their modification time and size (what a stage's plots change)."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*.png")}


def _resumed_plan(ctx: ReportContext, key: dict[str, Any], todo: tuple[str, ...], time_limit: float) -> Any:
    """The plan an interrupted run made for the same model, data and limit, when it covers every stage left
    (a resumed report then runs them at the sizes the uninterrupted one would have); None otherwise."""
    from lesion.report.costs import ReportPlan

    try:
        saved = json.loads((ctx.out / "stages" / "plan.json").read_text())
        plan = ReportPlan.from_dict(saved["plan"]) if saved.get("key") == key else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None
    if plan is None or plan.time_limit != time_limit or not set(todo) <= set(plan.chosen):
        return None
    return ReportPlan({name: plan.chosen[name] for name in todo}, time_limit,
                      {name: note for name, note in plan.downsized.items() if name in todo})


def run_report(ctx: ReportContext, stages: tuple[str, ...] = STAGES, log: Callable[[str], None] = print,
               time_limit: float | None = None) -> Path:
    """Run (or resume) the stages, then write report.html and results.json; returns the HTML path.

    Before any stage runs, the stages still to run are estimated and sized to fit `time_limit` seconds
    (`lesion.report.costs`; None: the full sizes, no estimate), or the report is refused (LesionError)."""
    from lesion.report.costs import plan_report

    ctx.out.mkdir(parents=True, exist_ok=True)
    key = stage_key(ctx)
    results: dict[str, Any] = {}
    for name in stages:
        path = ctx.out / "stages" / f"{name}.json"
        try:
            saved = json.loads(path.read_text()) if path.exists() else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # a damaged stage file: run the stage again
            saved = None
        if isinstance(saved, dict) and saved.get("key") == key and isinstance(saved.get("result"), dict):
            results[name] = saved["result"]
    todo = tuple(name for name in stages if name not in results)
    plan = None
    if todo and time_limit is not None:
        plan = _resumed_plan(ctx, key, todo, time_limit)
        if plan is None:
            log("estimating the cost of each stage …")
            plan = plan_report(ctx, todo, time_limit)
            write_json(ctx.out / "stages" / "plan.json", {"key": key, "plan": plan.to_dict()})
        else:
            log("resuming with the sizes planned before the interruption:")
        for line in plan.lines():
            log(line)
        ctx.sizes = {name: option.sizes for name, option in plan.chosen.items()}
    for i, name in enumerate(stages, start=1):
        path = ctx.out / "stages" / f"{name}.json"
        if name in results:
            log(f"[{i}/{len(stages)}] {name}: finished earlier, reused")
            continue
        started = time.perf_counter()
        log(f"[{i}/{len(stages)}] {name} …")
        skip = ctx.sizes.get(name, {}).get("skip")
        before = _pictures(ctx.out)
        try:
            result = to_jsonable({"skipped": plan.chosen[name].note} if skip and plan else RUNNERS[name](ctx))
        except LesionError as err:  # a stage this model cannot have (the metric of an int8 model): said, not fatal
            result = {"skipped": str(err)}
        except BaseException:  # interrupted or failed: no plot of a stage that has no result is left behind
            for png, stamp in _pictures(ctx.out).items():
                if before.get(png) != stamp:
                    png.unlink(missing_ok=True)
            raise
        result["seconds"] = time.perf_counter() - started
        if plan is not None:
            result["plan"] = to_jsonable(plan.record(name))
        write_json(path, {"key": key, "result": result})
        results[name] = result
        estimate = "" if plan is None else f" (estimated {plan.chosen[name].seconds:,.1f} s)"
        log(f"[{i}/{len(stages)}] {name}: done in {result['seconds']:.1f} s{estimate}")
    from lesion.report.html import render
    from lesion.report.markdown import render_markdown
    from lesion.report.scorecard import build_scorecard
    from lesion.report.sections import build_sections, summary_section

    card = build_scorecard(results)
    execution = {} if ctx.executor is None else {"execution": ctx.executor.stats.to_dict()}
    write_json(ctx.out / "results.json", {"schema": RESULTS_SCHEMA, "provenance": provenance(**key, **execution),
                                          "scorecard": card, **results})
    subtitle = (f"model {ctx.model_info.get('source')} ({ctx.model_info.get('digest')}), data {ctx.data.name}; "
                f"{'quick' if ctx.quick else 'full'} run, seed {ctx.seed}")
    sections = [summary_section(card), *build_sections(results, ctx.out)]
    html_path = ctx.out / "report.html"
    html_path.write_text(render("lesion resilience report", subtitle, sections))
    (ctx.out / "report.md").write_text(render_markdown("lesion resilience report", subtitle, sections))
    return html_path

