"""Crash budgets and their crash sets (SPEC §2.1): `total` crashed units anywhere among the units of some
hidden layers, or fixed per-layer counts. Units are numbered globally: layer `layers[0]` first.
Sets are enumerated in lexicographic order, so a set's position in the enumeration is its rank."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lesion.errors import LesionError


@dataclass(frozen=True)
class CrashBudget:
    """`total` crashes among the units of hidden `layers` (1-based; widths `widths`), or with `per_layer`
    counts (one per entry of `layers`) when given."""

    layers: tuple[int, ...]
    widths: tuple[int, ...]
    total: int
    per_layer: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.widths) or not self.layers:
            raise LesionError("a crash budget names at least one layer and each layer's width")
        if len(set(self.layers)) != len(self.layers):
            raise LesionError(f"layers repeat in {list(self.layers)}")
        if self.per_layer is not None:
            if len(self.per_layer) != len(self.layers) or sum(self.per_layer) != self.total:
                raise LesionError("per-layer crash counts must give one count per layer")
            for f, n, layer in zip(self.per_layer, self.widths, self.layers, strict=True):
                if not 0 <= f <= n:
                    raise LesionError(f"cannot crash {f} of the {n} units of hidden layer {layer}")
        elif not 1 <= self.total <= sum(self.widths):
            raise LesionError(f"cannot crash {self.total} of the {sum(self.widths)} units of layers "
                              f"{list(self.layers)}")

    @property
    def units(self) -> int:
        """Number of candidate units."""
        return sum(self.widths)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Global index of each layer's first unit."""
        return tuple(int(v) for v in np.cumsum((0, *self.widths[:-1])))

    def count(self) -> int:
        """Number of crash sets."""
        if self.per_layer is None:
            return math.comb(self.units, self.total)
        return math.prod(math.comb(n, f) for n, f in zip(self.widths, self.per_layer, strict=True))

    def sets(self) -> Iterator[tuple[int, ...]]:
        """Every crash set, as sorted global unit indices, in lexicographic order."""
        if self.per_layer is None:
            yield from itertools.combinations(range(self.units), self.total)
            return
        parts = [itertools.combinations(range(o, o + n), f)
                 for o, n, f in zip(self.offsets, self.widths, self.per_layer, strict=True)]
        for combo in itertools.product(*[list(p) for p in parts]):
            yield tuple(u for part in combo for u in part)

    def _parts(self) -> list[tuple[int, int, int]]:
        """(first global unit, width, crashes) of each independently chosen part, in enumeration order."""
        if self.per_layer is None:
            return [(0, self.units, self.total)]
        return list(zip(self.offsets, self.widths, self.per_layer, strict=True))

    def unrank(self, rank: int) -> tuple[int, ...]:
        """The crash set at position `rank` of `sets()` (combinatorial unranking, no enumeration)."""
        if not 0 <= rank < self.count():
            raise LesionError(f"rank {rank} is outside 0..{self.count() - 1}")
        parts = self._parts()
        digits = []
        for _, n, f in reversed(parts):  # the last part varies fastest
            rank, digit = divmod(rank, math.comb(n, f))
            digits.append(digit)
        out: list[int] = []
        for (offset, n, f), digit in zip(parts, reversed(digits), strict=True):
            out.extend(offset + u for u in _unrank_combination(n, f, digit))
        return tuple(out)

    def sets_at(self, start: int, count: int) -> np.ndarray:
        """Crash sets start … start + count − 1 of `sets()`, shape (count, total), without enumerating the ones
        before (so that any range of sets can be evaluated anywhere: Ray workers, resumed runs)."""
        out = np.empty((count, self.total), dtype=np.int64)
        if not count:
            return out
        parts = self._parts()
        current = list(self.unrank(start))
        bounds = []  # per part: (slice of the set, highest unit)
        position = 0
        for offset, n, f in parts:
            bounds.append((position, position + f, offset + n))
            position += f
        for row in range(count):
            out[row] = current
            if row + 1 == count:
                break
            for low, high, top in reversed(bounds):  # the lexicographic successor, carrying to earlier parts
                if _next_combination(current, low, high, top):
                    break
                first = bounds.index((low, high, top))
                offset = parts[first][0]
                current[low:high] = range(offset, offset + high - low)
        return out

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` crash sets drawn independently and uniformly, shape (count, total)."""
        if self.per_layer is None:
            keys = rng.random((count, self.units))
            return np.sort(np.argpartition(keys, self.total - 1, axis=1)[:, : self.total], axis=1)
        columns = []
        for offset, n, f in zip(self.offsets, self.widths, self.per_layer, strict=True):
            if f:
                keys = rng.random((count, n))
                columns.append(offset + np.sort(np.argpartition(keys, f - 1, axis=1)[:, :f], axis=1))
        return np.concatenate(columns, axis=1)

    def locate(self, unit: int) -> tuple[int, int]:
        """(hidden layer, unit index in that layer) of a global unit index."""
        for layer, offset, n in zip(self.layers, self.offsets, self.widths, strict=True):
            if offset <= unit < offset + n:
                return layer, unit - offset
        raise ValueError(unit)

    def describe(self) -> str:
        """Human text: '3 crashes in layer 1' or '2+1 crashes in layers 1, 2'."""
        if self.per_layer is not None:
            return f"{'+'.join(map(str, self.per_layer))} crashes in layers {', '.join(map(str, self.layers))}"
        where = f"layer {self.layers[0]}" if len(self.layers) == 1 else f"layers {', '.join(map(str, self.layers))}"
        return f"{self.total} crash{'es' if self.total != 1 else ''} in {where}"


def _unrank_combination(n: int, k: int, rank: int) -> list[int]:
    """The k-subset of range(n) at position `rank` in lexicographic order."""
    out, low = [], 0
    for slot in range(k, 0, -1):
        for candidate in range(low, n):
            below = math.comb(n - candidate - 1, slot - 1)  # subsets whose next element is `candidate`
            if rank < below:
                out.append(candidate)
                low = candidate + 1
                break
            rank -= below
    return out


def _next_combination(values: list[int], low: int, high: int, top: int) -> bool:
    """Advance values[low:high] (sorted units below `top`) to the next combination in lexicographic order, in
    place; False (values unchanged) when it was the last."""
    k = high - low
    for i in range(k - 1, -1, -1):
        if values[low + i] < top - k + i:
            values[low + i] += 1
            for j in range(i + 1, k):
                values[low + j] = values[low + j - 1] + 1
            return True
    return False
