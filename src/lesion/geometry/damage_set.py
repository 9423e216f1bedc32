"""Damage sets D for recovery (SPEC §3.6): the weight indices of deleted units or filters.

Deleting unit (or filter) i of a Linear (or conv) layer zeroes its incoming weights and bias, and the weights
that read it in the next layer (the next Linear's column, the next conv's input channel, or, after a
flatten, the block of the dense layer's columns that the channel's positions feed). The damage hyperplane
is H_D = {w : w_D = 0}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lesion.damage.chain import chain_leaves
from lesion.damage.selectors import Selector, parse_selector
from lesion.damage.sites import resolve_site
from lesion.errors import LesionError
from lesion.geometry.params import ParameterLayout


@dataclass(frozen=True)
class DamageSet:
    """Flat indices D of the damaged weights, the layer and units they come from."""

    indices: torch.Tensor
    layer: str
    units: tuple[int, ...]
    width: int
    parts: tuple[DamageSet, ...] = ()

    def unit_list(self) -> list[tuple[str, int]]:
        """(layer, unit) of every deleted unit."""
        if self.parts:
            return [pair for part in self.parts for pair in part.unit_list()]
        return [(self.layer, u) for u in self.units]

    def mask(self, layout: ParameterLayout) -> dict[str, torch.Tensor]:
        """Parameter name → 0/1 mask that keeps D at zero."""
        flat = torch.ones(layout.n)
        flat[self.indices] = 0.0
        return {name: m.clone() for name, m in layout.unflatten(flat).items()}

    def describe(self) -> str:
        """Human text."""
        return f"{len(self.units)} of the {self.width} units of {self.layer} ({len(self.indices):,} weights)"


def _unit_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    leaves = chain_leaves(model) or [(n, m) for n, m in model.named_modules() if not list(m.children())]
    return [(n, m) for n, m in leaves if isinstance(m, nn.Linear | nn.Conv2d)]


def unit_damage_set(model: nn.Module, layer: str, selector: Selector, generator: torch.Generator) -> DamageSet:
    """D for deleting the units chosen by `selector` among those of hidden layer `layer` (index or name)."""
    site = resolve_site(model, layer)
    layers = _unit_layers(model)
    names = [n for n, _ in layers]
    if site.layer not in names or names.index(site.layer) == len(names) - 1:
        raise LesionError(f"{layer} is not a hidden layer followed by another layer")
    position = names.index(site.layer)
    this, nxt_name, nxt = layers[position][1], layers[position + 1][0], layers[position + 1][1]
    units = selector.select(site.width, None, generator)
    if len(units) == 0:
        raise LesionError("the damage deletes no unit")
    layout = ParameterLayout.of(model)
    offsets = layout.offsets()
    flat = torch.zeros(layout.n, dtype=torch.bool)

    def mark(name: str, index: tuple) -> None:
        start, stop = offsets[name]
        view = flat[start:stop].view(layout.shapes[layout.names.index(name)])
        view[index] = True

    mark(f"{site.layer}.weight", (units,))
    if getattr(this, "bias", None) is not None:
        mark(f"{site.layer}.bias", (units,))
    weight = nxt.weight
    if isinstance(nxt, nn.Conv2d) or weight.shape[1] == site.width:
        mark(f"{nxt_name}.weight", (slice(None), units))
    elif weight.shape[1] % site.width == 0:  # flatten of channels × positions into a dense layer
        block = weight.shape[1] // site.width
        columns = (units.unsqueeze(1) * block + torch.arange(block)).reshape(-1)
        mark(f"{nxt_name}.weight", (slice(None), columns))
    else:
        raise LesionError(f"cannot tell which weights of {nxt_name} read the units of {site.layer}")
    return DamageSet(torch.nonzero(flat).reshape(-1), site.layer, tuple(units.tolist()), site.width)


def parse_delete(model: nn.Module, text: str, generator: torch.Generator) -> DamageSet:
    """`units:LAYER:UNITS` (LAYER = hidden-layer index or module name; UNITS = 1,2,3 | frac=F | count=K)."""
    kind, _, rest = text.partition(":")
    layer, _, units = rest.partition(":")
    if kind not in ("units", "filters") or not layer or not units:
        raise LesionError(f"bad --delete {text!r}: give units:LAYER:UNITS or filters:MODULE:UNITS, "
                          "e.g. units:1:frac=0.9")
    return unit_damage_set(model, layer, parse_selector(units, allow_smallest=False), generator)


def union(sets: list[DamageSet]) -> DamageSet:
    """One damage set deleting the units of several (the hyperplane where all of them are zero)."""
    if not sets:
        raise LesionError("give at least one --delete")
    if len(sets) == 1:
        return sets[0]
    indices = torch.unique(torch.cat([s.indices for s in sets]))
    return DamageSet(indices, " + ".join(s.layer for s in sets), tuple(u for s in sets for u in s.units),
                     sum(s.width for s in sets), tuple(sets))
