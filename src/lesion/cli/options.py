"""Options and conventions shared by every `lesion` sub-command (issue "Foundation", item 6)."""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
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
    from lesion.data.catalog import available

    forms = "; ".join(f"{name}: {text}" for name, text in available()).replace("%", "%%")
    p.add_argument("--data", required=required, metavar="D",
                   help=f"data set (its train/test split is fixed, whatever --seed says). {forms}")


def add_executor(p: argparse.ArgumentParser) -> None:
    """--executor, --workers, --worker-threads, --gpus-per-task: where sampled or enumerated work runs."""
    p.add_argument("--executor", default="local", metavar="E",
                   help="where the work runs: local (this process, default), ray (a local Ray cluster, or the one "
                        "`ray start` made on this machine) or ray:ADDRESS (auto or the head's host:port); the same "
                        "numbers either way (with --worker-threads equal to this process's torch threads). Ray: "
                        "pip install 'lesion[ray]'")
    p.add_argument("--workers", type=positive_int, help="Ray workers (default: the cluster's CPUs / --worker-threads)")
    p.add_argument("--worker-threads", type=positive_int, default=1, help="torch threads per Ray worker (default 1)")
    p.add_argument("--gpus-per-task", type=nonnegative_float, default=0.0,
                   help="GPUs each Ray worker holds (e.g. 1, or 0.25 to share one among four; default 0)")


def add_common(p: argparse.ArgumentParser, seed: bool = True) -> None:
    p.add_argument("--json", metavar="PATH", type=output_file, help="write the results as JSON to PATH")
    if seed:
        p.add_argument("--seed", type=seed_value, default=0, help="seed for every random choice (≥ 0, default 0)")


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _ranged(low: float | None, high: float | None, kind: type = float, low_open: bool = False,
            high_open: bool = False) -> Callable[[str], float]:
    """An argparse type for numbers in a range (issue 14: every numeric option's range checked at parse time)."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    def show(v: float) -> str:
        return f"{v}" if kind is int else f"{v:g}"

    where = (f"lie in {lo}{show(low)}, {show(high)}{hi}" if low is not None and high is not None
             else f"be {'>' if low_open else '≥'} {show(low)}" if low is not None else f"be ≤ {show(high)}")

    def check(text: str) -> float:
        value = _number(text, kind)
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must {where}, got {text}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"must {where}, got {text}")
        return value

    return check


fraction = _ranged(0.0, 1.0, high_open=True)  # [0, 1)
probability = _ranged(0.0, 1.0)  # [0, 1]
share = _ranged(0.0, 1.0, low_open=True)  # (0, 1]
positive_int = _ranged(1, None, int)
nonnegative_int = _ranged(0, None, int)
seed_value = _ranged(0, 2**63 - 1, int)
positive_float = _ranged(0.0, None, low_open=True)
nonnegative_float = _ranged(0.0, None)
def finite_float(text: str) -> float:
    """Any finite number."""
    return _number(text, float)


def _writable_folder(folder: Path, what: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lesion-write-check-"):
            pass
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot write {what} in {folder} ({err.strerror or err})") from None


def output_file(text: str) -> str:
    """A file lesion will write: its folder must exist and be writable, and it must not be a folder."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {folder} does not exist; create it first")
    _writable_folder(folder, path.name)
    return text


TEXT_SUFFIXES = (".json", ".csv", ".txt", ".yaml", ".yml", ".html", ".md")


def binary_output_file(text: str) -> str:
    """A file lesion will write in a binary format (a NumPy archive): `output_file`, and not named as text."""
    if Path(text).suffix.lower() in TEXT_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text}: this file is binary (a NumPy .npz archive), not "
                                         f"{Path(text).suffix.lower()[1:]}; give another name, e.g. omega.ckpt")
    return output_file(text)


def output_dir(text: str) -> str:
    """A folder lesion will write into (created if needed): not an existing file, inside a writable folder."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is an existing file; give a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file; {path} cannot be created")
    _writable_folder(existing, str(path))
    return text


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
    data = _float_inputs_unless_embedded(loaded.module, data)
    loaded.module, _ = prepare_model(loaded.module, data.x_test, data.num_classes, data.name,
                                     getattr(args, "output_key", None))
    return loaded, data


def _float_inputs_unless_embedded(model: Any, data: Any) -> Any:
    """Integer inputs (token ids of an `.npz`) as float32 for a model that embeds no tokens (an MLP on integer
    features): a model with an embedding table, or one that runs on the integers as they are (a TorchScript or
    exported model, whose tables are not `nn.Embedding` modules), keeps them."""
    import dataclasses

    import torch

    if data.x_test.is_floating_point() or any(isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
                                              for m in model.modules()):
        return data
    from lesion.functional import eval_mode

    try:
        with torch.no_grad(), eval_mode(model):  # no running statistics updated
            model(data.x_test[:2])
        return data
    except Exception:  # noqa: BLE001 - any failure on integers: the model takes values
        return dataclasses.replace(data, x_train=data.x_train.float(), x_test=data.x_test.float())


def load_model_and_data(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model of --model/--weights and the data of --data, the model validated on the data's inputs."""
    from lesion.data import load
    from lesion.nets import load_model

    data = load(args.data)
    loaded = load_model(args.model, args.weights, seed=args.seed)
    return prepared(args, loaded, data)
