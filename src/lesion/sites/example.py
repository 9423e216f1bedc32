"""An example input for site discovery when the caller gives none (SPEC §6.1: sites come from a forward)."""

from __future__ import annotations

import torch
from torch import nn

from lesion.errors import LesionError


def example_input(model: nn.Module, device: torch.device | None = None, dtype: torch.dtype | None = None
                  ) -> torch.Tensor:
    """Two seeded random inputs of the shape `model` expects: from a lesion network's config, or the input
    width of its first Linear layer; otherwise a LesionError asking for example inputs."""
    config = model.config() if callable(getattr(model, "config", None)) else {}
    shape: tuple[int, ...] | None = None
    if isinstance(config, dict) and config.get("kind") == "convnet":
        shape = (config["in_channels"], config["image_size"], config["image_size"])
    elif isinstance(config, dict) and config.get("kind") == "mlp":
        shape = (config["in_features"],)
    else:
        first = next((m for m in model.modules() if not list(m.children()) and any(True for _ in m.parameters())),
                     None)
        if isinstance(first, nn.Linear):
            shape = (first.in_features,)
    if shape is None:
        raise LesionError(f"cannot tell the input shape of {type(model).__name__}: sites are found by a forward "
                          "on example inputs, and none were given (API: Target(model, example=x))")
    param = next(model.parameters(), None)
    device = device or (param.device if param is not None else torch.device("cpu"))
    dtype = dtype or (param.dtype if param is not None and param.is_floating_point() else torch.float32)
    generator = torch.Generator().manual_seed(0)
    return torch.rand((2, *shape), generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
