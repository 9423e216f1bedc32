"""Options and conventions shared by every `lesion` sub-command (issue "Foundation", item 6)."""

from __future__ import annotations

import argparse
from typing import Any


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="M",
                   help="a lesion checkpoint, a torch.save'd module, a TorchScript or torch.export (.pt2) file, "
                        "package.module:factory (with --weights), or preset:NAME for an untrained reference network")
    p.add_argument("--weights", metavar="FILE", help="state-dict file for --model package.module:factory")
    add_device(p)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="DEV",
                   help="where to run: auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--output-key", metavar="KEY",
                   help="which output to analyse when the model returns a dict, ModelOutput or tuple (default: "
                        "`logits`, else the first tensor); sequence outputs are read per token")


def add_data(p: argparse.ArgumentParser, required: bool = True) -> None:
    from lesion.data import available

    forms = "; ".join(f"{name}: {text}" for name, text in available()).replace("%", "%%")
    p.add_argument("--data", required=required, metavar="D",
                   help=f"data set (its train/test split is fixed, whatever --seed says). {forms}")


def add_common(p: argparse.ArgumentParser, seed: bool = True) -> None:
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


class Formatter(argparse.RawTextHelpFormatter):
    """Keeps the line breaks of the damage SPEC table; wraps other help text."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        if "\n" in text:
            return text.splitlines()
        return argparse.HelpFormatter._split_lines(self, text, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return argparse.HelpFormatter._fill_text(self, text, width, indent)




def prepared(args: argparse.Namespace, loaded: Any, data: Any) -> tuple[Any, Any]:
    """The loaded model and the data on `--device`, the model read through `--output-key` (or the output rules of
    `lesion.nets.outputs`) and validated on the data's test inputs."""
    import dataclasses

    from lesion.devices import resolve_device
    from lesion.nets import prepare_model

    device = resolve_device(getattr(args, "device", "auto"))
    loaded.module = loaded.module.to(device)
    moved = {f.name: getattr(data, f.name).to(device) for f in dataclasses.fields(data)
             if hasattr(getattr(data, f.name), "to") and getattr(data, f.name) is not None}
    data = dataclasses.replace(data, **moved) if device.type != "cpu" else data
    loaded.module, _ = prepare_model(loaded.module, data.x_test, data.num_classes, data.name,
                                     getattr(args, "output_key", None))
    return loaded, data


def load_model_and_data(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model of --model/--weights and the data of --data, the model validated on the data's inputs."""
    from lesion.data import load
    from lesion.nets import load_model

    data = load(args.data)
    loaded = load_model(args.model, args.weights, seed=args.seed)
    return prepared(args, loaded, data)
