"""A realised damage: the concrete damaged network, as data (SPEC §0: damage is a mask, never a mutation).

`Realised` holds the parameters that differ from the trained network (full tensors), the unit overrides per
unit site (a unit's output becomes output·keep + value: keep 0 and value 0 is a crash), and a JSON-able
record of the concrete faults (indices, bits, values), which is what a fault list saves and replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class UnitOverride:
    """Per-unit output override at one site: y ← y·keep + value (keep, value of shape (width,))."""

    keep: torch.Tensor
    value: torch.Tensor

    @staticmethod
    def identity(width: int, dtype: torch.dtype = torch.float32) -> UnitOverride:
        """No unit changed."""
        return UnitOverride(torch.ones(width, dtype=dtype), torch.zeros(width, dtype=dtype))

    def force(self, units: torch.Tensor, value: float) -> UnitOverride:
        """A copy in which `units` output `value` whatever their input."""
        keep, new = self.keep.clone(), self.value.clone()
        keep[units] = 0.0
        new[units] = value
        return UnitOverride(keep, new)


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

    def with_units(self, site: str, override: UnitOverride, fault: dict[str, Any]) -> Realised:
        """A copy with the unit override of `site` replaced and one more fault recorded."""
        return Realised(self.params, {**self.units, site: override}, (*self.faults, fault))

    def full_params(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every parameter of the damaged network."""
        return {**base, **self.params}
