"""The network being damaged: the model, its trained parameters and its unit sites (SPEC §0)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import nn

from lesion.damage.sites import UnitSite, resolve_site, unit_sites
from lesion.errors import LesionError
from lesion.functional import parameters_of


@dataclass
class Target:
    """A model and its trained parameters w (named_parameters order); damage never modifies either."""

    model: nn.Module
    base: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.base:
            self.base = parameters_of(self.model)

    @cached_property
    def sites(self) -> list[UnitSite]:
        """The hidden layers whose units can crash."""
        return unit_sites(self.model)

    def site(self, layer: int | str) -> UnitSite:
        """A unit site by 1-based hidden-layer index or module name."""
        return resolve_site(self.model, layer)

    def match(self, pattern: str) -> list[str]:
        """Parameter names a pattern selects: an exact name, a glob (`*.weight`), `all`/`*`, `weights`, `biases`."""
        names = list(self.base)
        if pattern in ("all", "*"):
            chosen = names
        elif pattern == "weights":
            chosen = [n for n in names if n.endswith("weight")]
        elif pattern == "biases":
            chosen = [n for n in names if n.endswith("bias")]
        elif pattern in self.base:
            chosen = [pattern]
        else:
            chosen = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not chosen:
            shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
            raise LesionError(f"no parameter matches {pattern!r}; parameters are {shown}")
        return chosen

    def flat_index(self, name: str, index: str | int) -> int:
        """A flat index into parameter `name` from an int or a comma-separated multi-index like `3,5`."""
        shape = tuple(self.base[name].shape)
        numel = int(np.prod(shape)) if shape else 1
        try:
            parts = [int(i) for i in str(index).split(",")]
        except ValueError as err:
            raise LesionError(f"bad index {index!r} for {name}: give a flat index or i,j,…") from err
        if len(parts) == 1:
            flat = parts[0]
        elif len(parts) == len(shape) and all(0 <= p < s for p, s in zip(parts, shape, strict=True)):
            flat = int(np.ravel_multi_index(parts, shape))
        else:
            raise LesionError(f"index {index} does not fit {name} of shape {shape}")
        if not 0 <= flat < numel:
            raise LesionError(f"index {flat} is out of range for {name} ({numel} values, shape {shape})")
        return flat
