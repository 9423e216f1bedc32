"""Where the work runs (issue "Any model, any device", item 4): `--device auto|cpu|cuda[:N]|mps`.

The model and the data move to the device; every tensor lesion creates for an analysis is created there
(damage masks and overrides, perturbations, metric products). The numba engines of exact Omega run on the CPU
whatever the device, and say so.
"""

from __future__ import annotations

import torch

from lesion.errors import LesionError

CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(text: str | None) -> torch.device:
    """The torch device `text` names; `auto` (or None) is CUDA when available, else the CPU."""
    name = (text or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise LesionError(f"unknown device {text!r}: give {CHOICES}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LesionError(f"--device {text}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LesionError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise LesionError(f"--device {text}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise LesionError(f"unknown device {text!r}: give {CHOICES}")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model without either."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
