"""Seeded train/test splits of data sets that ship without one (SPEC §5)."""

from __future__ import annotations

import numpy as np

from lesion.errors import LesionError


def split_indices(n: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle 0..n-1 with `numpy.random.default_rng(seed)` and cut it into (train, test) index arrays.

    The test indices are the first `n_test` entries of the permutation, the train indices the rest; the
    two are disjoint and together cover every index once.
    """
    if n < 0 or not 0 <= n_test <= n:
        raise LesionError(f"cannot take {n_test} test items out of {n}; choose 0 <= n_test <= n")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test:], perm[:n_test]
