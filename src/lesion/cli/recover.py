"""Sub-command `lesion recover` ([G] §5, SPEC §3.6): geodesic recovery of a damaged network and baselines."""

from __future__ import annotations

import argparse
import math
from typing import Any

from lesion.cli.options import add_common, add_data, add_model, output_file, positive_float, positive_int
from lesion.errors import LesionError


def _cmd_recover(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lesion.cli.options import load_model_and_data
    from lesion.geometry.damage_set import parse_delete, union
    from lesion.geometry.recovery import (
        RecoveryProblem,
        check_jacobian_batch,
        estimate_seconds,
        parse_methods,
        recover,
    )
    from lesion.report.plots import Series, line_plot

    loaded, data = load_model_and_data(args)
    if not data.has_labels:
        raise LesionError(f"{args.data} has no labels: recovery is judged by accuracy")
    gen = torch.Generator().manual_seed(args.seed)
    damage = union([parse_delete(loaded.module, spec, gen, data.x_test[:2]) for spec in args.delete])
    for part in damage.parts or (damage,):
        if len(part.units) >= part.width:
            raise LesionError(f"--delete removes all {part.width} {part.noun} of {part.layer}: the layers after it see "
                              "only biases, and no method can recover what none of its units carry; keep some")
    if args.calibration > len(data.x_train):
        print(f"--calibration {args.calibration} is more than the {len(data.x_train)} training inputs: all of "
              "them are used")
    methods = parse_methods(args.method)
    problem = RecoveryProblem(loaded.module, data.x_train, data.y_train, data.x_test, data.y_test, damage)
    clean, _ = problem.evaluate(problem.w0)
    print(f"{damage.describe()}; clean test accuracy {clean:.4f}")
    options = {"radius": args.radius, "batch": args.batch, "max_steps": args.max_steps}
    if args.beta:
        try:
            options["betas"] = tuple(float(b) for b in args.beta.split(","))
        except ValueError:
            raise LesionError(f"bad --beta {args.beta!r}: give positive numbers like 0.1,1,10") from None
        if not all(math.isfinite(b) and b > 0 for b in options["betas"]):
            raise LesionError(f"bad --beta {args.beta!r}: every β must be a positive finite number")
    check_jacobian_batch(problem, methods, args.batch)
    seconds = estimate_seconds(problem, methods, args.budget, args.batch, args.max_steps,
                               len(options.get("betas", (0.1, 1.0, 10.0))), calibration=args.calibration)
    print(f"estimated time: at most about {seconds:,.1f} s ({', '.join(methods)}; budget {args.budget:g} epochs)")
    if seconds > args.time_limit:
        raise LesionError(f"the recovery would take about {seconds:,.0f} s, above --time-limit {args.time_limit:g}; "
                          "lower --budget or --max-steps, or raise --time-limit")
    results, weights = recover(problem, methods, args.budget, args.seed, options,
                               {"calibration": args.calibration, "ridge": args.ridge})
    column = max(14, *(len(name) for name in results))  # combinations name themselves at length
    for name, r in results.items():
        length = f"  path length {r.path_length:.4g}" if r.path_length is not None else ""
        print(f"{name:{column}s} accuracy {r.accuracy:.4f}  loss {r.loss:.4f}  "
              f"{r.epoch_equivalents:7.2f} epoch-equivalents  {r.wall_seconds:6.1f} s{length}")
    naive = results.get("naive")
    below = [n for n, r in results.items() if naive is not None and r.accuracy < naive.accuracy - 1e-9]
    if below:
        print(f"below naive deletion ({naive.accuracy:.4f}): {', '.join(below)}"
              + (" (obs-metric is the paper's whole-network OBS, kept for the reproduction; obs is the "
                 "layer-wise one)" if "obs-metric" in below else ""))
    if args.plot:
        series = [Series(n, [r.epoch_equivalents], [r.accuracy], style="o") for n, r in results.items()]
        line_plot(args.plot, series, "epoch-equivalents", "test accuracy", f"Recovery: {damage.describe()}",
                  f"{data.name}: {len(data.x_train)} training examples, {len(data.x_test)} test; clean {clean:.3f}")
    if args.out:
        from lesion.nets import save_checkpoint

        best = max(results, key=lambda n: (results[n].accuracy, -results[n].epoch_equivalents))
        print(f"{best} chosen on the test inputs ({data.name}): its {results[best].accuracy:.4f} is the best of "
              f"{len(results)} methods there, an optimistic figure; judge the written network on other data")
        from lesion.nets.outputs import without_view

        model = without_view(problem.load(weights[best]))  # the user's own module, not lesion's reading of it
        if problem.flat.half_precision is not None:  # written in the user's format, as it was scored
            model = model.to(problem.flat.half_precision)
        config = loaded.metadata.get("config")
        if loaded.kind == "factory":  # the user's format: their factory and a state dict
            torch.save(model.state_dict(), args.out)
            print(f"recovered weights ({best}) written to {args.out} as a state dict: load them with "
                  f"--model {loaded.source} --weights {args.out}")
        elif config is None:
            torch.save(model, args.out)
        else:
            save_checkpoint(args.out, model, loaded.metadata.get("net", "recovered"), config,
                            recovered={"method": best, "damage": list(args.delete), "accuracy": results[best].accuracy})
        if loaded.kind != "factory":
            print(f"recovered network ({best}) written to {args.out}")
    return {"model": loaded.to_dict(), "data": data.to_dict(), "damage": damage.describe(), "clean_accuracy": clean,
            "methods": {n: r.to_dict() for n, r in results.items()}, "below_naive": below}


def register(sub: Any) -> None:
    """Add `lesion recover` to the `lesion` parser."""
    p = sub.add_parser("recover", help="recover a damaged network without retraining it (geodesic) and baselines",
                       description="Delete units or filters (--delete), then move the network to the damage "
                                   "hyperplane along a geodesic (trust-region steps with the metric tensor, SPEC "
                                   "§3.6), and compare with naive deletion, fine-tuning, prune-then-retrain, OBS and "
                                   "closed-form compensation, "
                                   "compute counted in epoch-equivalents.")
    add_model(p)
    add_data(p)
    p.add_argument("--delete", action="append", required=True, metavar="SPEC",
                   help="units:LAYER:UNITS (LAYER = hidden-layer index or module name; UNITS = 1,2,3 | frac=F | "
                        "count=K); filters:MODULE:UNITS for conv filters; repeat to delete in several layers")
    p.add_argument("--method", default="all", metavar="M[,M...]",
                   help="recovery methods, comma list (default all, which leaves out geodesic-running): geodesic "
                        "([G]: a fresh minibatch's metric per step, the shortest path kept), geodesic-running (the "
                        "metric from the last 4 minibatches' Jacobian rows, the path whose end classifies the last "
                        "1,000 training inputs best; about 17 times slower), naive, finetune, prune-retrain, obs "
                        "(layer-wise OBS on the layer reading the units, from its input Hessian over the calibration "
                        "inputs), obs-metric (OBS with the whole network's metric on 64 inputs), "
                        "compensate (each deleted unit modelled as an affine function of the kept units of its site, "
                        "ridge regression on unlabelled calibration inputs, folded into the layer that reads them), "
                        "distill (label-free: trained towards the undamaged network's outputs on unlabelled "
                        "inputs for 0.5 epochs, plus the undamaged network's forward over them: about 0.67 "
                        "epoch-equivalents in all), "
                        "or M+finetune[:EPOCHS] (M, then a short fine-tune from its weights; default --budget "
                        "epochs) or M+distill[:EPOCHS] (default 0.5), e.g. compensate+finetune:0.5")
    p.add_argument("--calibration", type=positive_int, default=256,
                   help="unlabelled training inputs for compensate's fit (default 256)")
    p.add_argument("--ridge", type=positive_float, default=1e-3,
                   help="compensate's ridge, relative to the mean variance of the kept units (default 1e-3)")
    p.add_argument("--budget", type=positive_float, default=10.0,
                   help="epochs for fine-tuning and for prune-retrain in total (default 10)")
    p.add_argument("--beta", help="β values of the geodesic paths, comma list (default 0.1,1,10; shortest kept)")
    p.add_argument("--radius", type=positive_float, default=1.0, help="trust-region radius r per step (default 1)")
    p.add_argument("--batch", type=positive_int, default=32, help="minibatch of the metric per step (default 32)")
    p.add_argument("--max-steps", type=positive_int, default=400, help="largest number of geodesic steps (default 400)")
    p.add_argument("--plot", metavar="PNG", type=output_file, help="accuracy against compute")
    p.add_argument("--out", metavar="FILE", type=output_file,
                   help="write the recovered network of the best method (test accuracy; the cheaper on a tie)")
    p.add_argument("--time-limit", type=positive_float, default=600.0,
                   help="refuse a run estimated above this many seconds (default 600)")
    add_common(p)
    p.set_defaults(run=_cmd_recover)
