"""Lanczos with full reorthogonalisation against a dense float64 eigen-decomposition."""

import pytest
import torch

from lesion.errors import LesionError
from lesion.geometry.lanczos import lanczos_top


def _psd(size: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(size, rank, generator=g, dtype=torch.float64) * torch.logspace(1, -2, rank, dtype=torch.float64)
    return a @ a.T


@pytest.mark.parametrize(("size", "rank", "k"), [(300, 300, 10), (400, 60, 20), (50, 5, 8), (30, 30, 30)])
def test_top_eigenpairs_equal_the_dense_ones(size, rank, k):
    K = _psd(size, rank, seed=size + k)
    values, vectors = lanczos_top(lambda u: K @ u, size, k)
    dense = torch.linalg.eigvalsh(K).flip(0)[:k]
    assert torch.allclose(values, dense, rtol=1e-9, atol=1e-9 * float(dense[0]))
    assert vectors.shape == (size, k)
    found = min(k, rank)  # beyond the rank the eigenvalues are 0 and any orthonormal null vectors do
    residual = K @ vectors[:, :found] - vectors[:, :found] * values[:found]
    assert float(residual.norm(dim=0).max()) <= 1e-7 * float(dense[0])
    assert torch.allclose(vectors.T @ vectors, torch.eye(k, dtype=torch.float64), atol=1e-8)


def test_a_count_beyond_the_size_or_steps_too_few_are_refused():
    K = _psd(40, 40, seed=1)
    with pytest.raises(LesionError, match="between 1 and 40"):
        lanczos_top(lambda u: K @ u, 40, 41)
    with pytest.raises(LesionError, match="did not converge in 12 Lanczos steps"):
        lanczos_top(lambda u: K @ u, 40, 10, max_steps=12)
