"""Data sets: bundled ones available offline, local-file loaders (IDX, CIFAR-10 pickles, npz), input grids.

`load(name, seed)` returns a `Dataset`; `available()` lists the names and forms it accepts (SPEC §5).
"""

from lesion.data.dataset import Dataset
from lesion.data.sources import available, load

__all__ = ["Dataset", "available", "load"]
