"""The `Dataset` record every loader returns: tensors plus where they came from (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lesion.errors import LesionError


@dataclass(frozen=True)
class Dataset:
    """A train/test pair of inputs (float32, or int64 token ids) and optional integer labels (int64, shape (N,),
    or (N, T) per token for (N, T) token inputs), with provenance.

    Labels are either present for both splits or absent for both (inputs-only data such as input grids).
    `description` is a human sentence saying where the data came from and how it was split and normalised;
    `source` is the file path or package it was read from. Data sets available offline: SPEC §5.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    description: str
    source: str
    num_classes: int | None

    def __post_init__(self) -> None:
        where = f"data set {self.name!r}"
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor):
                raise LesionError(f"{where}: x_{split} must be a torch.Tensor, got {type(x).__name__}")
            if x.dtype not in (torch.float32, torch.int64):
                raise LesionError(f"{where}: x_{split} must be float32 (or int64 token ids), got {x.dtype}; "
                                  "convert it with .float()")
            if x.dim() == 0 or x.shape[0] == 0:
                raise LesionError(f"{where}: x_{split} is empty; give at least one input")
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                bad = int((~torch.isfinite(x)).sum())
                raise LesionError(f"{where}: x_{split} holds {bad} NaN/inf values; clean the data first")
            if x.dim() < 2:
                raise LesionError(f"{where}: x_{split} has shape {tuple(x.shape)}; inputs must be (N, ...) "
                                  "with at least 2 dimensions (reshape a vector of scalars to (N, 1))")
            if y is None:
                continue
            if not isinstance(y, torch.Tensor):
                raise LesionError(f"{where}: y_{split} must be a torch.Tensor, got {type(y).__name__}")
            if y.dtype != torch.int64 or not (y.dim() == 1 or (y.dim() == 2 and y.shape == x.shape[:2])):
                raise LesionError(f"{where}: y_{split} must be int64 of shape (N,) (or (N, T) per token of "
                                  f"(N, T) inputs), got {y.dtype} of shape {tuple(y.shape)}")
            if y.shape[0] != x.shape[0]:
                raise LesionError(f"{where}: {x.shape[0]} {split} inputs but {y.shape[0]} {split} labels; "
                                  "give one label per input")
        if (self.y_train is None) != (self.y_test is None):
            raise LesionError(f"{where}: labels are given for one split only; give labels for both train and "
                              "test inputs, or for neither")
        train_shape, test_shape = tuple(self.x_train.shape[1:]), tuple(self.x_test.shape[1:])
        if train_shape != test_shape:
            raise LesionError(f"{where}: train inputs have shape {train_shape} but test inputs {test_shape}; "
                              "both splits need the same input shape")
        if self.y_train is not None and self.y_test is not None:
            if self.num_classes is None or self.num_classes < 1:
                raise LesionError(f"{where}: labelled data needs num_classes >= 1")
            for split, y in (("train", self.y_train), ("test", self.y_test)):
                low, high = (int(y.min()), int(y.max())) if y.numel() else (0, 0)
                if low < 0 or high >= self.num_classes:
                    raise LesionError(f"{where}: {split} labels must lie in 0..{self.num_classes - 1}, found "
                                      f"{low}..{high}; labels are class indices from 0")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (1, 28, 28) for MNIST or (4,) for a 4-D input grid."""
        return tuple(int(s) for s in self.x_train.shape[1:])

    @property
    def has_labels(self) -> bool:
        """True when both splits carry class labels."""
        return self.y_train is not None and self.y_test is not None

    @property
    def n_train(self) -> int:
        """Number of training inputs."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test inputs."""
        return int(self.x_test.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Provenance as a JSON-able dict: name, source, description, sizes, input shape, classes (§5)."""
        return {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "has_labels": self.has_labels,
        }
