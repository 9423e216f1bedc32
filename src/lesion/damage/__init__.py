"""Damage descriptions and their application as masks (ARCHITECTURE.md: damage/; SPEC §1).

where × what: selectors choose indices, kinds say what happens there, `realise` turns descriptions into a
concrete damaged network (`Realised`), and `apply` runs it, one configuration or many in one vmapped pass.
"""

from lesion.damage.apply import batched_damaged_outputs, damaged_outputs
from lesion.damage.kinds import (
    BitFlip,
    Damage,
    Direction,
    FilterDeletion,
    HeadCrash,
    Perturbation,
    StuckAt,
    UnitCrash,
    WeightDeletion,
    realise,
)
from lesion.damage.realised import Realised, UnitOverride
from lesion.damage.selectors import Explicit, RandomCount, RandomFraction, SmallestMagnitude
from lesion.damage.spec import SPEC_HELP, parse_damage
from lesion.damage.target import Target

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
