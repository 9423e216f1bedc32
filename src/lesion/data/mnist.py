"""Loading a folder with the four MNIST-style IDX files (MNIST, Fashion-MNIST, ...) (SPEC §5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lesion.data.dataset import Dataset
from lesion.data.idx import read_idx
from lesion.errors import LesionError

#: (split, kind, idx) parts of the four standard file names.
_FILES = (
    ("train", "images", "idx3"),
    ("train", "labels", "idx1"),
    ("t10k", "images", "idx3"),
    ("t10k", "labels", "idx1"),
)


def _candidates(split: str, kind: str, idx: str) -> list[str]:
    """Accepted names of one file: dashed or dotted, gzipped or not."""
    stems = [f"{split}-{kind}-{idx}-ubyte", f"{split}-{kind}.{idx}-ubyte"]
    return [name for stem in stems for name in (stem, stem + ".gz")]


def find_idx_files(folder: Path) -> dict[str, Path]:
    """The four IDX files of `folder`, keyed "train-images", "train-labels", "t10k-images", "t10k-labels".

    Each may be named ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``, with or without ``.gz``.
    Raises `LesionError` listing every missing file.
    """
    if not folder.is_dir():
        raise LesionError(f"{folder} is not a folder; give the folder holding the four MNIST IDX files")
    found: dict[str, Path] = {}
    missing: list[str] = []
    for split, kind, idx in _FILES:
        names = _candidates(split, kind, idx)
        path = next((folder / n for n in names if (folder / n).is_file()), None)
        if path is None:
            missing.append(f"{names[0]}[.gz]")
        else:
            found[f"{split}-{kind}"] = path
    if missing:
        raise LesionError(f"{folder} lacks the IDX file(s) {', '.join(missing)}; it needs the four files "
                          "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                          "t10k-labels-idx1-ubyte (gzipped or not)")
    return found


def _images(path: Path) -> tuple[torch.Tensor, np.dtype]:
    """Images (N, 1, H, W) float32 (uint8 scaled by 1/255, other dtypes as stored), and the stored dtype."""
    array = read_idx(path)
    if array.ndim != 3:
        raise LesionError(f"{path} holds an array of shape {array.shape}; an images file must be 3-D "
                          "(N, H, W)")
    if array.dtype == np.uint8:
        return torch.from_numpy(array).to(torch.float32).div_(255.0).unsqueeze(1), array.dtype
    return torch.from_numpy(array.astype(np.float32)).unsqueeze(1), array.dtype


def _labels(path: Path) -> torch.Tensor:
    """Labels (N,) int64."""
    array = read_idx(path)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise LesionError(f"{path} holds a {array.dtype} array of shape {array.shape}; a labels file must "
                          "be 1-D integers")
    return torch.from_numpy(array.astype(np.int64))


def load_idx_folder(folder: str | Path, name: str, what: str = "MNIST-format") -> Dataset:
    """Load the standard train (60k for MNIST) / t10k (10k) split from a folder of four IDX files (SPEC §5).

    uint8 images are scaled to [0, 1] by 1/255, other dtypes kept as given; shape (N, 1, H, W) float32;
    labels int64. `what` names the data in the description (e.g. "Fashion-MNIST").
    """
    folder = Path(folder).expanduser()
    files = find_idx_files(folder)
    x_train, stored_train = _images(files["train-images"])
    x_test, stored_test = _images(files["t10k-images"])
    y_train = _labels(files["train-labels"])
    y_test = _labels(files["t10k-labels"])
    for split, x, y in (("train", x_train, y_train), ("t10k", x_test, y_test)):
        if x.shape[0] != y.shape[0]:
            raise LesionError(f"{folder}: {x.shape[0]} {split} images but {y.shape[0]} {split} labels; the "
                              "IDX files do not belong together")
    if stored_train != stored_test:  # one split scaled or stored otherwise than the other: 255× apart, say
        raise LesionError(f"{folder}: the train images are {stored_train} and the t10k images {stored_test}; "
                          "give both in one dtype (uint8 for 0..255 pixels)")
    scaled_train = stored_train == np.uint8
    labels = torch.cat([y_train, y_test])
    if labels.numel() and int(labels.min()) < 0:
        raise LesionError(f"{folder}: negative labels in the IDX labels files; labels must be 0, 1, 2, ...")
    num_classes = int(labels.max()) + 1 if labels.numel() else 1
    scaling = ("pixels scaled from 0..255 to [0, 1]" if scaled_train
               else "pixel values kept as stored (not uint8)")
    size = f"{x_train.shape[2]}x{x_train.shape[3]}"
    description = (f"{what} from the IDX files in {folder}: the standard split of {x_train.shape[0]:,} "
                   f"train (train-*) and {x_test.shape[0]:,} test (t10k-*) images of {size}, {scaling}, "
                   "unshuffled.")
    return Dataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   description=description, source=str(folder), num_classes=num_classes)
