"""Loading the standard CIFAR-10 python folder `cifar-10-batches-py` (SPEC §5: local-file loader only)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesion.data.dataset import Dataset
from lesion.errors import LesionError

FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"

# What the official pickles reference: numpy arrays and their dtypes (numpy 1 and 2 module names).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5 (out-of-band buffers)
    ("numpy._core.numeric", "_frombuffer"),
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only numpy arrays, lists, dicts, strings and numbers, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global only when it is one the official CIFAR-10 pickles use."""
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR-10 batch")


def _unpickle(path: Path) -> dict[bytes, Any]:
    """One batch file as the dict with bytes keys that the official files hold."""
    try:
        with path.open("rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            LookupError, MemoryError, RecursionError, UnicodeError, OSError) as exc:  # a corrupt file, any way
        raise LesionError(f"{path} is not a readable CIFAR-10 batch ({str(exc) or type(exc).__name__}); "
                          "download the python version "
                          "(cifar-10-python.tar.gz) again") from None
    if not isinstance(obj, dict):
        raise LesionError(f"{path} holds a {type(obj).__name__}, not a CIFAR-10 batch dict")
    return obj


def _batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one batch file."""
    batch = _unpickle(path)
    if b"data" not in batch or b"labels" not in batch:
        raise LesionError(f"{path} lacks the keys b'data' and b'labels' of a CIFAR-10 batch "
                          f"(found {sorted(map(repr, batch))}); give the python version of CIFAR-10")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise LesionError(f"{path}: b'data' is a {data.dtype} array of shape {data.shape}; "
                          "CIFAR-10 batches hold uint8 rows of 3072 values")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise LesionError(f"{path}: {data.shape[0]} images but b'labels' is {labels.dtype} of shape "
                          f"{labels.shape}; each image needs one integer label")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def cifar10_folder(path: str | Path) -> Path:
    """The `cifar-10-batches-py` folder: `path` itself, or `path/cifar-10-batches-py` if that exists."""
    path = Path(path).expanduser()
    if (path / FOLDER_NAME).is_dir():
        return path / FOLDER_NAME
    if not path.is_dir():
        raise LesionError(f"{path} is not a folder; give the cifar-10-batches-py folder (or its parent)")
    return path


def load_cifar10(path: str | Path, name: str | None = None) -> Dataset:
    """CIFAR-10 from its python folder: 50,000 train / 10,000 test images (N, 3, 32, 32) in [0, 1] (SPEC §5).

    Reads `data_batch_1..5` and `test_batch` (pickled dicts with bytes keys b'data', b'labels'); the class
    names in `batches.meta` are optional and only quoted in the description.
    """
    folder = cifar10_folder(path)
    missing = [f for f in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / f).is_file()]
    if missing:
        raise LesionError(f"{folder} lacks the CIFAR-10 file(s) {', '.join(missing)}; give the folder "
                          f"{FOLDER_NAME} extracted from cifar-10-python.tar.gz")
    train = [_batch(folder / f) for f in TRAIN_BATCHES]
    x_test_u8, y_test = _batch(folder / TEST_BATCH)
    x_train = torch.from_numpy(np.concatenate([x for x, _ in train])).to(torch.float32).div_(255.0)
    y_train = torch.from_numpy(np.concatenate([y for _, y in train]))
    x_test = torch.from_numpy(x_test_u8).to(torch.float32).div_(255.0)
    classes = ""
    labels = torch.cat([y_train, torch.from_numpy(y_test)])
    num_classes = int(labels.max()) + 1 if labels.numel() else 1
    if (folder / META).is_file():
        meta = _unpickle(folder / META)
        names = meta.get(b"label_names")
        if isinstance(names, list) and all(isinstance(n, bytes | str) for n in names):
            decoded = [n.decode() if isinstance(n, bytes) else n for n in names]
            classes = f" Classes: {', '.join(decoded)}."
            num_classes = max(num_classes, len(decoded))
    description = (f"CIFAR-10 from {folder}: the standard split of {x_train.shape[0]:,} train "
                   f"(data_batch_1..5) and {x_test.shape[0]:,} test (test_batch) 32x32 colour images, pixels "
                   f"scaled from 0..255 to [0, 1], unshuffled.{classes}")
    return Dataset(name=name or f"cifar10:{folder}", x_train=x_train, y_train=y_train, x_test=x_test,
                   y_test=torch.from_numpy(y_test), description=description, source=str(folder),
                   num_classes=num_classes)
