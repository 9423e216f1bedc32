"""Damage descriptions and their application as masks (ARCHITECTURE.md: damage/; SPEC §1).

where × what: selectors choose indices, kinds say what happens there, `realise` turns descriptions into a
concrete damaged network (`Realised`), and `apply` runs it, one configuration or many in one vmapped pass.
"""

from lesion.lazy import lazy_exports

# where each public name lives; loaded on first use, so that `import lesion.damage.grammar` (the CLI's --help)
# does not import torch
_EXPORTS = {
    "batched_damaged_outputs": "lesion.damage.apply",
    "damaged_outputs": "lesion.damage.apply",
    "BitFlip": "lesion.damage.kinds",
    "Damage": "lesion.damage.kinds",
    "Direction": "lesion.damage.kinds",
    "FilterDeletion": "lesion.damage.kinds",
    "HeadCrash": "lesion.damage.kinds",
    "Perturbation": "lesion.damage.kinds",
    "StuckAt": "lesion.damage.kinds",
    "UnitCrash": "lesion.damage.kinds",
    "WeightDeletion": "lesion.damage.kinds",
    "realise": "lesion.damage.kinds",
    "Realised": "lesion.damage.realised",
    "UnitOverride": "lesion.damage.realised",
    "Explicit": "lesion.damage.selectors",
    "RandomCount": "lesion.damage.selectors",
    "RandomFraction": "lesion.damage.selectors",
    "SmallestMagnitude": "lesion.damage.selectors",
    "SPEC_HELP": "lesion.damage.grammar",
    "parse_damage": "lesion.damage.spec",
    "Target": "lesion.damage.target",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "SPEC_HELP",
    "BitFlip",
    "Damage",
    "Direction",
    "Explicit",
    "FilterDeletion",
    "HeadCrash",
    "Perturbation",
    "RandomCount",
    "RandomFraction",
    "Realised",
    "SmallestMagnitude",
    "StuckAt",
    "Target",
    "UnitCrash",
    "UnitOverride",
    "WeightDeletion",
    "batched_damaged_outputs",
    "damaged_outputs",
    "parse_damage",
    "realise",
]
