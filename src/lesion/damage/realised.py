"""A realised damage: the concrete damaged network, as data (SPEC §0: damage is a mask, never a mutation).

`Realised` holds the parameters that differ from the trained network (full tensors), the unit overrides per
site (a unit's value becomes value·keep + stuck: keep 0 and stuck 0 is a crash), and a JSON-able record of
the concrete faults (indices, bits, values), which is what a fault list saves and replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

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


@dataclass(frozen=True)
class Realised:
    """The changed parameters, the unit overrides and the fault record of one damage configuration."""

    params: dict[str, torch.Tensor] = field(default_factory=dict)
    units: dict[str, UnitOverride] = field(default_factory=dict)
    faults: tuple[dict[str, Any], ...] = ()

    def param(self, name: str, base: dict[str, torch.Tensor]) -> torch.Tensor:
        """The current value of parameter `name` (changed or trained)."""
        return self.params.get(name, base[name])

    def with_params(self, changed: dict[str, torch.Tensor], fault: dict[str, Any]) -> Realised:
        """A copy with parameters replaced and one more fault recorded."""
        return Realised({**self.params, **changed}, self.units, (*self.faults, fault))

    def with_units(self, override: UnitOverride, fault: dict[str, Any] | None) -> Realised:
        """A copy with the unit override of its site replaced and (unless None) one more fault recorded."""
        faults = self.faults if fault is None else (*self.faults, fault)
        return Realised(self.params, {**self.units, override.site.name: override}, faults)

    def full_params(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every parameter of the damaged network."""
        return {**base, **self.params}
