"""Damage sets D for recovery (SPEC §3.6): the weight indices of deleted units or filters.

Deleting unit (or filter) i of a Linear (or conv) layer zeroes its incoming weights and bias, and the weights
that read it in the next layer (the next Linear's column, the next conv's input channel, or, after a
flatten, the block of the dense layer's columns that the channel's positions feed). The damage hyperplane
is H_D = {w : w_D = 0}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lesion.damage.selectors import Selector, parse_selector
from lesion.damage.target import Target
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
    noun: str = "units"  # what `units` counts: "heads" for an attention site's heads

    def unit_list(self) -> list[tuple[str, int]]:
        """(layer, unit) of every deleted unit."""
        if self.parts:
            return [pair for part in self.parts for pair in part.unit_list()]
        return [(self.layer, u) for u in self.units]

    def describe(self) -> str:
        """Human text."""
        if self.parts:
            return f"{' + '.join(p.describe() for p in self.parts)} ({len(self.indices):,} weights in all)"
        return f"{len(self.units)} of the {self.width} {self.noun} of {self.layer} ({len(self.indices):,} weights)"


def _is_network_output(target: Target, site: Any) -> bool:
    """Whether the site's tensor is (one of) the model's outputs, as the recording forward returned them."""
    recording = target.table.recording
    out = recording.output
    values = out.values() if isinstance(out, dict) else out if isinstance(out, tuple | list) else [out]
    returned = {v.data_ptr() for v in values if isinstance(v, torch.Tensor)}
    call = next((c for c in recording.calls if c.path == site.path and c.call == site.call), None)
    return call is not None and call.output is not None and call.output.data_ptr() in returned


def unit_damage_set(model: nn.Module, layer: str, selector: Selector, generator: torch.Generator,
                    example: torch.Tensor | None = None, target: Target | None = None, check: bool = True
                    ) -> DamageSet:
    """D for deleting the units chosen by `selector` among those of site `layer` (SPEC §6.1 address): every
    trainable parameter that only feeds a deleted unit (the layer's rows and bias, the BN/LN scale and shift
    between the layer and the site) and the weights of the next layer that read it. `target`: a `Target` of the
    model already built (its site table is reused: many single-unit sets need one recording forward, not one
    each). With `check`, refused (LesionError) unless zeroing the reader's weights of the units gives the outputs
    of silencing them at the site on the example inputs: where the site is also read by another layer, or its
    reader runs more than once, the reader's weights do not say all that reads them."""
    from lesion.damage.kinds import unit_parameters
    from lesion.sites.modules import reader_columns
    from lesion.sites.table import reader_of

    target = target or Target(model, example=example)
    site = target.site(layer, None)
    if site.kind == "attention-head":
        return _head_damage_set(model, site, selector, generator)
    owned = unit_parameters(target, site)
    reader = reader_of(target.table, site)
    if reader is None and _is_network_output(target, site):
        raise LesionError(f"{site.name} gives the network's outputs: nothing inside the network reads them; "
                          "delete hidden units (`lesion sites` lists the sites)")
    if reader is None:
        raise LesionError(f"cannot tell which weights read the units of {site.name}: no Linear or conv layer "
                          "reads them directly (a residual add or other code comes between)")
    units = selector.select(site.width, None, generator)
    if len(units) == 0:
        raise LesionError("the damage deletes no unit")
    layout = ParameterLayout.of(model)
    offsets = layout.offsets()
    flat = torch.zeros(layout.n, dtype=torch.bool)

    def mark(name: str, axis: int, index: torch.Tensor) -> None:
        start, stop = offsets[name]
        view = flat[start:stop].view(layout.shapes[layout.names.index(name)])
        view.index_fill_(axis, index, True)

    if target.table.recording.counts.get(reader, 1) > 1:
        raise LesionError(f"cannot delete units of {site.name} through the weights of {reader}: {reader} runs "
                          f"{target.table.recording.counts[reader]} times a forward, and its weights read other "
                          "values too")
    if f"{reader}.weight" not in layout.names:
        raise LesionError(f"cannot delete units of {site.name}: the weights of {reader} that read them are frozen "
                          "(requires_grad=False), and only trainable weights are masked and repaired")
    modules = dict(model.named_modules())
    axis = reader_columns(modules[reader])
    inputs = target.base[f"{reader}.weight"].shape[axis]
    if inputs == site.width:
        mark(f"{reader}.weight", axis, units)
    elif inputs % site.width == 0:  # flatten of channels × positions into a dense layer
        block = inputs // site.width
        mark(f"{reader}.weight", axis, (units.unsqueeze(1) * block + torch.arange(block)).reshape(-1))
    else:
        raise LesionError(f"cannot tell which weights of {reader} read the units of {site.name}")
    read = torch.nonzero(flat).reshape(-1)
    for name, axis in owned:
        if name in layout.names:  # a frozen scale or shift of a deleted unit feeds nothing once it is unread
            mark(name, axis, units)
    indices = torch.nonzero(flat).reshape(-1)
    if check:
        _check_deletion_silences(model, target, site, reader, units, layout, read,
                                 indices[~torch.isin(indices, read)], example)
    return DamageSet(indices, site.name, tuple(units.tolist()), site.width)


def _check_deletion_silences(model: nn.Module, target: Target, site: Any, reader: str, units: torch.Tensor,
                             layout: ParameterLayout, read: torch.Tensor, owned: torch.Tensor,
                             example: torch.Tensor | None) -> None:
    """LesionError unless zeroing the reader's weights of the units (flat indices `read`) silences them, tested
    on two example inputs: with those weights zeroed, the outputs must not change when the units' own weights
    (`owned`) are scrambled (else another layer reads the units too), and, where the site is the reader's input
    itself, they must be the outputs of the units' values set to 0 at the site (else the reader's weights read
    other values as well)."""
    from lesion.damage.apply import damaged_outputs
    from lesion.damage.realised import Realised, UnitOverride
    from lesion.sites.example import example_input

    x = example if example is not None else target.example if target.example is not None else example_input(model)
    x = x[:2]
    flat = torch.cat([target.base[name].detach().reshape(-1) for name in layout.names])
    flat[read.to(flat.device)] = 0

    def outputs(realised: Realised) -> torch.Tensor:
        with torch.no_grad():
            return damaged_outputs(model, realised, x).double().nan_to_num(0, 0, 0)

    def params(values: torch.Tensor) -> Realised:
        return Realised(params=dict(zip(layout.names, (t.reshape(shape) for t, shape in zip(
            torch.split(values, layout.sizes), layout.shapes, strict=True)), strict=True)))

    deleted = outputs(params(flat))
    scale = float(deleted.abs().max()) or 1.0

    def same(other: torch.Tensor) -> bool:
        return deleted.shape == other.shape and torch.allclose(deleted, other, rtol=1e-4, atol=1e-5 * scale)

    if len(owned):
        stirred = flat.clone()
        owned = owned.to(flat.device)
        noise = torch.randn(len(owned), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        stirred[owned] = (flat[owned].double() + noise * (1 + flat[owned].double().abs())).to(flat.dtype)
        if not same(outputs(params(stirred))):
            raise LesionError(f"cannot delete units of {site.name} through the weights of {reader}: another "
                              f"layer reads {site.name} too (a residual shortcut or a second branch), so zeroing "
                              f"{reader}'s weights does not silence them")
    if site.read_through is None:
        silenced = UnitOverride.identity(site, target.device).force(units, 0.0)
        if not same(outputs(Realised(units={site.name: silenced}))):
            raise LesionError(f"cannot delete units of {site.name} through the weights of {reader}: zeroing them "
                              f"is not the same as silencing the units (another layer reads {site.name} too, or "
                              f"{reader} runs more than once)")


def _head_damage_set(model: nn.Module, site: Any, selector: Selector, generator: torch.Generator) -> DamageSet:
    """D for deleting attention heads (SPEC §6.1): the output projection's weights that read the heads' slices
    of the attention output (which silences them; the query, key and value weights that feed only those heads
    are left as they are, since nothing reads them any more)."""
    layout = site.heads
    heads = selector.select(layout.heads, None, generator)
    if len(heads) == 0:
        raise LesionError("the damage deletes no head")
    layout_params = ParameterLayout.of(model)
    start, stop = layout_params.offsets()[layout.param]
    flat = torch.zeros(layout_params.n, dtype=torch.bool)
    view = flat[start:stop].view(layout_params.shapes[layout_params.names.index(layout.param)])
    columns = (heads.unsqueeze(1) * layout.head_dim + torch.arange(layout.head_dim)).reshape(-1)
    view.index_fill_(layout.axis, columns, True)
    return DamageSet(torch.nonzero(flat).reshape(-1), site.name, tuple(heads.tolist()), layout.heads, noun="heads")


def parse_delete(model: nn.Module, text: str, generator: torch.Generator,
                 example: torch.Tensor | None = None) -> DamageSet:
    """`units:SITE:UNITS` (SITE = site index or name, SPEC §6.1; UNITS = 1,2,3 | frac=F | count=K), or
    `heads:SITE:HEADS` for the heads of an attention site."""
    kind, _, rest = text.partition(":")
    layer, _, units = rest.partition(":")
    if kind not in ("units", "filters", "heads") or not layer or not units:
        raise LesionError(f"bad --delete {text!r}: give units:LAYER:UNITS, filters:MODULE:UNITS or "
                          "heads:SITE:HEADS, e.g. units:1:frac=0.9")
    if kind == "heads":
        from lesion.damage.target import Target

        site = Target(model, example=example).site(layer, "head")
        return _head_damage_set(model, site, parse_selector(units, allow_smallest=False), generator)
    return unit_damage_set(model, layer, parse_selector(units, allow_smallest=False), generator, example)


def union(sets: list[DamageSet]) -> DamageSet:
    """One damage set deleting the units of several (the hyperplane where all of them are zero)."""
    if not sets:
        raise LesionError("give at least one --delete")
    by_layer: dict[str, list[DamageSet]] = {}
    for s in sets:  # sets of the same layer (overlapping or not) are one set of its units
        by_layer.setdefault(s.layer, []).append(s)
    sets = [same[0] if len(same) == 1 else
            DamageSet(torch.unique(torch.cat([s.indices for s in same])), layer,
                      tuple(sorted({u for s in same for u in s.units})), same[0].width, noun=same[0].noun)
            for layer, same in by_layer.items()]
    if len(sets) == 1:
        return sets[0]
    indices = torch.unique(torch.cat([s.indices for s in sets]))
    return DamageSet(indices, " + ".join(s.layer for s in sets), tuple(u for s in sets for u in s.units),
                     sum(s.width for s in sets), tuple(sets))
