"""Where faults land (ARCHITECTURE.md, MRFI: selectors are pure functions from a population to indices).

A selector picks flat indices among `n` candidates (weights of the chosen parameters, units of a layer),
given their current values when it needs them and a torch generator when it is random.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lesion.errors import LesionError


def _check_fraction(fraction: float) -> float:
    if not 0.0 <= fraction <= 1.0:
        raise LesionError(f"a fraction must lie in [0, 1], got {fraction}")
    return float(fraction)


@dataclass(frozen=True)
class Explicit:
    """Exactly these flat indices."""

    reads_values: ClassVar[bool] = False  # whether `select` needs the current values

    indices: tuple[int, ...]

    def select(self, n: int, values: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """The given indices, checked against the population size."""
        idx = torch.tensor(self.indices, dtype=torch.long)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise LesionError(f"indices must lie in 0..{n - 1}, got {list(self.indices)[:10]}")
        return torch.unique(idx)

    def describe(self) -> str:
        """Spec text of this selector."""
        return ",".join(map(str, self.indices))


@dataclass(frozen=True)
class RandomFraction:
    """round(fraction·n) distinct indices drawn uniformly."""

    reads_values: ClassVar[bool] = False  # whether `select` needs the current values

    fraction: float

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    def select(self, n: int, values: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """A uniform random subset of size round(fraction·n)."""
        k = round(self.fraction * n)
        return torch.sort(torch.randperm(n, generator=generator)[:k]).values

    def describe(self) -> str:
        """Spec text of this selector."""
        return f"frac={self.fraction}"


@dataclass(frozen=True)
class RandomCount:
    """`count` distinct indices drawn uniformly."""

    reads_values: ClassVar[bool] = False  # whether `select` needs the current values

    count: int

    def select(self, n: int, values: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """A uniform random subset of size `count`."""
        if not 0 <= self.count <= n:
            raise LesionError(f"cannot choose {self.count} of {n}")
        return torch.sort(torch.randperm(n, generator=generator)[: self.count]).values

    def describe(self) -> str:
        """Spec text of this selector."""
        return f"count={self.count}"


@dataclass(frozen=True)
class SmallestMagnitude:
    """The round(fraction·n) entries of smallest |value| (ties broken by index: a stable sort)."""

    reads_values: ClassVar[bool] = True  # whether `select` needs the current values

    fraction: float

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    def select(self, n: int, values: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """Indices of the smallest magnitudes."""
        if values is None:
            raise LesionError("smallest-magnitude selection needs weights, not units")
        k = round(self.fraction * n)
        order = torch.sort(values.abs().flatten(), stable=True).indices
        return torch.sort(order[:k]).values

    def describe(self) -> str:
        """Spec text of this selector."""
        return f"smallest={self.fraction}"


Selector = Explicit | RandomFraction | RandomCount | SmallestMagnitude


def parse_selector(text: str, allow_smallest: bool = True) -> Selector:
    """`3,5,7` | `frac=F` | `count=K` | `smallest=F` (SPEC strings of issue "Damage engine", item 5)."""
    key, _, value = text.partition("=")
    try:
        if not _:
            return Explicit(tuple(int(i) for i in text.split(",") if i.strip() != ""))
        if key == "frac":
            return RandomFraction(float(value))
        if key == "count":
            return RandomCount(int(value))
        if key == "smallest" and allow_smallest:
            return SmallestMagnitude(float(value))
        if key == "idx":
            return Explicit(tuple(int(i) for i in value.split(",") if i.strip() != ""))
    except ValueError:
        pass
    raise LesionError(f"bad selection {text!r}: give indices 3,5,7, frac=F, count=K"
                      + (" or smallest=F" if allow_smallest else ""))
