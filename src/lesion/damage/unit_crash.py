"""Neuron crash in an MLP as a weight mask (SPEC §1, [R] Def. 2).

A crashed hidden unit outputs 0 for every input. In a network of Linear layers and elementwise activations
that is exactly the same as zeroing the unit's column in the weight matrix of the layer that consumes it,
whatever φ(0) is: the damage is a mask on parameters, and the user's model is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lesion.errors import LesionError


def hidden_unit_consumers(model: nn.Module) -> list[tuple[str, int]]:
    """For hidden layers l = 1..L of an MLP-shaped model: (name of the Linear layer reading layer l, N_l).

    The model's Linear layers, taken in registration order, must form a chain (each one's in_features is the
    previous one's out_features); the first reads the input, so hidden layer l is read by Linear l + 1.
    """
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise LesionError("unit crashes need an MLP with at least one hidden layer of Linear units")
    for (_, prev), (name, nxt) in zip(linears[:-1], linears[1:], strict=True):
        if prev.out_features != nxt.in_features:
            raise LesionError(f"{name} does not read the layer before it: the model is not a plain MLP")
    return [(name, m.in_features) for name, m in linears[1:]]


def crash_hidden_units(model: nn.Module, params: dict[str, torch.Tensor], layer: int,
                       units: Sequence[int]) -> dict[str, torch.Tensor]:
    """A new parameter dict in which units `units` of hidden layer `layer` (1-based) output 0."""
    consumers = hidden_unit_consumers(model)
    if not 1 <= layer <= len(consumers):
        raise LesionError(f"hidden layer {layer} does not exist: the model has {len(consumers)} hidden layers")
    name, width = consumers[layer - 1]
    units = list(units)
    if any(not 0 <= u < width for u in units):
        raise LesionError(f"unit indices must lie in 0..{width - 1} for hidden layer {layer}")
    key = f"{name}.weight"
    weight = params[key].clone()
    weight[:, units] = 0.0
    return {**params, key: weight}
