"""Activations with a known Lipschitz constant K and output bound C (SPEC §2.2).

[R] writes the activation as φ(s) with a slope parameter k: ReLU(k·s) has K = k and is unbounded,
sigmoid(k·s) has K = k/4 and outputs in (0, 1), tanh has K = 1 and outputs in (−1, 1).
"""

from __future__ import annotations

import torch
from torch import nn


class _Sloped(nn.Module):
    """An activation φ(k·s) with a positive slope parameter k."""

    def __init__(self, k: float = 1.0) -> None:
        super().__init__()
        if not k > 0:
            raise ValueError(f"slope k must be positive, got {k}")
        self.k = float(k)

    def extra_repr(self) -> str:
        return f"k={self.k}"


class ScaledReLU(_Sloped):
    """φ(s) = max(0, k·s): Lipschitz constant K = k, unbounded output (SPEC §2.2)."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.k * s) if self.k != 1.0 else torch.relu(s)


class ScaledSigmoid(_Sloped):
    """φ(s) = 1 / (1 + exp(−k·s)): Lipschitz constant K = k/4, output in (0, 1) (SPEC §2.2)."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.k * s)


ACTIVATIONS = ("relu", "sigmoid", "tanh")


def make_activation(name: str, k: float = 1.0) -> nn.Module:
    """Build the activation module `name` ∈ {relu, sigmoid, tanh} with slope k (tanh takes k = 1 only)."""
    if name == "relu":
        return ScaledReLU(k)
    if name == "sigmoid":
        return ScaledSigmoid(k)
    if name == "tanh":
        if k != 1.0:
            raise ValueError("tanh takes no slope: use k = 1")
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def lipschitz_constant(act: nn.Module) -> float | None:
    """K of SPEC §2.2 for a known elementwise activation module, None when it is not known.

    ReLU(k·s): k; sigmoid(k·s): k/4; tanh: 1; LeakyReLU(a): max(1, |a|); identity: 1.
    """
    if isinstance(act, ScaledReLU):
        return act.k
    if isinstance(act, ScaledSigmoid):
        return act.k / 4.0
    if isinstance(act, nn.ReLU | nn.Tanh | nn.Identity | nn.ReLU6 | nn.Hardtanh):
        return 1.0
    if isinstance(act, nn.Sigmoid):
        return 0.25
    if isinstance(act, nn.LeakyReLU):
        return max(1.0, abs(act.negative_slope))
    return None


def output_bound(act: nn.Module) -> float | None:
    """C of SPEC §2.2 when the activation bounds it (max |φ|), None for unbounded activations."""
    if isinstance(act, nn.Hardtanh):  # ReLU6 too (Hardtanh(0, 6)): max |φ| over its range
        return max(abs(float(act.min_val)), abs(float(act.max_val)))
    if isinstance(act, ScaledSigmoid | nn.Sigmoid | nn.Tanh):
        return 1.0
    return None


def is_elementwise_activation(module: nn.Module) -> bool:
    """True for the activation modules whose K is known (used to recognise an MLP, SPEC §2.2)."""
    return lipschitz_constant(module) is not None and not isinstance(module, nn.Identity)


__all__ = [
    "ACTIVATIONS",
    "ScaledReLU",
    "ScaledSigmoid",
    "is_elementwise_activation",
    "lipschitz_constant",
    "make_activation",
    "output_bound",
]

