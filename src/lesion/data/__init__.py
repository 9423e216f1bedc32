"""Data sets: bundled ones available offline, local-file loaders (IDX, CIFAR-10 pickles, npz), input grids.

`load(name, seed)` returns a `Dataset`; `available()` lists the names and forms it accepts (SPEC §5).
"""

from lesion.data.catalog import available
from lesion.lazy import lazy_exports

# loaded on first use, so that the CLI's --help (which lists the data sets) does not import torch
_EXPORTS = {"Dataset": "lesion.data.dataset", "load": "lesion.data.sources"}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["Dataset", "available", "load"]
