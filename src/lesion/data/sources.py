"""The named data sets and path forms, and `load(name)` that dispatches on them (SPEC §5)."""

from __future__ import annotations

from lesion.data.bundled import load_digits, load_fashion_mnist, load_mnist5k
from lesion.data.catalog import AVAILABLE as _AVAILABLE
from lesion.data.cifar import load_cifar10
from lesion.data.dataset import Dataset
from lesion.data.grid import load_grid
from lesion.data.mnist import load_idx_folder
from lesion.data.npz import load_npz
from lesion.data.paths import existing_path
from lesion.errors import LesionError


def _unknown(name: str) -> LesionError:
    listing = "; ".join(f"{form} ({text})" for form, text in _AVAILABLE)
    return LesionError(f"unknown data set {name!r}; valid names and forms: {listing}")


def _parse_grid(rest: str) -> tuple[int, int]:
    parts = rest.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise LesionError(f"cannot read grid:{rest}; write grid:D:STEPS with two integers, "
                          "e.g. grid:4:10") from None


def load(name: str, seed: int = 0) -> Dataset:
    """Load a data set by name or form: mnist5k, digits, fashion-mnist, mnist:PATH, cifar10:PATH, npz:PATH,
    grid:D:STEPS (SPEC §5, data sets available offline).

    `seed` fixes the shuffle of the data sets that ship without a split (mnist5k, digits); the others have a
    fixed split and ignore it. Unknown names and missing paths raise `LesionError`.
    """
    if not isinstance(name, str) or not name.strip():
        raise _unknown(str(name))
    text = name.strip()
    head, sep, rest = text.partition(":")
    key = head.lower()
    if not sep:
        if key == "mnist5k":
            return load_mnist5k(seed)
        if key == "digits":
            return load_digits(seed)
        if key in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
            return load_fashion_mnist()
        if key in ("text", "text-cls"):
            from lesion.data.text import load_text

            return load_text(key, seed)
        if key in ("mnist", "cifar10", "npz"):
            raise LesionError(f"data set {key} needs a path: write {key}:PATH"
                              + ("; for the bundled MNIST digits use mnist5k" if key == "mnist" else ""))
        if key == "grid":
            raise LesionError("data set grid needs its size: write grid:D:STEPS, e.g. grid:4:10")
        raise _unknown(text)
    if key == "mnist":
        path = existing_path(rest, "mnist:PATH")
        return load_idx_folder(path, name=f"mnist:{path}", what="MNIST-format data")
    if key == "cifar10":
        path = existing_path(rest, "cifar10:PATH")
        return load_cifar10(path, name=f"cifar10:{path}")
    if key == "npz":
        path = existing_path(rest, "npz:PATH")
        return load_npz(path, name=f"npz:{path}")
    if key == "grid":
        return load_grid(*_parse_grid(rest))
    raise _unknown(text)
