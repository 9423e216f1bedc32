"""Damage descriptions and their application as masks (ARCHITECTURE.md: damage/; SPEC §1)."""

from lesion.damage.unit_crash import crash_hidden_units, hidden_unit_consumers

__all__ = ["crash_hidden_units", "hidden_unit_consumers"]
