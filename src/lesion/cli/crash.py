"""Sub-commands `lesion crash omega|bound|tolerance` ([R], SPEC §2): parse, call `lesion.crash`, print."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from lesion.cli.options import (
    Formatter,
    add_common,
    add_data,
    add_device,
    add_executor,
    binary_output_file,
    nonnegative_float,
    positive_float,
    positive_int,
)
from lesion.errors import LesionError


def parse_faults(text: str) -> list[int]:
    """`3`, `1-5` or `1,2,4` → crash counts, positive integers in increasing order without repeats (the answers
    read a curve from its start)."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            values = list(range(lo, hi + 1))
            if hi < lo:
                raise LesionError(f"bad --faults {text!r}: a range runs upwards, like {hi}-{lo}")
        else:
            values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise LesionError(f"bad --faults {text!r}: give a positive integer, a range 1-5 or a list 1,2,4")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise LesionError(f"bad --faults {text!r}: list the crash counts in increasing order without repeats, "
                          f"like {','.join(str(v) for v in sorted(set(values)))}")
    return values


def fault_counts(text: str) -> list[int]:
    """`parse_faults` as an argparse type: a bad --faults is refused at parse time, in one line."""
    try:
        return parse_faults(text)
    except LesionError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"bad --faults {text!r}: ")) from None


def parse_layers(text: str, structure: Any = None) -> tuple[int, ...]:
    """`1` or `1,2` → 1-based hidden-layer indices; with the MLP's `structure`, also the site addresses of its
    hidden layers (SPEC §6.1: the activation's path, `path#0`, or the Linear layer's name)."""
    layers = []
    for item in (v.strip() for v in text.split(",")):
        if item.isdigit():
            layers.append(int(item))
            continue
        name = item[:-2] if item.endswith("#0") else item
        hidden = list(structure.activation_names) if structure is not None else []
        linear = list(structure.linear_names[:-1]) if structure is not None else []
        if name in hidden or name in linear:
            layers.append((hidden.index(name) if name in hidden else linear.index(name)) + 1)
        else:
            layers = []
            break
    if not layers or min(layers) < 1:
        names = "" if structure is None else f", or their sites {', '.join(structure.activation_names)}"
        raise LesionError(f"bad --layer {text!r}: give 1-based hidden-layer indices like 1 or 1,2{names}")
    return tuple(layers)


def _model_structure(args: argparse.Namespace) -> tuple[Any, Any]:
    from lesion.crash import mlp_structure
    from lesion.nets import load_model, non_finite_parameters

    loaded = load_model(args.model, args.weights, seed=args.seed)
    bad = non_finite_parameters(loaded.module)
    if bad:
        raise LesionError(f"the model has NaN/inf weights in {', '.join(bad)}")
    return loaded, mlp_structure(loaded.module)


def _inputs(args: argparse.Namespace, loaded: Any) -> tuple[Any, Any]:
    from lesion.data import load
    from lesion.nets import validate_model

    data = load(args.data)
    x = data.x_train if getattr(args, "split", "test") == "train" else data.x_test
    if getattr(args, "inputs", None):
        x = x[: args.inputs]
    validate_model(loaded.module, x, None, data.name)
    return data, x


def _output_bounds(args: argparse.Namespace, structure: Any, x: Any) -> Any:
    from lesion.crash import output_bounds

    given = None if args.C is None else [float(v) for v in args.C.split(",")]
    box = tuple(float(v) for v in args.input_range.split(",")) if args.input_range else None
    if box is not None and len(box) != 2:
        raise LesionError("--input-range takes LO,HI")
    return output_bounds(structure, x, given, box)


def _cmd_omega(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.crash import CrashBudget, exact_omega, monte_carlo_omega, plan
    from lesion.crash.structure import hidden_activations
    from lesion.scale.executor import executor_for

    try:
        loaded, structure = _model_structure(args)
    except LesionError as not_mlp:
        return _site_omega(args, not_mlp)
    data, x = _inputs(args, loaded)
    layers = parse_layers(args.layer, structure)
    if max(layers) > structure.depth:
        raise LesionError(f"hidden layer {max(layers)} does not exist: the model has {structure.depth}")
    widths = tuple(structure.widths[layer - 1] for layer in layers)
    hidden = hidden_activations(structure, x)[0].numpy()  # for the plan: the silent units the engine skips
    results = []
    remote = args.executor not in (None, "local")
    executor = executor_for(args.executor, args.workers, args.gpus_per_task, args.worker_threads)
    faults = args.faults
    several = len(faults) > 1 and args.checkpoint is not None
    kept = []
    try:  # one pool of workers for every budget
        for f in faults:
            budget = CrashBudget(layers, widths, f)
            # several budgets: a checkpoint each (FILE.f3.npz), every finished one kept until all have finished,
            # so that the same command run again after an interrupt reads them back and resumes the one cut short
            checkpoint = args.checkpoint if not several else _budget_checkpoint(args.checkpoint, f)
            if args.samples or args.ci_width:
                result = monte_carlo_omega(structure, x, budget, args.norm, args.output, args.samples,
                                           args.ci_width, args.seed, executor=executor if remote else None)
                _add_certificate(result, structure, x, args)
            else:
                estimate = plan(structure, budget, len(x), args.output, args.engine, hidden)
                print(f"{budget.describe()}: {estimate.describe()}")
                result = exact_omega(structure, x, budget, args.norm, args.output, args.engine,
                                     checkpoint=checkpoint, time_limit=args.time_limit,
                                     executor=executor if remote else None, keep_checkpoint=several)
                kept.append(checkpoint)
            if remote:
                pairs = (result.samples if not result.exact else result.sets) * result.inputs
                result.extra["execution"] = {**executor.stats.to_dict(),
                                             "pairs_per_second": pairs / max(result.seconds, 1e-9)}
            results.append(result)
            _print_omega(result)
    finally:
        executor.close()
    for path in kept if several else []:  # every budget finished: their states are no longer needed
        Path(path).expanduser().unlink(missing_ok=True)
    return {"model": loaded.to_dict(), "data": data.to_dict(), "results": [r.to_dict() for r in results]}


def _budget_checkpoint(path: str, faults: int) -> str:
    """FILE.fK.npz for the budget of K faults (FILE's own suffix kept before it)."""
    return str(Path(path).expanduser().with_name(f"{Path(path).name}.f{faults}.npz"))


def _add_certificate(result: Any, structure: Any, x: Any, args: argparse.Namespace) -> None:
    """Monte Carlo's max-type figures are lower bounds: bracket them with the certified worst case (issue 19)
    when it applies (one layer, ∞-norm) and --certify-seconds allows."""
    if not args.certify_seconds or args.norm != "inf" or len(result.layers) != 1:
        return
    from lesion.crash.worst import worst_case

    worst = worst_case(structure, x, result.layers[0], [result.faults], args.output, args.certify_seconds)[0]
    keys = ("omega_max_lower", "omega_max_upper", "omega_mav_lower", "omega_mav_upper", "omega_worst_set_lower",
            "omega_worst_set_upper")
    result.extra["certified"] = {k: getattr(worst, k) for k in keys}
    print(f"f={result.faults}: certified Omega_max in [{worst.omega_max_lower:.6g}, {worst.omega_max_upper:.6g}], "
          f"Omega_mav in [{worst.omega_mav_lower:.6g}, {worst.omega_mav_upper:.6g}] (every crash set; "
          f"`lesion crash worst`)")


def _print_omega(result: Any) -> None:
    label = "exact" if result.exact else f"Monte Carlo, {result.samples} sets; max-type figures are lower bounds"
    ci = (f" (95% CI {result.omega_av_ci[0]:.6g}–{result.omega_av_ci[1]:.6g})" if result.omega_av_ci else "")
    print(f"f={result.faults}: Omega_av {result.omega_av:.6g}{ci} ± {result.omega_std:.3g} (std), Omega_mav "
          f"{result.omega_mav:.6g}, Omega_max {result.omega_max:.6g}, Omega_worst_set {result.omega_worst_set:.6g} "
          f"[{label}; {result.seconds:.1f} s]")


def _site_omega(args: argparse.Namespace, not_mlp: LesionError) -> dict[str, Any]:
    """Omega of any model through its sites (`--layer` takes site addresses: index, name, comma-separated)."""
    from lesion.cli.options import load_model_and_data
    from lesion.crash.site_engine import site_crash_omega
    from lesion.damage import Target

    if args.engine not in ("auto", "general"):
        raise not_mlp
    if args.checkpoint is not None or args.executor not in (None, "local"):
        given = "--checkpoint" if args.checkpoint is not None else "--executor"
        raise LesionError(f"{given} goes with an MLP's exact engines; this model is not one ({not_mlp}), so its "
                          "Omega runs through its sites, in this process, without a checkpoint: leave it out")
    loaded, data = load_model_and_data(args)
    x = data.x_train if getattr(args, "split", "test") == "train" else data.x_test
    if getattr(args, "inputs", None):
        x = x[: args.inputs]
    target = Target(loaded.module, example=x[:2])
    sites = [target.site(address.strip(), "unit") for address in args.layer.split(",")]
    print(f"not an MLP ({not_mlp}); Omega through the sites {', '.join(s.name for s in sites)}, by the damage "
          f"engine on {loaded.module.__class__.__name__}'s own forward")
    results = []
    for f in args.faults:
        result = site_crash_omega(loaded.module, x, sites, f, args.norm, args.output, args.samples, args.ci_width,
                                  args.seed, args.time_limit)
        results.append(result)
        _print_omega(result)
    return {"model": loaded.to_dict(), "data": data.to_dict(), "results": [r.to_dict() for r in results]}


def _cmd_bound(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.crash import budget_bound

    loaded, structure = _model_structure(args)
    data, x = (None, None)
    if args.data:
        data, x = _inputs(args, loaded)
    C = _output_bounds(args, structure, x)
    layers = parse_layers(args.layer, structure)
    results = [budget_bound(structure, f, layers, C, args.K) for f in args.faults]
    note = " (C measured on the data: the bound holds on these inputs)" if C.data_dependent else ""
    print(f"K = {results[0].K:g}; C = {', '.join(f'{c:.4g}' for c in C.values)} from {C.source}{note}")
    for r in results:
        print(f"f={sum(r.faults)} (per layer {list(r.faults)}): Erf {r.erf:.6g} (log10 {r.log10_erf:.3f}), "
              f"Erf_av {r.erf_av:.6g} (log10 {r.log10_erf_av:.3f})")
    return {"model": loaded.to_dict(), "data": None if data is None else data.to_dict(),
            "faults": [sum(r.faults) for r in results], "erf": [r.erf for r in results],
            "erf_av": [r.erf_av for r in results], "K": results[0].K, "C": list(C.values), "C_source": C.source,
            "data_dependent": C.data_dependent, "bounds": [r.to_dict() for r in results]}


def _cmd_tolerance(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.cli.crash_worst import at_least
    from lesion.crash import tolerance

    rows = []
    for reference in args.model:
        one = argparse.Namespace(**{**vars(args), "model": reference})
        loaded, structure = _model_structure(one)
        layers = parse_layers(args.layer, structure)
        x = _inputs(one, loaded)[1] if args.data else None
        if args.input_range is None and x is None and args.C is None:
            one.input_range = "0,1"  # without data, C of ReLU layers from inputs in [0, 1]^d (stated in output)
        C = _output_bounds(one, structure, x)
        result = tolerance(structure, args.epsilon, C, layers, args.epsilon_own, args.K, x, args.max_faults,
                           seed=args.seed)
        rows.append({"model": loaded.to_dict(), "tolerance": result.to_dict()})
        capped = result.capped
        measured = ("" if result.by_omega_av is None
                    else f", by measured Omega_av {at_least(result.by_omega_av, capped['by_omega_av'])}")
        ends = (f"; ≥: every count up to {result.examined} (the last examined, --max-faults) is within the budget"
                if any(capped.values()) else "")
        print(f"{reference}: tolerates {at_least(result.by_erf, capped['by_erf'])} crashes by Erf (worst case), "
              f"{at_least(result.by_erf_av, capped['by_erf_av'])} by Erf_av{measured} (ε = {args.epsilon}, "
              f"ε' = {args.epsilon_own}, C from {C.source}{ends})")

    def shown(i: int) -> str:
        t = rows[i]["tolerance"]
        return f"{args.model[i]} ({at_least(t['by_erf_av'], t['capped']['by_erf_av'])})"

    ranking = sorted(range(len(rows)), key=lambda i: -rows[i]["tolerance"]["by_erf_av"])
    if len(rows) > 1:
        line = shown(ranking[0])
        for before, i in zip(ranking, ranking[1:], strict=False):
            tied = rows[i]["tolerance"]["by_erf_av"] == rows[before]["tolerance"]["by_erf_av"]
            # a capped count is a lower bound: the order against it is unknown (?) or only ≥
            relation = ("?" if rows[i]["tolerance"]["capped"]["by_erf_av"] else
                        "≥" if tied and rows[before]["tolerance"]["capped"]["by_erf_av"] else "=" if tied else ">")
            line += f" {relation} {shown(i)}"
        print(f"ranking by Erf_av tolerance (no data needed): {line}")
    return {"networks": rows, "ranking": [args.model[i] for i in ranking]}


def _add_bound_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--K", type=positive_float,
                   help="Lipschitz constant of the activation (default: from the activation)")
    p.add_argument("--C", help="bound on the units' outputs, one value or one per hidden layer (default: 1 for "
                               "bounded activations, else the maximum measured on --data, or --input-range)")
    p.add_argument("--input-range", metavar="LO,HI",
                   help="data-free C for ReLU: interval bounds for inputs in [LO, HI]^d")


def _add_model_only(p: argparse.ArgumentParser, many: bool = False) -> None:
    p.add_argument("--model", required=True, metavar="M", action="append" if many else None,
                   help="an MLP: lesion checkpoint, torch.save'd module, package.module:factory (with --weights) "
                        "or preset:NAME" + (" (repeat to compare networks)" if many else ""))
    p.add_argument("--weights", metavar="FILE", help="state-dict file for --model package.module:factory")


def register(sub: Any) -> None:
    """Add `lesion crash` and its sub-commands to the `lesion` parser."""
    crash = sub.add_parser("crash", help="crash robustness of an MLP ([R]): Omega, Erf bound, tolerance",
                           description="Crash robustness of a multilayer perceptron ([R], SPEC §2).")
    inner = crash.add_subparsers(dest="crash_command", metavar="SUBCOMMAND", required=True,
                                 help="omega, worst, bound or tolerance")

    p = inner.add_parser("omega", help="measured error Omega over crash sets", formatter_class=Formatter,
                         description="Omega_av (with std), Omega_mav, Omega_max and Omega_worst_set over every "
                                     "crash set of the budget and every input (exact), or over sampled crash sets "
                                     "(Monte Carlo, with --samples or --ci-width). MLPs use the fast engines; any "
                                     "other model is measured through its sites by the damage engine (--layer then "
                                     "takes site addresses, as in `lesion sites`).")
    _add_model_only(p)
    add_device(p)
    add_data(p)
    p.add_argument("--layer", default="1", help="1-based hidden layer, or a comma list: crashes anywhere in them "
                                                "(for a model that is not an MLP: sites by index or name)")
    p.add_argument("--faults", required=True, type=fault_counts,
                   help="crashed units: an integer, a range 1-5 or an increasing list 1,2,4")
    p.add_argument("--norm", choices=("inf", "1", "2"), default="inf", help="norm of F − F_S (default inf)")
    p.add_argument("--output", choices=("raw", "softmax"), default="raw", help="raw outputs or softmax (default raw)")
    p.add_argument("--samples", type=positive_int, help="Monte Carlo: number of uniformly drawn crash sets")
    p.add_argument("--ci-width", type=positive_float,
                   help="Monte Carlo: stop once the 95%% CI of Omega_av is this wide")
    p.add_argument("--certify-seconds", type=nonnegative_float, default=10.0,
                   help="Monte Carlo: also bracket Omega_max and Omega_mav by the certified worst case, spending "
                        "at most about this many seconds a budget (0: off; ‖·‖∞, one layer)")
    p.add_argument("--engine", choices=("auto", "additive", "general"), default="auto",
                   help="exact engine (default auto: additive for one hidden layer and raw outputs)")
    p.add_argument("--time-limit", type=positive_float, default=600.0,
                   help="refuse exact runs estimated above this many seconds (default 600)")
    p.add_argument("--checkpoint", metavar="FILE", type=binary_output_file,
                   help="save progress here (a binary NumPy archive); rerun the same command to resume")
    p.add_argument("--split", choices=("test", "train"), default="test", help="inputs: test (default) or train")
    p.add_argument("--inputs", type=positive_int, metavar="N", help="only the first N inputs")
    add_executor(p)
    add_common(p)
    p.set_defaults(run=_cmd_omega)

    from lesion.cli.crash_worst import register as register_worst

    register_worst(inner)

    p = inner.add_parser("bound", help="analytical bound Erf and Erf_av from the weights",
                         description="Erf and Erf_av ([R] Eq. 4, SPEC §2.2) for each crash count.")
    _add_model_only(p)
    add_data(p, required=False)
    p.add_argument("--faults", required=True, type=fault_counts,
                   help="crash counts: an increasing list F1,F2,... or a range 1-5")
    p.add_argument("--layer", default="1", help="hidden layer(s) of the crashes (several: worst split)")
    _add_bound_options(p)
    p.add_argument("--split", choices=("test", "train"), default="test", help="inputs for a measured C")
    p.add_argument("--inputs", type=positive_int, metavar="N", help="only the first N inputs")
    add_common(p)
    p.set_defaults(run=_cmd_bound)

    p = inner.add_parser("tolerance", help="largest crash count within an error budget",
                         description="The largest f within ε − ε' by Erf, Erf_av and (with --data) measured "
                                     "Omega_av (SPEC §2.3); several --model are ranked by Erf_av tolerance.")
    _add_model_only(p, many=True)
    add_data(p, required=False)
    p.add_argument("--epsilon", type=positive_float, required=True, help="error budget ε")
    p.add_argument("--epsilon-own", type=nonnegative_float, default=0.0, help="the network's own error ε' (default 0)")
    p.add_argument("--layer", default="1", help="hidden layer(s) of the crashes")
    p.add_argument("--max-faults", type=positive_int, help="largest crash count examined")
    _add_bound_options(p)
    p.add_argument("--split", choices=("test", "train"), default="test", help="inputs for measured Omega")
    p.add_argument("--inputs", type=positive_int, metavar="N", help="only the first N inputs")
    add_common(p)
    p.set_defaults(run=_cmd_tolerance)
