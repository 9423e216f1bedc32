"""JSON results with provenance (SPEC §4: every result records model digest, data, seed, version, time)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lesion
from lesion.errors import LesionError


def provenance(**inputs: Any) -> dict[str, Any]:
    """The lesion version, the time, and whatever inputs the caller names (model, data, seed, …)."""
    return {"lesion_version": lesion.__version__,
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **inputs}


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from dataclasses (`to_dict` when they have one), tensors, arrays and numbers.

    Non-finite floats become the strings "nan", "inf", "-inf" so the file stays standard JSON.
    """
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically (a temporary file renamed into place)."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n")
        tmp.replace(path)
    except OSError as err:
        raise LesionError(f"cannot write {path}: {err.strerror}") from err
    return path
