"""lesion checkpoints: a trained reference network with what made it (issue "Foundation", item 5).

A checkpoint is a plain dict saved with ``torch.save`` and read back with ``weights_only=True`` (no code runs
on load): format tag, architecture configuration, state dict, data provenance, seed, training settings,
test metrics, lesion version and time.
"""

from __future__ import annotations

import datetime as _dt
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lesion
from lesion.errors import LesionError

FORMAT = "lesion-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: nn.Module, net: str, config: dict[str, Any],
                    **record: Any) -> Path:
    """Write `model` (built from preset `net` with architecture `config`) and `record` to `path`.

    `record` holds JSON-like provenance: data, seed, training settings, metrics, input_shape, num_classes.
    The file is written to a temporary name first, so an interrupted save never leaves a half file.
    """
    path = Path(path).expanduser()
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lesion_version": lesion.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "net": net,
        "config": config,
        "state_dict": _portable_state(model),
        **record,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _portable_state(model: nn.Module) -> dict[str, Any]:
    """The model's state on the CPU, detached; a quantised model's packed weights (tuples) and dtypes as they are,
    and the state's version metadata, which quantised layers read when they load it."""
    state = model.state_dict()
    out = OrderedDict((k, v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def is_checkpoint(obj: object) -> bool:
    """Whether a loaded object is a lesion checkpoint dict."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def checkpoint_metadata(payload: dict[str, Any]) -> dict[str, Any]:
    """Everything in a checkpoint but the weights; a checkpoint whose format fields are not what lesion writes
    (edited, or written by something else under lesion's format name) is refused in one line."""
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or not isinstance(payload.get("config"), dict):
        raise LesionError("the lesion checkpoint is corrupt: its format_version must be a whole number and its "
                          "config a mapping (write it again with `lesion train`, or save the model with torch.save)")
    if version > FORMAT_VERSION:
        raise LesionError(f"checkpoint format {payload['format_version']} is newer than this lesion understands "
                          f"({FORMAT_VERSION}): upgrade lesion")
    return {k: v for k, v in payload.items() if k != "state_dict"}
