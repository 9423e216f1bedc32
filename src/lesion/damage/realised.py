"""A realised damage: the concrete damaged network, as data (SPEC §0: damage is a mask, never a mutation).

`Realised` holds the parameters that differ from the trained network (full tensors), the parameters that
differ in a few entries (patches: flat indices and new values, so that a bit flip neither copies its tensor
nor hides which entries it changed from the sparse engine, `lesion.damage.sparse`), the unit overrides per
site (a unit's value becomes value·keep + stuck: keep 0 and stuck 0 is a crash), the faults in a site's values
per input (`lesion.damage.activation_faults`), and a JSON-able record of
the concrete faults (indices, bits, values), which is what a fault list saves and replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lesion.damage.activation_faults import ActivationFaults
from lesion.sites import Site


@dataclass(frozen=True)
class UnitOverride:
    """Per-unit override at one site: y ← y·keep + value along the site's unit axis (keep, value: (width,))."""

    site: Site
    keep: torch.Tensor
    value: torch.Tensor

    @staticmethod
    def identity(site: Site, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> UnitOverride:
        """No unit changed."""
        return UnitOverride(site, torch.ones(site.width, dtype=dtype, device=device),
                            torch.zeros(site.width, dtype=dtype, device=device))

    def force(self, units: torch.Tensor, value: float) -> UnitOverride:
        """A copy in which `units` output `value` whatever their input."""
        keep, new = self.keep.clone(), self.value.clone()
        units = units.to(keep.device)
        keep[units] = 0.0
        new[units] = value
        return UnitOverride(self.site, keep, new)

    def to(self, device: torch.device | str) -> UnitOverride:
        """The override on `device`, keep and value in one copy (drawn on the host, a configuration costs one
        transfer instead of a handful of tiny kernels on a GPU)."""
        if self.keep.device == torch.device(device):
            return self
        both = torch.stack([self.keep, self.value]).to(device)
        return UnitOverride(self.site, both[0], both[1])


Patch = tuple[torch.Tensor, torch.Tensor]  # (sorted distinct flat indices, new values there)


@dataclass(frozen=True)
class Realised:
    """The changed parameters (`params` whole, `patches` by entry), the unit overrides, the activation faults
    (per site name, applied in order) and the fault record of one damage configuration. `pinned`: per parameter,
    the entries that stay 0 whatever later damage writes there (a crashed head's projection weights, SPEC §6.1:
    the head outputs nothing, so a bit flip in memory that reads it cannot bring it back)."""

    params: dict[str, torch.Tensor] = field(default_factory=dict)
    units: dict[str, UnitOverride] = field(default_factory=dict)
    faults: tuple[dict[str, Any], ...] = ()
    patches: dict[str, Patch] = field(default_factory=dict)
    activations: dict[str, tuple[ActivationFaults, ...]] = field(default_factory=dict)
    pinned: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def transient_only(self) -> bool:
        """Whether the configuration's only damage is transient activation faults (some inputs, some values)."""
        return (bool(self.activations) and not self.params and not self.patches and not self.units
                and all(f.inputs is not None for faults in self.activations.values() for f in faults))

    @property
    def undamaged(self) -> bool:
        """Whether the configuration changes nothing (a random draw that hit no weight, unit or value)."""
        return not (self.params or self.patches or self.units
                    or any(f.count for faults in self.activations.values() for f in faults))

    @property
    def changed(self) -> list[str]:
        """Names of the parameters this configuration changes."""
        return [*self.params, *(n for n in self.patches if n not in self.params)]

    def param(self, name: str, base: dict[str, torch.Tensor]) -> torch.Tensor:
        """The current value of parameter `name` (changed or trained)."""
        if name in self.params:
            return self.params[name]
        if name in self.patches:
            indices, values = self.patches[name]
            out = base[name].clone()
            out.view(-1)[indices] = values.to(out.dtype)
            return out
        return base[name]

    def with_params(self, changed: dict[str, torch.Tensor], fault: dict[str, Any]) -> Realised:
        """A copy with parameters replaced and one more fault recorded."""
        patches = {n: p for n, p in self.patches.items() if n not in changed}
        changed = {n: t.masked_fill(self.pinned[n].to(t.device), 0) if n in self.pinned else t
                   for n, t in changed.items()}
        return replace(self, params={**self.params, **changed}, faults=(*self.faults, fault), patches=patches)

    def with_pinned(self, name: str, zeros: torch.Tensor) -> Realised:
        """A copy in which the entries `zeros` (a boolean mask of parameter `name`) are 0 now and after any
        later damage."""
        if name in self.pinned:
            zeros = zeros | self.pinned[name].to(zeros.device)
        return replace(self, pinned={**self.pinned, name: zeros})

    def with_patch(self, base: dict[str, torch.Tensor], name: str, indices: torch.Tensor, values: torch.Tensor,
                   fault: dict[str, Any]) -> Realised:
        """A copy in which the entries `indices` (distinct flat indices) of parameter `name` are `values`, and one
        more fault recorded."""
        if name in self.params:
            tensor = self.params[name].clone()
            tensor.view(-1)[indices] = values.to(tensor.dtype)
            return self.with_params({name: tensor}, fault)
        if name in self.patches:
            old, old_values = self.patches[name]
            merged = torch.unique(torch.cat([old, indices]))
            merged_values = base[name].reshape(-1)[merged].clone()
            merged_values[torch.searchsorted(merged, old)] = old_values
            merged_values[torch.searchsorted(merged, indices)] = values.to(merged_values.dtype)
            indices, values = merged, merged_values
        if name in self.pinned:
            values = values.masked_fill(self.pinned[name].reshape(-1).to(indices.device)[indices], 0)
        order = torch.argsort(indices)
        patches = {**self.patches, name: (indices[order], values[order].to(base[name].dtype))}
        return replace(self, faults=(*self.faults, fault), patches=patches)

    def with_units(self, override: UnitOverride, fault: dict[str, Any] | None) -> Realised:
        """A copy with the unit override of its site replaced and (unless None) one more fault recorded."""
        faults = self.faults if fault is None else (*self.faults, fault)
        return replace(self, units={**self.units, override.site.name: override}, faults=faults)

    def with_activation_faults(self, faults: ActivationFaults, fault: dict[str, Any]) -> Realised:
        """A copy with activation faults added at their site (after those already there) and one more fault
        recorded."""
        name = faults.site.name
        return replace(self, activations={**self.activations, name: (*self.activations.get(name, ()), faults)},
                       faults=(*self.faults, fault))

    def changed_params(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The changed parameters, whole."""
        return {n: self.param(n, base) for n in self.changed}

    def full_params(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every parameter of the damaged network."""
        return {**base, **self.changed_params(base)}
