"""`lesion crash worst` (issue 19): the certified worst case of crashes, beside Erf, and certification queries."""

from __future__ import annotations

import argparse
from typing import Any

from lesion.cli.options import Formatter, add_common, add_data, positive_float, positive_int
from lesion.errors import LesionError


def certification(results: list[dict[str, Any]], erf: list[float], erf_av: list[float], epsilon: float
                  ) -> dict[str, Any]:
    """How many crashes are tolerated within ε by the certificate (every set, every input), by the crash sets
    found (no more can be), and by Erf and Erf_av."""
    from lesion.crash.tolerance import largest_within  # lazy: the CLI starts without torch

    faults = [r["faults"] for r in results]
    if faults != list(range(1, len(faults) + 1)):
        raise LesionError("--epsilon needs --faults to start at 1 without gaps (a range like 1-10)")
    return {"epsilon": epsilon,
            "certified": largest_within([r["omega_max_upper"] for r in results], epsilon, faults),
            "at_most": largest_within([r["omega_max_lower"] for r in results], epsilon, faults),
            "by_erf": largest_within(erf, epsilon, faults),
            "by_erf_av": largest_within(erf_av, epsilon, faults)}


def _cmd_worst(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.cli.crash import _inputs, _model_structure, parse_faults, parse_layers
    from lesion.crash import budget_bound, output_bounds
    from lesion.crash.worst import worst_case

    loaded, structure = _model_structure(args)
    data, x = _inputs(args, loaded)
    layers = parse_layers(args.layer, structure)
    if len(layers) != 1:
        raise LesionError("crash worst takes one hidden layer (--layer L)")
    layer = layers[0]
    if layer > structure.depth:
        raise LesionError(f"hidden layer {layer} does not exist: the model has {structure.depth}")
    faults = parse_faults(args.faults)
    width = structure.widths[layer - 1]
    if max(faults) > width:
        raise LesionError(f"cannot crash {max(faults)} of the {width} units of hidden layer {layer}")
    results = worst_case(structure, x, layer, faults, args.output, args.time_limit)
    C = output_bounds(structure, x)
    scale = 0.5 if args.output == "softmax" else 1.0  # softmax is ½-Lipschitz in the ∞-norm
    bounds = [budget_bound(structure, f, (layer,), C) for f in faults]
    erf = [b.erf * scale for b in bounds]
    erf_av = [b.erf_av * scale for b in bounds]
    rows = [r.to_dict() for r in results]
    for r, e in zip(rows, erf, strict=True):
        r["erf_over_upper"] = e / r["omega_max_upper"] if r["omega_max_upper"] > 0 else None
    print(f"hidden layer {layer} ({width} units), {len(x):,} inputs, {args.output} outputs, ‖·‖∞; "
          f"Erf{'/2' if scale != 1 else ''} with C measured on these inputs")
    for r, e in zip(results, erf, strict=True):
        kind = "exact" if r.omega_max_lower == r.omega_max_upper else f"upper/lower {r.max_ratio:.3f}"
        print(f"f={r.faults}: Omega_max in [{r.omega_max_lower:.6g}, {r.omega_max_upper:.6g}] ({kind}; Erf "
              f"{e:.4g}, {e / max(r.omega_max_upper, 1e-300):.1f}× the certificate), Omega_mav in "
              f"[{r.omega_mav_lower:.6g}, {r.omega_mav_upper:.6g}], Omega_worst_set in "
              f"[{r.omega_worst_set_lower:.6g}, {r.omega_worst_set_upper:.6g}] [{r.seconds:.1f} s]")
    out: dict[str, Any] = {"model": loaded.to_dict(), "data": data.to_dict(), "layer": layer,
                           "output": args.output, "norm": "inf", "inputs": len(x), "results": rows,
                           "erf": erf, "erf_av": erf_av, "C": list(C.values), "C_source": C.source}
    if args.epsilon is not None:
        query = certification(rows, erf, erf_av, args.epsilon)
        out["certification"] = query
        print(f"within ε = {args.epsilon:g}: {query['certified']} crashes certified (every crash set, every input),"
              f" at most {query['at_most']} (a found set exceeds ε beyond); Erf says {query['by_erf']}, Erf_av "
              f"{query['by_erf_av']}")
    return out


def register(inner: Any) -> None:
    """Add `lesion crash worst` to the `lesion crash` sub-parsers."""
    from lesion.cli.crash import _add_model_only

    p = inner.add_parser("worst", help="certified worst case: Omega_max with a proof, beyond enumeration",
                         formatter_class=Formatter,
                         description="Omega_max, Omega_mav and Omega_worst_set bracketed by [lower, upper] for each "
                                     "crash count: the lower figures attained by crash sets found and evaluated, "
                                     "the upper ones holding for every crash set (bound propagation and branch "
                                     "and bound; exact for the last hidden layer with raw outputs). ‖·‖∞ only.")
    _add_model_only(p)
    add_data(p)
    p.add_argument("--layer", default="1", help="the hidden layer of the crashes (1-based index or its name)")
    p.add_argument("--faults", required=True, help="crashed units: an integer, a range 1-5 or a list 1,2,4")
    p.add_argument("--output", choices=("raw", "softmax"), default="raw", help="raw outputs or softmax (default raw)")
    p.add_argument("--time-limit", type=positive_float, default=60.0,
                   help="seconds per crash count for branch and bound and search; when they run out, the best "
                        "certificate so far (default 60)")
    p.add_argument("--epsilon", type=positive_float,
                   help="also answer: how many crashes are certified to keep Omega_max within ε (needs --faults "
                        "1-F)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="inputs: test (default) or train")
    p.add_argument("--inputs", type=positive_int, metavar="N", help="only the first N inputs")
    add_common(p)
    p.set_defaults(run=_cmd_worst)
