"""Data sets: bundled ones available offline, local-file loaders (IDX, CIFAR-10 pickles, npz), input grids.

`load(name, seed)` returns a `Dataset`; `available()` lists the names and forms it accepts (SPEC §5).
"""

import importlib
from typing import Any

from lesion.data.catalog import available

# loaded on first use, so that the CLI's --help (which lists the data sets) does not import torch
_EXPORTS = {"Dataset": "lesion.data.dataset", "load": "lesion.data.sources"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lesion.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = ["Dataset", "available", "load"]
