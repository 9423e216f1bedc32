"""Real English text that ships with the operating system (SPEC §5): the licence texts in
/usr/share/common-licenses, as character-level token data for sequence models.

- ``text``: causal language modelling: x = T characters, y = the next character at each position (N, T);
- ``text-cls``: which licence family (Apache, Artistic, GFDL, GPL, LGPL, MPL) a T-character snippet comes from.
Characters are printable ASCII (32..126) and newline, one id each; anything else maps to one "other" id.
Windows do not overlap; a seeded shuffle splits them 80% / 20%.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lesion.data.dataset import Dataset
from lesion.data.split import split_indices
from lesion.errors import LesionError

LICENCES = Path(os.environ.get("LESION_TEXT_DIR", "/usr/share/common-licenses"))
VOCABULARY = 97  # newline, 95 printable characters, other
FAMILIES = ("Apache", "Artistic", "GFDL", "GPL", "LGPL", "MPL")
WINDOW = 64


def encode_text(text: str) -> np.ndarray:
    """Character ids: 0 newline, 1..95 for ASCII 32..126, 96 anything else."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.where((codes >= 32) & (codes <= 126), codes - 31, VOCABULARY - 1)
    return np.where(codes == 10, 0, ids)


def _files() -> list[tuple[str, Path]]:
    if not LICENCES.is_dir():
        raise LesionError(f"{LICENCES} not found: the text data sets read the licence texts there "
                          "(or set $LESION_TEXT_DIR to a folder of text files)")
    seen, files = set(), []
    for path in sorted(LICENCES.iterdir()):
        real = path.resolve()
        family = next((f for f in sorted(FAMILIES, key=len, reverse=True) if path.name.startswith(f)), None)
        if real in seen or not real.is_file() or family is None:
            continue
        seen.add(real)
        files.append((family, real))
    if not files:
        raise LesionError(f"no licence texts found in {LICENCES}")
    return files


def load_text(kind: str = "text", seed: int = 0, window: int = WINDOW) -> Dataset:
    """`text` (next-character labels per position) or `text-cls` (licence family per snippet)."""
    xs, ys = [], []
    for family, path in _files():
        ids = encode_text(path.read_text(encoding="utf-8", errors="replace"))
        count = (len(ids) - 1) // (window + 1)
        if count == 0:
            continue
        chunks = ids[: count * (window + 1)].reshape(count, window + 1)
        xs.append(chunks[:, :window])
        ys.append(chunks[:, 1:] if kind == "text" else np.full(count, FAMILIES.index(family)))
    if not xs:
        raise LesionError(f"no licence text in {LICENCES} has the {window + 1} characters of one window")
    x, y = np.concatenate(xs), np.concatenate(ys)
    train, test = split_indices(len(x), max(1, len(x) // 5), seed)
    classes = VOCABULARY if kind == "text" else len(FAMILIES)
    what = "the next character at each position" if kind == "text" else f"the licence family ({', '.join(FAMILIES)})"
    description = (f"{len(x):,} windows of {window} characters from the licence texts in {LICENCES}, labels: {what}; "
                   f"character ids 0..{VOCABULARY - 1}; seeded split {len(train):,} / {len(test):,}.")
    return Dataset(name=kind, x_train=torch.from_numpy(x[train]), y_train=torch.from_numpy(y[train]),
                   x_test=torch.from_numpy(x[test]), y_test=torch.from_numpy(y[test]), description=description,
                   source=str(LICENCES), num_classes=classes)
