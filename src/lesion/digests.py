"""Digests that bind a saved state to what produced it (a checkpoint to its run, a report's stages to their
model and data): sha256 over the dtype, shape and bytes of tensors and arrays, and a text."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def tensor_digest(*tensors: torch.Tensor | np.ndarray | None, text: str = "") -> str:
    """The first 16 hex digits of sha256 over `text` and each tensor's dtype, shape and values (None skipped)."""
    h = hashlib.sha256(text.encode())
    for t in tensors:
        if t is None:
            continue
        array = t.detach().cpu().contiguous().numpy() if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:16]
