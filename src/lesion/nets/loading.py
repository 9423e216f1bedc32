"""Loading a user's model and checking that it can be analysed (issue "Foundation", item 4).

Accepted forms of a model reference:
- a lesion checkpoint written by ``lesion train`` (read with ``weights_only=True``);
- a whole module saved with ``torch.save(model)`` (unpickling runs code: load only files you trust; the
  module's class must be importable);
- a TorchScript file (``torch.jit.save``); analyses run it through a private copy (see `lesion.functional`);
- an exported program (``torch.export.save``, ``.pt2``); export it with a dynamic batch dimension;
- ``package.module:factory`` (a callable returning an ``nn.Module``) plus an optional state-dict file;
- ``preset:NAME``: an untrained reference network (e.g. ``preset:random-3``), initialised from the seed.
Every failure raises a LesionError that says what to do.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lesion.errors import LesionError
from lesion.nets.checkpoint import checkpoint_metadata, is_checkpoint
from lesion.nets.presets import build_from_config, build_net

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass
class LoadedModel:
    """A model ready for analysis, in eval mode, with where it came from."""

    module: nn.Module
    kind: str  # lesion-checkpoint | torch-module | torchscript | exported-program | factory | preset
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """sha256 of the parameter and buffer values (SPEC §4: every result records the model digest)."""
        return model_digest(self.module)

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalar parameters n (SPEC §0)."""
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    def to_dict(self) -> dict[str, Any]:
        """Provenance for results: kind, source, digest, parameter count and checkpoint metadata."""
        meta = {k: v for k, v in self.metadata.items() if k != "config"}
        return {"kind": self.kind, "source": self.source, "digest": self.digest,
                "parameters": self.num_parameters, **({"metadata": meta} if meta else {})}


def model_digest(module: nn.Module) -> str:
    """sha256 over the names, shapes and float64 values of every parameter and buffer, and of the dequantised
    weights of quantised layers (which are neither), first 16 hex digits."""
    from lesion.damage.quantised import stored_weights

    h = hashlib.sha256()
    named = list(module.named_parameters()) + list(module.named_buffers())
    named += [(name, weight.dequantize()) for name, weight in stored_weights(module).items()]
    for name, tensor in named:
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(reference: str, weights: str | None = None, *, seed: int = 0) -> LoadedModel:
    """Load the model `reference` names (see module docstring) and put it in eval mode."""
    if reference.startswith("preset:"):
        if weights is not None:
            raise LesionError("--weights goes with --model package.module:factory; a preset is an untrained "
                              "reference network (train one with `lesion train --net NAME` to have weights)")
        module, config = build_net(reference[len("preset:"):], seed=seed)
        loaded = LoadedModel(module, "preset", reference, {"net": reference[7:], "config": config, "seed": seed})
    elif not Path(reference).expanduser().exists() and _FACTORY.match(reference):
        loaded = _load_factory(reference, weights)
    else:
        if weights is not None:
            raise LesionError("--weights goes with --model package.module:factory, not with a model file")
        loaded = _load_file(Path(reference).expanduser())
    if loaded.kind != "exported-program":  # exported programs are fixed in the mode they were exported in
        loaded.module.eval()
    return loaded


def _load_file(path: Path) -> LoadedModel:
    if not path.exists():
        raise LesionError(f"model file not found: {path}. Give a lesion checkpoint, a torch.save'd module, a "
                          "TorchScript file, or package.module:factory with --weights")
    if path.is_dir():
        raise LesionError(f"{path} is a folder; give the model file inside it")
    archive = _archive_kind(path)
    if archive == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - torch raises many kinds on a broken archive
            raise LesionError(f"cannot read TorchScript file {path}: {_first_line(err)}") from err
        return LoadedModel(module, "torchscript", str(path))
    if archive == "exported-program":
        try:
            program = torch.export.load(path)
            module = program.module()
        except Exception as err:  # noqa: BLE001
            raise LesionError(f"cannot read exported program {path}: {_first_line(err)}") from err
        training = _training_ops(program)
        if training:
            raise LesionError(f"{path} was exported in training mode ({', '.join(training)} run as in training: "
                              "random dropout, batch statistics), and an exported program cannot be switched to "
                              "evaluation; export it again after model.eval()")
        return LoadedModel(module, "exported-program", str(path))
    try:
        with warnings.catch_warnings():  # torch's deprecation notes on the storage of quantised (int8) tensors
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        payload = _load_pickled_module(path)
    except Exception as err:  # noqa: BLE001 - zip, EOF, pickle and runtime errors all mean "not readable"
        raise LesionError(_unreadable(path, err)) from err
    if is_checkpoint(payload):
        return _from_checkpoint(payload, path)
    if isinstance(payload, nn.Module):
        return LoadedModel(payload, "torch-module", str(path))
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise LesionError(f"{path} holds a state dict, not a model: give the architecture too, as "
                          f"--model package.module:factory --weights {path}")
    raise LesionError(f"{path} holds a {type(payload).__name__}, not a model")


def _training_ops(program: Any) -> list[str]:
    """The operations of an exported program that behave as in training (dropout with train=True, batch norm
    on batch statistics): names, once each."""
    found: dict[str, None] = {}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        flags = [a for a in node.args if isinstance(a, bool)]  # the first: train (dropout), training (batch norm)
        if flags and flags[0] and ("dropout" in name or ("batch_norm" in name and "no_training" not in name)):
            found[name.split(".")[1] if name.startswith("aten.") else name] = None
    return list(found)


def _unreadable(path: Path, err: Exception) -> str:
    """The one-line refusal of a file torch cannot load: where it is neither a zip archive nor a pickle (a text
    file, say; the loader's own error is then an opaque `KeyError: 101`), what the file begins with."""
    detail = f"{type(err).__name__}: {_first_line(err)}"
    if isinstance(err, (KeyError, pickle.UnpicklingError, EOFError)) or "not a ZIP archive" in str(err):
        try:
            with open(path, "rb") as handle:
                head = handle.read(24)
        except OSError:
            head = b""
        detail = f"it begins with {head!r}" if head else "it is empty"
    return (f"cannot read model file {path}: it is not a lesion checkpoint, a torch.save'd module or TorchScript "
            f"({detail})")


def _load_pickled_module(path: Path) -> Any:
    """torch.save(model) files need full unpickling, which imports and runs the class's code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as err:
        if "__main__'" in str(err):  # defined in the script that saved it: no PYTHONPATH can bring that back
            raise LesionError(f"{path} is a pickled module whose class was defined in the script that saved it "
                              f"(__main__: {err}); move the class into a module file, save "
                              "model.state_dict(), and use --model module:factory --weights FILE") from err
        raise LesionError(f"{path} is a pickled module whose class cannot be imported ({err}); make its package "
                          "importable (PYTHONPATH) or save a state dict and use package.module:factory") from err
    except Exception as err:  # noqa: BLE001
        raise LesionError(_unreadable(path, err)) from err


def _archive_kind(path: Path) -> str | None:
    """'torchscript' or 'exported-program' from the names inside the zip archive; None otherwise."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") or "/models/" in n for n in names):
        return "exported-program"
    return None


def _from_checkpoint(payload: dict[str, Any], path: Path) -> LoadedModel:
    meta = checkpoint_metadata(payload)
    module = build_from_config(meta["config"])
    quantised = meta.get("quantised")
    if quantised:  # the int8 layers are rebuilt as `lesion quantise` made them, then get their stored state
        from lesion.nets.quantise import quantise_int8

        shape = meta.get("input_shape")
        if not shape:
            raise LesionError(f"{path} is a quantised checkpoint without its input shape; write it again")
        module = quantise_int8(module, torch.zeros(2, *shape), quantised.get("backend", "x86"))
    with warnings.catch_warnings():  # torch warns about its own quantised storage as it fills it
        warnings.simplefilter("ignore", UserWarning)
        _load_state(module, payload.get("state_dict"), str(path))
    return LoadedModel(module, "lesion-checkpoint", str(path), meta)


def _load_factory(reference: str, weights: str | None) -> LoadedModel:
    module_name, attr = reference.split(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # a user's package in the working directory, as `python -m` would see it
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        raise LesionError(f"cannot import {module_name!r} for --model {reference}: {err}; check PYTHONPATH") from err
    except AttributeError as err:
        raise LesionError(f"{module_name} has no {attr!r} for --model {reference}") from err
    try:
        module = factory()
    except Exception as err:  # noqa: BLE001 - the user's code
        raise LesionError(f"{reference}() failed: {type(err).__name__}: {_first_line(err)}") from err
    if not isinstance(module, nn.Module):
        raise LesionError(f"{reference}() returned a {type(module).__name__}, not a torch.nn.Module")
    meta: dict[str, Any] = {}
    if weights is not None:
        state = _read_state_dict(Path(weights).expanduser())
        _load_state(module, state, weights)
        meta["weights"] = str(weights)
    return LoadedModel(module, "factory", reference, meta)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise LesionError(f"weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise LesionError(f"cannot read weights file {path} as a state dict ({type(err).__name__}: "
                          f"{_first_line(err)})") from err
    if is_checkpoint(payload) or (isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict)):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise LesionError(f"{path} is not a state dict (a dict of parameter name → tensor)")
    return payload


def _load_state(module: nn.Module, state: Any, source: str) -> None:
    if not isinstance(state, dict):
        raise LesionError(f"{source} has no weights (state_dict missing); the file may be corrupt")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:  # torch lists the missing, unexpected and mis-shaped keys on the lines after its first
        details = " ".join(line.strip() for line in str(err).strip().splitlines()[1:]) or _first_line(err)
        details = details if len(details) <= 400 else details[:399] + "…"
        raise LesionError(f"weights in {source} do not fit the architecture: {details}") from err


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"
