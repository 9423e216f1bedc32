"""Flat parameter vectors w ∈ R^n (SPEC §0: all trainable parameters, flattened in named_parameters order)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParameterLayout:
    """Names, shapes and offsets of the parameters in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @staticmethod
    def of(model: nn.Module) -> ParameterLayout:
        """The layout of the model's trainable parameters."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return ParameterLayout(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @property
    def sizes(self) -> list[int]:
        """Number of values of each parameter."""
        return [int(torch.Size(s).numel()) for s in self.shapes]

    @property
    def n(self) -> int:
        """dim W."""
        return sum(self.sizes)

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate a parameter dict into one vector."""
        return torch.cat([params[name].reshape(-1) for name in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a vector into a parameter dict (views)."""
        out, offset = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = flat[offset:offset + size].view(shape)
            offset += size
        return out

    def offsets(self) -> dict[str, tuple[int, int]]:
        """(start, stop) of each parameter in the flat vector."""
        out, offset = {}, 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out[name] = (offset, offset + size)
            offset += size
        return out
