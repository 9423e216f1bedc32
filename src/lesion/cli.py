"""The `lesion` command: one sub-command per capability (ARCHITECTURE.md: cli.py).

A thin shell over the Python API: it parses, calls, prints and writes; no analysis lives here.
Conventions (issue "Foundation", item 6): `--json PATH` writes machine-readable results, `--seed` seeds
everything random, progress bars go to stderr, and a user error prints one line to stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import lesion
from lesion import progress
from lesion.errors import LesionError

EXIT_USER_ERROR = 2


# ---------------------------------------------------------------------------------------------- options
def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="M",
                   help="a lesion checkpoint, a torch.save'd module, a TorchScript or torch.export (.pt2) file, "
                        "package.module:factory (with --weights), or preset:NAME for an untrained reference network")
    p.add_argument("--weights", metavar="FILE", help="state-dict file for --model package.module:factory")


def _add_data(p: argparse.ArgumentParser, required: bool = True) -> None:
    from lesion.data import available

    forms = "; ".join(f"{name}: {text}" for name, text in available()).replace("%", "%%")
    p.add_argument("--data", required=required, metavar="D",
                   help=f"data set (its train/test split is fixed, whatever --seed says). {forms}")


def _add_common(p: argparse.ArgumentParser, seed: bool = True) -> None:
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# ---------------------------------------------------------------------------------------------- commands
def _cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.data import load
    from lesion.nets import build_net, save_checkpoint
    from lesion.train import TrainSettings, train

    data = load(args.data)
    if not data.has_labels:
        raise LesionError(f"{args.data} has no labels: training needs labelled data")
    model, config = build_net(args.net, data.input_shape, data.num_classes or 2, seed=args.seed,
                              activation=args.activation, k=args.k, bias=not args.no_bias, dropout=args.dropout)
    settings = TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             weight_decay=args.weight_decay, seed=args.seed)
    history = train(model, data.x_train, data.y_train, settings, data.x_test, data.y_test)
    test = history.test
    metrics = {"test_accuracy": test.accuracy, "test_loss": test.loss} if test else {}
    record = {"data": data.to_dict(), "seed": args.seed, "training": history.to_dict(),
              "input_shape": list(data.input_shape), "num_classes": data.num_classes, "metrics": metrics}
    path = save_checkpoint(args.out, model, args.net, config, **record)
    if test:
        print(f"{args.net} on {data.name}: test accuracy {test.accuracy:.4f} "
              f"(95% CI {test.accuracy_ci[0]:.4f}–{test.accuracy_ci[1]:.4f}, n={test.n}), loss {test.loss:.4f}")
    print(f"checkpoint written to {path}")
    return {"checkpoint": str(path), "net": args.net, "config": config, **record}


def _load_model_and_data(args: argparse.Namespace) -> tuple[Any, Any]:
    from lesion.data import load
    from lesion.nets import load_model, validate_model

    data = load(args.data)
    loaded = load_model(args.model, args.weights, seed=args.seed)
    validate_model(loaded.module, data.x_test, data.num_classes, data.name)
    return loaded, data


def _print_evaluation(label: str, result: Any) -> None:
    print(f"{label}accuracy {result.accuracy:.4f} (95% CI {result.accuracy_ci[0]:.4f}–{result.accuracy_ci[1]:.4f}, "
          f"n={result.n}), loss {result.loss:.4f}")


def _cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from lesion.damage import Target, damaged_outputs, parse_damage, realise
    from lesion.damage.campaign import per_sample_metrics
    from lesion.train import evaluate_outputs, predict

    loaded, data = _load_model_and_data(args)
    damages = [parse_damage(text) for text in args.damage or []]
    clean = predict(loaded.module, data.x_test, batch_size=args.batch_size)
    outputs = clean
    out: dict[str, Any] = {"model": loaded.to_dict(), "data": data.to_dict()}
    if damages:
        realised = realise(Target(loaded.module), damages, torch.Generator().manual_seed(args.seed))
        outputs = damaged_outputs(loaded.module, realised, data.x_test, batch_size=args.batch_size)
        error, _, _ = per_sample_metrics(outputs, clean, None)
        out["damage"] = {"specs": [d.spec() for d in damages], "faults": list(realised.faults),
                         "output_error": error}
    if args.save_outputs:
        np.save(args.save_outputs, outputs.double().numpy())
        out["outputs_file"] = args.save_outputs
    if data.has_labels:
        result = evaluate_outputs(clean, data.y_test)
        _print_evaluation("test " if not damages else "clean test ", result)
        out["evaluation"] = result.to_dict()
        if damages:
            damaged = evaluate_outputs(outputs, data.y_test)
            _print_evaluation("damaged test ", damaged)
            out["damaged_evaluation"] = damaged.to_dict()
    elif not args.save_outputs and not damages:
        raise LesionError(f"{args.data} has no test labels: accuracy and loss need labels "
                          "(use --save-outputs to get the raw outputs)")
    if damages:
        print(f"mean output error ‖ΔF‖∞ {out['damage']['output_error']:.6g}; faults: "
              + "; ".join(_fault_summary(f) for f in out["damage"]["faults"]))
    return out


def _fault_summary(fault: dict[str, Any]) -> str:
    count = len(fault["indices"]) if "indices" in fault else fault.get("count")
    where = fault.get("site") or fault.get("module") or fault.get("param") or ",".join(fault.get("params", []))
    return f"{fault['kind']} at {where}" + (f" ({count})" if count is not None else "")


def _cmd_campaign(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.damage import parse_damage
    from lesion.damage.campaign import Campaign, load_fault_list, replay, save_fault_list

    loaded, data = _load_model_and_data(args)
    x = data.x_test[: args.inputs] if args.inputs else data.x_test
    y = None if data.y_test is None else data.y_test[: len(x)]
    if args.replay:
        result = replay(loaded.module, x, y, load_fault_list(args.replay), args.tolerance)
    else:
        if not args.damage:
            raise LesionError("give at least one --damage SPEC (or --replay FILE)")
        if (args.samples is None) == (args.ci_width is None):
            raise LesionError("give either --samples N or --ci-width W")
        campaign = Campaign(loaded.module, x, y, [parse_damage(t) for t in args.damage], args.seed, args.tolerance)
        result = campaign.run(args.samples, args.ci_width, max_samples=args.max_samples)
    if args.save_faults:
        save_fault_list(args.save_faults, result)
    n = len(result.samples)
    print(f"{n} configurations of {' + '.join(result.damage)} on {result.inputs} inputs of {data.name}")
    if result.accuracy:
        a = result.accuracy
        print(f"accuracy: clean {result.clean_accuracy:.4f}; damaged mean {a['mean']:.4f} "
              f"(95% CI {a['ci'][0]:.4f}–{a['ci'][1]:.4f}), min {a['min']:.4f}, max {a['max']:.4f}")
        f = result.failure_rate
        print(f"failure rate (accuracy more than {f['tolerance']} below clean): {f['rate']:.4f} "
              f"(95% Wilson CI {f['ci'][0]:.4f}–{f['ci'][1]:.4f})")
    e = result.output_error
    print(f"output error ‖ΔF‖∞: mean {e['mean']:.6g} (95% CI {e['ci'][0]:.6g}–{e['ci'][1]:.6g})")
    if result.target_width is not None:
        state = "met" if result.target_met else f"NOT met after {n} samples (raise --max-samples)"
        print(f"target interval width {result.target_width}: {state}; planned ≈{result.planned_samples} samples")
    return {"model": loaded.to_dict(), "data": data.to_dict(), "campaign": result.to_dict(with_samples=True)}


def _cmd_data(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.data import load

    data = load(args.name)
    info = data.to_dict()
    for key, value in info.items():
        print(f"{key}: {value}")
    return info


def _cmd_nets(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.nets import PRESETS, build_net

    rows = {}
    for name in ("mlp1-400", "mlp2", "random-0", "cnn", "vgg11"):
        shape = (3, 32, 32) if name == "vgg11" else None
        model, _ = build_net(name, shape)
        rows[name] = sum(p.numel() for p in model.parameters())
    for name, text in PRESETS.items():
        print(f"{name:16s} {text}")
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    return {"presets": PRESETS, "parameters": rows}


def _cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.experiments.demo import run_demo

    result = run_demo(net=args.net, epochs=args.epochs, sets=args.sets, seed=args.seed)
    print(f"{result.net} trained on {result.data['name']}: clean test accuracy {result.clean_accuracy:.4f}")
    print("layer  crashed/units  accuracy  95% CI (over crash sets)   min–max")
    for p in result.points:
        print(f"{p.layer:5d}  {p.crashed:4d}/{p.width:<8d}  {p.accuracy:.4f}    "
              f"{p.accuracy_ci[0]:.4f}–{p.accuracy_ci[1]:.4f}          {p.accuracy_min:.4f}–{p.accuracy_max:.4f}")
    return result.to_dict()


# ---------------------------------------------------------------------------------------------- parser
class _Formatter(argparse.RawTextHelpFormatter):
    """Keeps the line breaks of the damage SPEC table; wraps other help text."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        if "\n" in text:
            return text.splitlines()
        return argparse.HelpFormatter._split_lines(self, text, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (each documents every option in --help)."""
    from lesion.damage.spec import SPEC_HELP
    from lesion.nets import describe_presets

    parser = argparse.ArgumentParser(
        prog="lesion", description="Measure, attack and repair the resilience of neural networks to damage.")
    parser.add_argument("--version", action="version", version=f"lesion {lesion.__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a reference network and write a checkpoint",
                       description="Train a reference network with Adam on cross-entropy and write a lesion "
                                   "checkpoint recording architecture, data, seed, accuracy and version.")
    p.add_argument("--net", required=True, metavar="NAME", help=f"preset. {describe_presets()}")
    _add_data(p)
    p.add_argument("--epochs", type=_positive_int, default=20, help="training epochs (default 20)")
    p.add_argument("--dropout", type=_fraction, default=0.0, help="dropout rate while training (default 0)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="minibatch size (default 64)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay (default 0)")
    p.add_argument("--activation", choices=("relu", "sigmoid", "tanh"), default="relu",
                   help="MLP activation φ (default relu)")
    p.add_argument("--k", type=float, default=1.0, help="activation slope: φ(s) = relu(k·s) or sigmoid(k·s)")
    p.add_argument("--no-bias", action="store_true", help="MLP without biases")
    p.add_argument("--out", required=True, metavar="PATH", help="checkpoint file to write")
    _add_common(p)
    p.set_defaults(run=_cmd_train)

    damage_help = SPEC_HELP.replace("%", "%%")
    p = sub.add_parser("evaluate", help="test accuracy and loss of a model, clean or damaged",
                       formatter_class=_Formatter,
                       description="Accuracy (with a 95% Wilson interval) and cross-entropy loss on the test "
                                   "split of a data set, of the model as it is or with --damage applied (the model "
                                   "file is never changed).")
    _add_model(p)
    _add_data(p)
    p.add_argument("--batch-size", type=_positive_int, default=1000, help="inputs per forward pass")
    p.add_argument("--damage", action="append", metavar="SPEC",
                   help="damage to apply (repeatable; applied in order, random choices from --seed):\n" + damage_help)
    p.add_argument("--save-outputs", metavar="FILE.npy",
                   help="write the (damaged) network's raw outputs on the test inputs as a float64 .npy array")
    _add_common(p)
    p.set_defaults(run=_cmd_evaluate)

    p = sub.add_parser("campaign", help="statistical fault campaign", formatter_class=_Formatter,
                       description="Draw many damage configurations, evaluate them in vectorised batches and "
                                   "report accuracy, loss and output error with 95% confidence intervals. Sample i "
                                   "is drawn from a seed derived from (--seed, i).")
    _add_model(p)
    _add_data(p)
    p.add_argument("--damage", action="append", metavar="SPEC", help="damage per configuration (repeatable, "
                   "composed in order):\n" + damage_help)
    p.add_argument("--samples", type=_positive_int, help="number of configurations")
    p.add_argument("--ci-width", type=float, metavar="W",
                   help="instead of --samples: stop once the 95%% interval of the mean accuracy (mean output "
                        "error without labels) is at most W wide (at least 30 samples)")
    p.add_argument("--max-samples", type=_positive_int, default=10_000, help="cap for --ci-width (default 10000)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="a configuration fails when its accuracy is more than this below clean (default 0.05)")
    p.add_argument("--inputs", type=_positive_int, metavar="N", help="use the first N test inputs (default all)")
    p.add_argument("--save-faults", metavar="FILE", help="save the fault list (seeds and faults) as JSON")
    p.add_argument("--replay", metavar="FILE", help="re-run the configurations of a saved fault list")
    _add_common(p)
    p.set_defaults(run=_cmd_campaign)

    p = sub.add_parser("data", help="describe a data set", description="Load a data set and describe it.")
    p.add_argument("name", metavar="D", help="data set name or form (see `lesion train --help`)")
    _add_common(p)
    p.set_defaults(run=_cmd_data)

    p = sub.add_parser("nets", help="list the reference networks", description="List the preset networks.")
    _add_common(p, seed=False)
    p.set_defaults(run=_cmd_nets)

    p = sub.add_parser("demo", help="short end-to-end run on mnist5k",
                       description="Train a network on mnist5k, crash growing shares of its hidden units and "
                                   "print test accuracy before and after.")
    p.add_argument("--net", default="mlp2", metavar="NAME", help="MLP preset to train (default mlp2)")
    p.add_argument("--epochs", type=_positive_int, default=10, help="training epochs (default 10)")
    p.add_argument("--sets", type=_positive_int, default=10, help="random crash sets per point (default 10)")
    _add_common(p)
    p.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lesion` program; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet:
        progress.set_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    run: Callable[[argparse.Namespace], dict[str, Any]] = args.run
    try:
        result = run(args)
        if getattr(args, "json", None):
            from lesion.report import provenance, write_json

            write_json(Path(args.json), {"provenance": provenance(command=args.command,
                                                                  argv=list(argv or sys.argv[1:])), **result})
    except LesionError as err:
        print(f"lesion: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("lesion: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
