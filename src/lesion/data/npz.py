"""Loading a user's arrays from a numpy `.npz` file (SPEC §5: local-file loaders)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from lesion.data.dataset import Dataset
from lesion.errors import LesionError

KEYS = ("x", "y", "x_test", "y_test")


def _inputs(array: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """A numeric input array as float32, values kept as given; signed integers (int32, int64) stay integers, as
    int64: token ids for a model that embeds them (unsigned bytes, an image's pixels, become float32)."""
    if array.dtype.kind not in "biuf":
        raise LesionError(f"{path}: array {key!r} has non-numeric dtype {array.dtype}; save numbers "
                          "(e.g. np.float32)")
    if array.ndim < 2:
        raise LesionError(f"{path}: array {key!r} has shape {array.shape}; inputs must be (N, ...) with at "
                          "least 2 dimensions (reshape scalars to (N, 1))")
    if array.dtype.kind == "i":
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not bool(torch.isfinite(x).all()):
        raise LesionError(f"{path}: array {key!r} contains NaN or infinite values (after casting to "
                          "float32); clean the inputs first")
    return x


def _labels(array: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """Integer class labels as int64, (N,) or (N, T) (one per token of a sequence model); float arrays are accepted
    when every value is a whole number."""
    if array.dtype.kind not in "biuf":
        raise LesionError(f"{path}: array {key!r} has non-numeric dtype {array.dtype}; labels must be "
                          "integers")
    if array.ndim not in (1, 2):
        raise LesionError(f"{path}: array {key!r} has shape {array.shape}; labels must be (N,) class indices, or "
                          "(N, T) for a sequence model's tokens")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise LesionError(f"{path}: array {key!r} holds non-integer values; labels must be class indices "
                          "0, 1, ...")
    if array.size and array.dtype.kind in "uf" and float(array.max()) >= 2.0**62:  # before a cast that would wrap
        raise LesionError(f"{path}: array {key!r} holds a label of {float(array.max()):.3g}; labels must be class "
                          "indices 0, 1, ...")
    y = array.astype(np.int64)
    if y.size and y.min() < 0:
        raise LesionError(f"{path}: array {key!r} holds negative labels; labels must be class indices "
                          "0, 1, ...")
    return torch.from_numpy(y)


def _per_token(x: torch.Tensor, y: torch.Tensor | None, key: str, path: Path) -> None:
    """(N, T) labels go with (N, T) token ids, one label per token."""
    if y is not None and y.ndim == 2 and (x.is_floating_point() or tuple(x.shape) != tuple(y.shape)):
        raise LesionError(f"{path}: {key!r} has shape {tuple(y.shape)}: labels per token need integer token ids of "
                          f"the same shape, and the inputs are {x.dtype} of shape {tuple(x.shape)}")


def load_npz(path: str | Path, name: str | None = None) -> Dataset:
    """Arrays `x`, optional `y`, `x_test`, `y_test` from an `.npz` file (SPEC §5).

    Inputs are cast to float32 as given (no rescaling), signed integer inputs kept as int64 token ids, labels to
    int64 ((N,), or (N, T) with (N, T) token ids). Without `x_test` the test split is
    the training arrays themselves. `num_classes` is the largest label + 1, or None without labels. Only `x`
    is required (inputs without labels); `y_test` needs `x_test`, and labels go with both splits or neither.
    """
    path = Path(path).expanduser()
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file: one array, no names
            raise LesionError(f"{path} holds one array (a .npy file), not named arrays; save the inputs as x, "
                              "with optional y, x_test, y_test: np.savez(path, x=..., y=...)")
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files if k in KEYS}
            others = sorted(set(npz.files) - set(KEYS))
    except FileNotFoundError:
        raise LesionError(f"{path} does not exist; check the path") from None
    except ValueError as exc:
        raise LesionError(f"{path}: cannot read the arrays ({exc}); save plain numeric arrays with "
                          "np.savez(path, x=..., y=...)") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise LesionError(f"{path} is not a readable .npz file ({exc}); save it with np.savez") from None
    if "x" not in arrays:
        raise LesionError(f"{path} has no array 'x' (found {', '.join(others) or 'none'}); save the inputs "
                          "as x, with optional y, x_test, y_test: np.savez(path, x=..., y=...)")
    if "y_test" in arrays and "x_test" not in arrays:
        raise LesionError(f"{path} has 'y_test' but no 'x_test'; add the test inputs x_test or drop y_test")
    has_test = "x_test" in arrays
    if has_test and (("y" in arrays) != ("y_test" in arrays)):
        given, lacking = ("y", "y_test") if "y" in arrays else ("y_test", "y")
        raise LesionError(f"{path} has {given!r} but no {lacking!r}; give labels for both splits or for "
                          "neither")
    x_train = _inputs(arrays["x"], "x", path)
    y_train = _labels(arrays["y"], "y", path) if "y" in arrays else None
    if y_train is not None and y_train.shape[0] != x_train.shape[0]:
        raise LesionError(f"{path}: {x_train.shape[0]} inputs in 'x' but {y_train.shape[0]} labels in 'y'; "
                          "give one label per input")
    _per_token(x_train, y_train, "y", path)
    if has_test:
        x_test = _inputs(arrays["x_test"], "x_test", path)
        if x_test.is_floating_point() != x_train.is_floating_point():  # token ids in one split only: values
            x_train, x_test = x_train.float(), x_test.float()
        y_test = _labels(arrays["y_test"], "y_test", path) if "y_test" in arrays else None
        if y_test is not None and y_test.shape[0] != x_test.shape[0]:
            raise LesionError(f"{path}: {x_test.shape[0]} inputs in 'x_test' but {y_test.shape[0]} labels in "
                              "'y_test'; give one label per input")
        _per_token(x_test, y_test, "y_test", path)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise LesionError(f"{path}: 'x' has inputs of shape {tuple(x_train.shape[1:])} but 'x_test' of "
                              f"shape {tuple(x_test.shape[1:])}; both need the same input shape")
        split = (f"{x_train.shape[0]:,} train inputs from 'x' and {x_test.shape[0]:,} test inputs from "
                 "'x_test'")
    else:
        x_test, y_test = x_train, y_train
        split = (f"{x_train.shape[0]:,} inputs from 'x'; no 'x_test', so the test split is the training "
                 "data itself")
    num_classes = None
    if y_train is not None and y_test is not None:
        num_classes = int(torch.cat([y_train, y_test]).max()) + 1 if y_train.numel() + y_test.numel() else 1
    labels = "with labels" if num_classes is not None else "without labels"
    kept = "signed integers kept as int64 token ids" if not x_train.is_floating_point() else "cast to float32"
    description = (f"Arrays from {path}: {split}, {labels}; inputs {kept} as given (no rescaling, "
                   "no normalisation).")
    return Dataset(name=name or f"npz:{path}", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   description=description, source=str(path), num_classes=num_classes)
