"""Sub-commands `lesion spectrum` and `lesion attack` ([G] §2–3, SPEC §3.1–3.4): parse, call, print."""

from __future__ import annotations

import argparse
from typing import Any

from lesion.cli.options import (
    add_common,
    add_data,
    add_model,
    output_file,
    positive_float,
    positive_int,
)
from lesion.errors import LesionError


def _analysis_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    from lesion.cli.options import load_model_and_data

    loaded, data = load_model_and_data(args)
    x = data.x_train if args.split == "train" else data.x_test
    y = data.y_train if args.split == "train" else data.y_test
    return loaded, data, x[: args.inputs], (None if y is None else y[: args.inputs])


def announce_cost(op: Any, k: int, time_limit: float, method: str = "auto", with_trace: bool = False,
                  full: bool = False) -> None:
    """When the operator route (Lanczos) will run: print what one g·v costs and what Lanczos for the top k (and,
    `with_trace`, the spectrum's trace) will take (SPEC §3.2), before the work, and refuse when even the low end
    is above `time_limit` (issue 14). `full` (--all): the route every nonzero eigenvalue takes, or its refusal."""
    from lesion.geometry.spectrum import full_refusal, route_for, trace_products

    route = route_for(op, method, full)
    if full and route != "gram":
        raise LesionError(full_refusal(op, method))
    k = min(k, op.inputs * op.m)  # g has rank at most m·|X|: no more eigenpairs are computed
    if route == "gram":
        print(f"Gram route: K of {op.inputs * op.m:,}² from {op.inputs:,} rows of {op.m} outputs", flush=True)
        return
    seconds = op.time_matvec()
    products = max(2 * k + 1, 20)
    trace = trace_products(op) if with_trace else 0
    low, high = (2 * products + trace) * seconds, (4 * products + trace) * seconds
    for_trace = f" and {trace} for the trace" if trace else ""
    print(f"one g·v product on {op.inputs:,} rows and {op.n:,} weights takes {seconds:.2g} s; Lanczos for the top "
          f"{k} needs some {2 * products}–{4 * products} products{for_trace}: about {low:.1f}–{high:.1f} s (the Gram "
          "route, when it applies, is usually faster)", flush=True)
    if low > time_limit:
        raise LesionError(f"the spectrum would take at least about {low:,.0f} s, above --time-limit "
                          f"{time_limit:g}; use fewer --inputs or a smaller --top, or raise --time-limit")


def _cmd_spectrum(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.geometry.metric import MetricOperator
    from lesion.geometry.spectrum import spectrum

    loaded, data, x, _ = _analysis_inputs(args)
    op = MetricOperator(loaded.module, x, args.output)
    announce_cost(op, args.top, args.time_limit, args.method, with_trace=True, full=args.all)
    result = spectrum(op, args.top, args.tau, full=args.all, method=args.method, seed=args.seed)
    shown = ", ".join(f"{v:.4g}" for v in result.eigenvalues[:8])
    if len(result.eigenvalues) > 8:
        shown += f", … ({len(result.eigenvalues)} in the JSON)"
    clamped = result.extra.get("top_clamped")
    if clamped:  # g = JᵀJ has rank at most m·|X|: no more nonzero eigenvalues exist
        shown += (f" (only the top {clamped['computed']}, not --top {args.top}: g has rank at most {op.m} outputs × "
                  f"{op.inputs:,} rows = {clamped['rank_bound']:,})")
    elif len(result.eigenvalues) < args.top:
        shown += f" (all {len(result.eigenvalues)}: g has rank at most {op.m} outputs × {op.inputs:,} rows)"
    rows = f" ({result.inputs:,} (input, token) rows)" if result.inputs != len(x) else ""
    print(f"g on {len(x)} {args.split} inputs{rows} of {data.name} ({args.output} outputs), "
          f"n = {result.parameters:,}; {result.method} route, {result.seconds:.1f} s")
    print(f"top eigenvalues: {shown}")
    ci = result.extra.get("trace_ci")
    trace = f"trace {result.trace:.6g}" if not ci else \
        f"trace ≈ {result.trace:.6g} ({result.extra.get('trace_method', 'estimated')}; 95% CI {ci[0]:.6g}–{ci[1]:.6g})"
    floor = result.extra.get("resolution_floor") or 0.0
    rho = f"rho({args.tau:g})" if floor <= args.tau else \
        f"rho above the float resolution floor {floor:.3g} (> tau {args.tau:g}; rho(tau) is at least this)"
    ranked = f", rank {result.rank}, {rho} = {result.rho:.3e} ({result.vulnerable_directions} of n directions; " \
        "rank ≤ m·|X|)" if result.rank is not None else ""
    print(trace + ranked)
    if args.plot:
        from lesion.report.plots import spectrum_plot  # matplotlib only when a plot is asked for

        spectrum_plot(args.plot, {loaded.source: result.eigenvalues}, args.tau, "Spectrum of the metric tensor g",
                      f"{data.name}, {result.inputs} inputs, {args.output} outputs, n = {result.parameters:,}, "
                      f"{'all nonzero eigenvalues' if result.all_nonzero else f'top {len(result.eigenvalues)}'}",
                      density=result.all_nonzero)
    out = result.to_dict()
    out["eigenvalues"] = out["eigenvalues"] if result.all_nonzero else out["eigenvalues"][: args.top]
    return {"model": loaded.to_dict(), "data": data.to_dict(), **out}


def _cmd_attack(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.geometry.attack import attack

    loaded, data, x, y = _analysis_inputs(args)
    if y is None or data.y_test is None:
        raise LesionError(f"{args.data} has no labels: attacks maximise the loss and report accuracy")
    from lesion.geometry.metric import MetricOperator

    op = MetricOperator(loaded.module, x)
    announce_cost(op, args.top, args.time_limit)
    result = attack(loaded.module, x, y, data.x_test, data.y_test, args.sigma, args.directions, args.top, args.seed,
                    bitflips=not args.no_bitflips)
    r = result.random_accuracy
    print(f"σ = {args.sigma}: clean accuracy {result.clean_accuracy:.4f}; random directions ({args.directions}) mean "
          f"{r['mean']:.4f} (95% CI {r['ci'][0]:.4f}–{r['ci'][1]:.4f}), min {r['min']:.4f}, max {r['max']:.4f}")
    k = result.details["k"]
    if k < args.top:  # g = JᵀJ has rank at most m·|X|: no more eigenvectors with a nonzero eigenvalue
        bound = (f"g has rank at most {op.m} outputs × {op.inputs:,} rows = {op.m * op.inputs:,}"
                 if k == op.m * op.inputs else f"n = {op.n:,} weights")
        print(f"the top {k} eigenvectors, not --top {args.top}: {bound}")
    formats = "/".join(sorted(set(result.details["bitflip_formats"].values())))
    print(f"adversarial (span of the top {k} eigenvectors) {result.adversarial_accuracy:.4f}; loss gradient "
          f"{result.gradient_accuracy:.4f}; top eigenvector {result.top_eigenvector_accuracy:.4f}"
          + ("" if args.no_bitflips else f"; greedy {formats} bit flips ({len(result.details['bitflips'])}, "
                                          f"‖w − w0‖ ≤ σ) {result.bitflip_accuracy:.4f}"))
    c = result.collapse
    print(f"under the adversarial perturbation {c['share']:.1%} of the test inputs are classified as "
          f"class {c['class']}")
    return {"model": loaded.to_dict(), "data": data.to_dict(), **result.to_dict()}


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time-limit", type=positive_float, default=600.0,
                   help="refuse when the estimated time of the eigenvalues is above this many seconds (default 600)")
    p.add_argument("--inputs", type=positive_int, default=1000, help="number of analysis inputs |X| (default 1000)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="take the analysis inputs from the training split (default) or the test split")


def register(sub: Any) -> None:
    """Add `lesion spectrum` and `lesion attack` to the `lesion` parser."""
    p = sub.add_parser("spectrum", help="spectrum of the metric tensor g",
                       description="Eigenvalues of g = mean_x J_xᵀJ_x (SPEC §3.1–3.2): the top K by Lanczos (through "
                                   "the layer factors of an MLP, on K = AAᵀ or on the operator g·v) and the trace; "
                                   "with --all, every nonzero eigenvalue by the Gram route (when m·|X| is small "
                                   "enough), the rank and rho(tau) = fraction of the n directions with eigenvalue "
                                   "above tau.")
    add_model(p)
    add_data(p)
    _add_inputs(p)
    p.add_argument("--top", type=positive_int, default=20,
                   help="number of top eigenvalues (default 20), by Lanczos through the MLP factors or on the operator")
    p.add_argument("--all", action="store_true",
                   help="all nonzero eigenvalues (Gram route), with the rank and rho(tau); default: only the top K")
    p.add_argument("--output", choices=("raw", "softmax"), default="raw", help="outputs differentiated")
    p.add_argument("--method", choices=("auto", "gram", "lanczos"), default="auto", help="route (default auto)")
    p.add_argument("--tau", type=positive_float, default=1e-3, help="threshold of rho (default 1e-3, [G] §3)")
    p.add_argument("--plot", metavar="PNG", type=output_file, help="write a spectrum plot ([G] Fig. 2A style)")
    add_common(p)
    p.set_defaults(run=_cmd_spectrum)

    p = sub.add_parser("attack", help="random against adversarial weight perturbations",
                       description="At weight-perturbation norm sigma: accuracy under random directions, the "
                                   "adversarial direction in the span of the top eigenvectors of g, the loss "
                                   "gradient, the top eigenvector, and greedy bit flips (SPEC §3.3–3.4). Directions "
                                   "are designed on the analysis inputs and evaluated on the test split.")
    add_model(p)
    add_data(p)
    _add_inputs(p)
    p.add_argument("--sigma", type=positive_float, default=1.0, help="perturbation norm ‖du‖ > 0 (default 1)")
    p.add_argument("--directions", type=positive_int, default=1000, help="random directions (default 1000)")
    p.add_argument("--top", type=positive_int, default=20, help="eigenvectors spanning the attack (default 20)")
    p.add_argument("--no-bitflips", action="store_true", help="skip the greedy bit-flip search")
    add_common(p)
    p.set_defaults(run=_cmd_attack)
