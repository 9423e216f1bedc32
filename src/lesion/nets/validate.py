"""Checks that a model can be analysed on a data set's inputs (issue "Foundation", item 4)."""

from __future__ import annotations

import torch
from torch import nn

from lesion.errors import LesionError


def non_finite_parameters(module: nn.Module) -> dict[str, int]:
    """Names of parameters and buffers holding NaN or ±inf values, with how many each holds."""
    bad = {}
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() or tensor.is_complex():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad[name] = count
    return bad


def validate_model(module: nn.Module, inputs: torch.Tensor, num_classes: int | None = None,
                   data_name: str = "the data") -> int:
    """Raise a LesionError unless `module` has finite weights and maps `inputs` to finite (batch, m) outputs.

    `inputs` is a small batch of the data's inputs; `num_classes`, when given, must not exceed m.
    Returns m, the output dimension.
    """
    bad = non_finite_parameters(module)
    if bad:
        listed = ", ".join(f"{name} ({count})" for name, count in list(bad.items())[:5])
        raise LesionError(f"the model has NaN/inf weights in {listed}{' …' if len(bad) > 5 else ''}; "
                          "repair or retrain it before analysing it")
    batch = inputs[:2]
    try:
        with torch.no_grad():
            out = module(batch)
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward means a shape mismatch
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LesionError(f"the model does not run on inputs of shape {tuple(batch.shape[1:])} from {data_name} "
                          f"({message}); give data the model was built for") from err
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LesionError(f"the model must return a (batch, outputs) tensor; it returned {shape} for a batch "
                          f"of {batch.shape[0]}")
    if not torch.isfinite(out).all():
        raise LesionError(f"the model's outputs on {data_name} contain NaN/inf")
    m = int(out.shape[1])
    if num_classes is not None and m < num_classes:
        raise LesionError(f"the model has {m} outputs but {data_name} has {num_classes} classes")
    return m
