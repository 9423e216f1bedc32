"""Inputs on a regular grid of the unit cube, for [R]'s random networks (SPEC §5)."""

from __future__ import annotations

import torch

from lesion.data.dataset import Dataset
from lesion.errors import LesionError

#: Largest number of grid points `input_grid` builds.
MAX_POINTS = 10**7


def input_grid(dim: int, steps: int) -> torch.Tensor:
    """All `steps`**`dim` points of the regular grid of [0, 1]^dim, float32 of shape (steps**dim, dim).

    Each axis takes `steps` equally spaced values from 0 to 1 inclusive; the last coordinate varies fastest.
    Used with [R]'s random 4-4-4-4-1 networks, whose inputs lie on a grid of [0, 1]^4 (SPEC §5).
    """
    if dim < 1 or steps < 2:
        raise LesionError(f"grid:{dim}:{steps}: need D >= 1 dimensions and STEPS >= 2 points per axis, "
                          "e.g. grid:4:10")
    if steps**dim > MAX_POINTS:
        raise LesionError(f"grid:{dim}:{steps} has {steps}^{dim} = {steps**dim:,} points, more than "
                          f"{MAX_POINTS:,}; use fewer STEPS or dimensions")
    axis = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    mesh = torch.meshgrid(*([axis] * dim), indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1).to(torch.float32)


def load_grid(dim: int, steps: int) -> Dataset:
    """The `grid:D:STEPS` data set: the input grid as both train and test inputs, without labels (SPEC §5)."""
    x = input_grid(dim, steps)
    description = (f"Regular grid of [0, 1]^{dim} with {steps} equally spaced points per axis "
                   f"({x.shape[0]:,} inputs, 0 and 1 included), no labels; the test split is the same grid.")
    return Dataset(name=f"grid:{dim}:{steps}", x_train=x, y_train=None, x_test=x, y_test=None,
                   description=description, source="generated (lesion.data.grid)", num_classes=None)
