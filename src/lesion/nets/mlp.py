"""Multilayer perceptrons in the form [R] analyses (SPEC §2.2): Linear layers, one elementwise activation
φ(s) = relu(k·s), sigmoid(k·s) or tanh after each hidden layer, and a linear output layer.

Module names are stable because damage descriptions and reports refer to them: ``fc1 … fcL`` are the hidden
Linear layers, ``act1 … actL`` their activations, ``drop1 … dropL`` optional dropout (active in training
only), and ``out`` the linear output layer. Hidden layer l is the output of ``act{l}``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lesion.nets.activations import make_activation


class MLP(nn.Sequential):
    """in_features → widths[0] → … → widths[-1] → out_features, activation after every hidden layer."""

    __jit_unused_properties__ = ["widths"]  # keeps the module scriptable with torch.jit.script

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        out_features: int,
        activation: str = "relu",
        k: float = 1.0,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        if in_features < 1 or out_features < 1 or any(int(w) < 1 for w in widths):
            raise ValueError(f"layer sizes must be positive: {in_features}, {list(widths)}, {out_features}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        sizes = [int(in_features), *[int(w) for w in widths]]
        for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            layers[f"fc{layer}"] = nn.Linear(n_in, n_out, bias=bias)
            layers[f"act{layer}"] = make_activation(activation, k)
            if dropout > 0:
                layers[f"drop{layer}"] = nn.Dropout(dropout)
        layers["out"] = nn.Linear(sizes[-1], int(out_features), bias=bias)
        super().__init__(layers)
        self._config = {
            "kind": "mlp",
            "in_features": int(in_features),
            "widths": [int(w) for w in widths],
            "out_features": int(out_features),
            "activation": activation,
            "k": float(k),
            "bias": bool(bias),
            "dropout": float(dropout),
        }

    @property
    def widths(self) -> list[int]:
        """Sizes N_1 … N_L of the hidden layers."""
        return list(self._config["widths"])

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture (stored in checkpoints)."""
        return dict(self._config)

    def linear_layers(self) -> list[nn.Linear]:
        """The Linear layers in order, hidden ones then the output layer."""
        return [m for m in self if isinstance(m, nn.Linear)]


def init_random_normal(model: nn.Module, mean: float, std: float, generator: torch.Generator) -> None:
    """Draw every parameter of `model` i.i.d. from N(mean, std²) ([R] §IV: weights N(1, 5²))."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std + mean)
