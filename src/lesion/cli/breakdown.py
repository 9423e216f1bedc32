"""Sub-command `lesion breakdown` ([G] §4, SPEC §3.5): deletion curves, damage paths and break-down points."""

from __future__ import annotations

import argparse
from typing import Any

from lesion.cli.options import (
    add_common,
    add_data,
    add_executor,
    add_model,
    nonnegative_int,
    output_file,
    positive_float,
    positive_int,
    share,
)
from lesion.errors import LesionError

METHODS = ("probe", "margin", "margin-steps", "margin-calibrated")  # lesion.geometry.breakdown_predict.METHODS


def unit_list(text: str) -> list[int]:
    """`3,17,42` → unit indices."""
    try:
        units = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be unit indices like 3,17,42, got {text!r}") from None
    if not units or min(units) < 0:
        raise argparse.ArgumentTypeError(f"must be unit indices ≥ 0 like 3,17,42, got {text!r}")
    return units


def fraction_below_one(text: str) -> float:
    """A fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _is_head_site(model: Any, layer: str, example: Any) -> bool:
    from lesion.damage import Target

    return Target(model, example=example).site(layer, None).kind == "attention-head"


def _cmd_breakdown(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from lesion.cli.options import load_model_and_data
    from lesion.geometry.breakdown import deletion_curve, path_seconds, progressive_path, unit_order
    from lesion.report.plots import breakdown_plot

    if not args.predict and (args.start or args.deleted is not None):
        raise LesionError("--from and --deleted set the damage a prediction starts from: give them with --predict")
    loaded, data = load_model_and_data(args)
    heads = _is_head_site(loaded.module, args.layer, data.x_test[:2])
    if args.paths and heads:
        raise LesionError(f"{args.layer} is a site of attention heads: a deletion path deletes units; give --paths 0 "
                          "for its deletion curves")
    if args.predict and heads:
        raise LesionError(f"{args.layer} is a site of attention heads: --predict works on sites of units or channels")
    predicting = _prediction_problem(args, loaded.module, data) if args.predict else None  # refused before work
    fractions = tuple(float(f) for f in np.round(np.linspace(0, 1, args.points), 6))
    x_an = data.x_train[: args.inputs]
    if args.paths:
        seconds = args.paths * path_seconds(loaded.module, x_an, len(fractions))
        print(f"estimated time of {args.paths} deletion path(s) on {len(x_an)} analysis inputs: about {seconds:,.1f} s",
              flush=True)
        if seconds > args.time_limit:
            raise LesionError(f"the deletion paths would take about {seconds:,.0f} s, above --time-limit "
                              f"{args.time_limit:g}; use fewer --paths, --points or --inputs, or raise --time-limit")
    from lesion.scale.executor import executor_for

    remote = args.executor not in (None, "local")  # the deletion orders on Ray workers, one order a call
    executor = executor_for(args.executor, args.workers, args.gpus_per_task, args.worker_threads)
    try:
        curve = deletion_curve(loaded.module, data.x_test, data.y_test, args.layer, fractions, args.order, args.orders,
                               args.share, args.seed, x_an, executor=executor if remote else None)
    finally:
        executor.close()
    execution = {"execution": executor.stats.to_dict()} if remote else {}
    profiles = []
    for p in range(args.paths):
        sequence = unit_order(loaded.module, args.layer, "random", np.random.default_rng(args.seed + 1000 + p), x_an)
        profiles.append(progressive_path(loaded.module, args.layer, sequence, x_an, data.x_test, data.y_test,
                                         fractions, factor=args.factor, order_seed=args.seed + 1000 + p))
    prediction = _prediction(args, loaded.module, data, *predicting) if predicting is not None else None
    predicted = [p.predicted_breakdown for p in profiles if p.predicted_breakdown is not None]
    predicted_fraction = float(np.median(predicted)) if predicted else None
    spike = ("not computed (--paths 0)" if not profiles else "no spike on any path" if predicted_fraction is None
             else f"{predicted_fraction:.3f}")
    print(f"{curve.layer} ({curve.units} {curve.unit_word}), {curve.order} order ({curve.orders} orders), clean "
          f"{curve.clean_accuracy:.4f}: break-down (accuracy below {args.share:.0%} of clean) at fraction "
          f"{_fraction(curve.breakdown_fraction)}; predicted from the acceleration spike: {spike}")
    for f, a, (lo, hi) in zip(curve.fractions, curve.accuracy, curve.accuracy_ci, strict=True):
        print(f"  {f:5.2f}  {a:.4f}  ({lo:.4f}–{hi:.4f})")
    if prediction is not None:
        print(_prediction_line(*prediction))
    if args.plot:
        breakdown_plot(args.plot, [curve], profiles, f"Break-down of {curve.layer}",
                       f"{data.name}: accuracy on {len(data.x_test)} test inputs; geometry on {len(x_an)} training "
                       f"inputs; spike factor {args.factor}")
    return {"model": loaded.to_dict(), "data": data.to_dict(), "fractions": curve.fractions,
            "accuracy": {"mean": curve.accuracy, "ci": curve.accuracy_ci, "per_order": curve.per_order},
            "clean_accuracy": curve.clean_accuracy, "breakdown_fraction": curve.breakdown_fraction,
            "predicted_breakdown_fraction": predicted_fraction, "share": args.share, "order": curve.order,
            "paths": [p.to_dict() for p in profiles], **execution,
            **({} if prediction is None else {"prediction": prediction[0].to_dict(),
                                              "measured_from": prediction[1].to_dict()})}


def _fraction(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.3f}"


def _prediction_line(p: Any, measured: Any) -> str:
    """The prediction as one line: where it stands, what it cost, its interval over orders (none for a
    deterministic predictor), and the labelled measurement from the same damage."""
    if p.details.get("already_broken"):
        told = (f"already below {p.details['share']:.0%} of the undamaged network's estimated accuracy at this "
                "damage: broken down")
    else:
        spread = (f" (95% interval over orders {p.interval[0]:.3f}–{p.interval[1]:.3f})"
                  if len(p.details["per_order"]) > 1 else " (one linearisation: no interval)")
        told = f"break-down at {p.fraction:.3f}{spread}"
    return (f"predicted without labels ({p.method}, {p.details['inputs']} unlabelled inputs, {p.forward_passes:.0f} "
            f"forward passes) from {p.start:.3f} deleted: {told}; measured with labels from there: "
            f"{_fraction(measured.fraction)}")


def _prediction_problem(args: argparse.Namespace, model: Any, data: Any) -> tuple[Any, list[int]]:
    """The unlabelled inputs and the undamaged network's beliefs for --predict, the predictor checked against
    the model (a language model takes only the probe), and the units already deleted (--from or --deleted)."""
    import numpy as np

    from lesion.geometry.breakdown_predict import BreakdownProblem

    free = BreakdownProblem(model, data.x_train[: args.predict_inputs], args.layer, args.share)
    free.check(args.predict)
    layer, width = free.layer, free.width
    if args.deleted is not None:
        if args.start:
            raise LesionError("give either --from (a random damage) or --deleted (the units already gone), not both")
        if any(u >= width for u in args.deleted) or len(set(args.deleted)) != len(args.deleted):
            raise LesionError(f"--deleted takes distinct unit indices of {layer}, 0..{width - 1}")
        return free, args.deleted
    return free, np.random.default_rng(args.seed + 77).permutation(width)[: int(round(args.start * width))].tolist()


def _prediction(args: argparse.Namespace, model: Any, data: Any, free: Any, deleted: list[int]) -> tuple[Any, Any]:
    """The label-free prediction (issue 20) from the damage `deleted`, and the measured break-down from there."""
    from lesion.geometry.breakdown_predict import measured_breakdown, predict_breakdown

    layer = free.layer
    prediction = predict_breakdown(model, free.x, layer, args.predict, deleted, args.share, seed=args.seed,
                                   problem=free)
    measured = measured_breakdown(model, data.x_test, data.y_test, layer, deleted, args.share, seed=args.seed)
    return prediction, measured


def register(sub: Any) -> None:
    """Add `lesion breakdown` to the `lesion` parser."""
    p = sub.add_parser("breakdown", help="deletion curves, damage paths and break-down points",
                       description="Accuracy as a growing fraction of a layer's units is deleted (with a 95% CI over "
                                   "random orders), the measured break-down point, and speed, ds/dt and covariant "
                                   "acceleration along progressive deletion paths with the predicted break-down "
                                   "(first spike of acceleration above FACTOR times its start).")
    add_model(p)
    add_data(p)
    p.add_argument("--layer", default="1", help="site index or name: hidden units, channels, or attention heads "
                   "(heads: random order, --paths 0) (default 1)")
    p.add_argument("--order", choices=("random", "magnitude", "metric"), default="random",
                   help="deletion order (default random)")
    p.add_argument("--orders", type=positive_int, default=5, help="random orders averaged (default 5)")
    p.add_argument("--paths", type=nonnegative_int, default=2, help="progressive deletion paths profiled (default 2)")
    p.add_argument("--points", type=positive_int, default=21, help="fractions 0..1 sampled (default 21)")
    p.add_argument("--share", type=share, default=0.9, help="break-down: accuracy below this share of clean")
    p.add_argument("--factor", type=positive_float, default=10.0, help="acceleration spike factor (default 10)")
    p.add_argument("--inputs", type=positive_int, default=100, help="training inputs for the geometry (default 100)")
    p.add_argument("--time-limit", type=positive_float, default=600.0,
                   help="refuse deletion paths estimated above this many seconds (default 600)")
    p.add_argument("--plot", metavar="PNG", type=output_file, help="write the curve and the acceleration profiles")
    p.add_argument("--predict", nargs="?", const="probe", choices=METHODS, metavar="METHOD",
                   help="also predict the break-down without labels, from unlabelled training inputs: "
                        f"{', '.join(METHODS)} (default probe, the most accurate measured; see the README)")
    p.add_argument("--from", dest="start", type=fraction_below_one, default=0.0, metavar="T",
                   help="with --predict: the network already lost this fraction of the layer's units (a random "
                        "set); predicts, and measures with labels, from there (default 0)")
    p.add_argument("--deleted", type=unit_list, metavar="U1,U2,...",
                   help="with --predict: the units of the layer already gone (0-based indices), instead of --from")
    p.add_argument("--predict-inputs", type=positive_int, default=1000, metavar="N",
                   help="unlabelled training inputs for --predict (default 1000)")
    add_executor(p)
    add_common(p)
    p.set_defaults(run=_cmd_breakdown)
