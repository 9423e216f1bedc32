"""`lesion crash worst` (issue 19): the certified worst case of crashes, beside Erf, and certification queries."""

from __future__ import annotations

import argparse
from typing import Any

from lesion.cli.options import Formatter, add_common, add_data, positive_float, positive_int
from lesion.errors import LesionError


def at_least(value: int, capped: bool) -> str:
    """A tolerated count as printed: "≥ F" when it is the top of the tested range (more might pass)."""
    return f"≥ {value}" if capped else str(value)


def certification(results: list[dict[str, Any]], erf: list[float], erf_av: list[float], epsilon: float,
                  width: int | None = None) -> dict[str, Any]:
    """How many crashes are tolerated within ε (SPEC §2.3, §6.3) by the certificate (every set, every input), by
    the crash sets found (no more can be), and by Erf and Erf_av. An answer equal to the largest count tested
    is only a lower bound (`capped`: the true one may be larger) unless that count crashes all `width` units."""
    from lesion.crash.tolerance import largest_within  # lazy: the CLI starts without torch

    faults = [r["faults"] for r in results]
    check_certifiable(faults)
    out: dict[str, Any] = {
        "epsilon": epsilon,
        "certified": largest_within([r["omega_max_upper"] for r in results], epsilon, faults),
        "at_most": largest_within([r["omega_max_lower"] for r in results], epsilon, faults),
        "by_erf": largest_within(erf, epsilon, faults),
        "by_erf_av": largest_within(erf_av, epsilon, faults)}
    top = faults[-1]
    more = width is None or top < width
    out["tested_up_to"] = top
    out["capped"] = {key: more and out[key] == top for key in ("certified", "at_most", "by_erf", "by_erf_av")}
    return out


def check_certifiable(faults: list[int]) -> None:
    """--epsilon reads the curve from f = 1: refuse other --faults before any work."""
    if faults != list(range(1, len(faults) + 1)):
        raise LesionError("--epsilon needs --faults to start at 1 without gaps (a range like 1-10)")


def _bracket(lower: float, upper: float, exact: bool) -> str:
    return f"{upper:.6g}" if exact else f"[{lower:.6g}, {upper:.6g}]"


def _cmd_worst(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.cli.crash import _inputs, _model_structure, parse_layers
    from lesion.crash import budget_bound, output_bounds
    from lesion.crash.worst import worst_case

    faults = args.faults
    if args.epsilon is not None:
        check_certifiable(faults)
    loaded, structure = _model_structure(args)
    layers = parse_layers(args.layer, structure)
    if len(layers) != 1:
        raise LesionError("crash worst takes one hidden layer (--layer L)")
    layer = layers[0]
    if layer > structure.depth:
        raise LesionError(f"hidden layer {layer} does not exist: the model has {structure.depth}")
    width = structure.widths[layer - 1]
    if max(faults) > width:
        raise LesionError(f"cannot crash {max(faults)} of the {width} units of hidden layer {layer}")
    try:  # Erf beside the certificate needs K ([R] Eq. 4, SPEC §2.2): asked for before the work, not after
        K = structure.lipschitz(args.K)
    except LesionError as unknown:
        gelu = " (GELU's: max GELU' = Φ(√2) + √2·φ(√2) = 1.1289)" if "GELU" in str(unknown) else ""
        raise LesionError(f"Erf, printed beside the certificate, needs the Lipschitz constant K of the activation "
                          f"([R] Eq. 4), and {unknown}{gelu}") from None
    data, x = _inputs(args, loaded)
    C = output_bounds(structure, x)
    results = worst_case(structure, x, layer, faults, args.output, args.time_limit)
    scale = 0.5 if args.output == "softmax" else 1.0  # softmax is ½-Lipschitz in the ∞-norm
    bounds = [budget_bound(structure, f, (layer,), C, K) for f in faults]
    erf = [b.erf * scale for b in bounds]
    erf_av = [b.erf_av * scale for b in bounds]
    rows = [r.to_dict() for r in results]
    for r, e in zip(rows, erf, strict=True):
        r["erf_over_upper"] = e / r["omega_max_upper"] if r["omega_max_upper"] > 0 else None
    print(f"hidden layer {layer} ({width} units), {len(x):,} inputs, {args.output} outputs, ‖·‖∞; "
          f"Erf{'/2' if scale != 1 else ''} with K = {K:g} and C measured on these inputs")
    for r, row, e in zip(results, rows, erf, strict=True):
        ratio = row["omega_max_ratio"]
        gap = "exact" if r.omega_max_exact else f"upper/lower {'n/a' if ratio is None else f'{ratio:.3f}'}"
        times = ("the certificate is 0" if row["erf_over_upper"] is None
                 else f"{row['erf_over_upper']:.1f}× the certificate")
        print(f"f={r.faults}: Omega_max {_bracket(r.omega_max_lower, r.omega_max_upper, r.omega_max_exact)} ({gap}; "
              f"Erf {e:.4g}, {times}), Omega_mav "
              f"{_bracket(r.omega_mav_lower, r.omega_mav_upper, row['omega_mav_exact'])}, Omega_worst_set "
              f"{_bracket(r.omega_worst_set_lower, r.omega_worst_set_upper, row['omega_worst_set_exact'])}"
              f"{'' if r.exact else ' (not every figure exact)'} [{r.seconds:.1f} s]")
    out: dict[str, Any] = {"model": loaded.to_dict(), "data": data.to_dict(), "layer": layer,
                           "output": args.output, "norm": "inf", "inputs": len(x), "results": rows,
                           "erf": erf, "erf_av": erf_av, "K": K, "C": list(C.values), "C_source": C.source}
    if args.epsilon is not None:
        query = certification(rows, erf, erf_av, args.epsilon, width)
        out["certification"] = query
        capped = query["capped"]
        top = query["tested_up_to"]
        most = (f"no found set exceeds ε up to f = {top}" if capped["at_most"] else
                f"at most {top}, every unit" if query["at_most"] == top else
                f"at most {query['at_most']} (a found set exceeds ε at f = {query['at_most'] + 1})")
        print(f"within ε = {args.epsilon:g}: {at_least(query['certified'], capped['certified'])} crashes certified "
              f"(every crash set, every input), {most}; Erf says {at_least(query['by_erf'], capped['by_erf'])}, "
              f"Erf_av {at_least(query['by_erf_av'], capped['by_erf_av'])}"
              + (f" (≥: the tested range ends at f = {query['tested_up_to']}; give more --faults for the exact "
                 "count)" if any(capped.values()) else ""))
    return out


def register(inner: Any) -> None:
    """Add `lesion crash worst` to the `lesion crash` sub-parsers."""
    from lesion.cli.crash import _add_model_only, fault_counts

    p = inner.add_parser("worst", help="certified worst case: Omega_max with a proof, beyond enumeration",
                         formatter_class=Formatter,
                         description="Omega_max, Omega_mav and Omega_worst_set bracketed by [lower, upper] for each "
                                     "crash count: the lower figures attained by crash sets found and evaluated, "
                                     "the upper ones holding for every crash set (bound propagation and branch "
                                     "and bound; exact for the last hidden layer with raw outputs). ‖·‖∞ only.")
    _add_model_only(p)
    add_data(p)
    p.add_argument("--layer", default="1", help="the hidden layer of the crashes (1-based index or its name)")
    p.add_argument("--faults", required=True, type=fault_counts,
                   help="crashed units: an integer, a range 1-5 or an increasing list 1,2,4")
    p.add_argument("--output", choices=("raw", "softmax"), default="raw", help="raw outputs or softmax (default raw)")
    p.add_argument("--time-limit", type=positive_float, default=60.0,
                   help="seconds per crash count for branch and bound and search; when they run out, the best "
                        "certificate so far (default 60)")
    p.add_argument("--epsilon", type=positive_float,
                   help="also answer: how many crashes are certified to keep Omega_max within ε (needs --faults "
                        "1-F)")
    p.add_argument("--K", type=positive_float,
                   help="Lipschitz constant of the activation, for Erf (default: from the activation; needed for "
                        "one whose constant is not known, e.g. GELU, whose constant is 1.1289)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="inputs: test (default) or train")
    p.add_argument("--inputs", type=positive_int, metavar="N", help="only the first N inputs")
    add_common(p)
    p.set_defaults(run=_cmd_worst)
