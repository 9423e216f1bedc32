"""lesion: measure, attack and repair the resilience of neural networks to damage.

The definitions behind every number are fixed in SPEC.md (shared with the project); the two papers it
implements are [R] (El Mhamdi et al., crash robustness) and [G] (Raghavan et al., geometry of resilience).
"""

from lesion.errors import LesionError

__version__ = "0.1.0"

__all__ = ["LesionError", "__version__"]
