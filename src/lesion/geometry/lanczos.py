"""Top eigenpairs of a symmetric positive semi-definite operator by Lanczos with full reorthogonalisation
(SPEC §3.2: the top of the spectrum of g through K = A Aᵀ, issue 16 item 4).

The Krylov basis is kept whole (no restarts: the operators here have a few thousand dimensions, and k is a few
tens), every new vector orthogonalised twice against it, and the tridiagonal matrix's eigenpairs checked every
few steps: an eigenvalue θ is taken when its residual ‖K y − θ y‖ = β·|s_last| is at most `tol`·θ_max. Where
the basis spans an invariant subspace before k eigenvalues converge (K of low rank), the next vector is a fresh
random one orthogonal to the basis, with β = 0. Everything runs in float64 on the operator's device; it avoids
scipy's ARPACK, whose import alone (scipy.sparse) takes a quarter of a second.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lesion.errors import LesionError

CHECK_EVERY = 5  # steps between convergence checks (an eigen-decomposition of the small tridiagonal matrix)


def lanczos_top(matvec: Callable[[torch.Tensor], torch.Tensor], size: int, k: int, device: torch.device | str = "cpu",
                tol: float = 1e-10, max_steps: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest eigenvalues (descending, float64) of the symmetric operator `matvec` on vectors of `size`,
    and their unit eigenvectors as columns (size, k). LesionError when they have not converged within
    `max_steps` products (default min(size, max(20k, 300)))."""
    if not 1 <= k <= size:
        raise LesionError(f"ask for between 1 and {size} eigenpairs, not {k}")
    steps = min(size, max_steps or max(20 * k, 300))
    generator = torch.Generator().manual_seed(seed)
    basis = torch.zeros(steps + 1, size, dtype=torch.float64, device=device)

    def fresh(count: int) -> torch.Tensor:
        v = torch.randn(size, generator=generator, dtype=torch.float64).to(device)
        for _ in range(2):
            v -= basis[:count].T @ (basis[:count] @ v)
        return v / v.norm()

    basis[0] = fresh(0)
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for j in range(steps):
        w = matvec(basis[j]).to(torch.float64)
        alpha = float(w @ basis[j])
        alphas.append(alpha)
        for _ in range(2):  # full reorthogonalisation, twice
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        beta = float(w.norm())
        done = j + 1 == steps
        if j + 1 >= k and ((j + 1) % CHECK_EVERY == 0 or done or beta <= 1e-12 * max(scale, abs(alpha))):
            theta, vectors = _tridiagonal_eigen(alphas, betas)
            scale = max(scale, float(theta[-1].abs()))
            residual = beta * vectors[-1, -k:].abs()
            if bool((residual <= tol * scale).all()) or j + 1 == size:
                top = theta[-k:].flip(0)
                return top, basis[:j + 1].T @ vectors[:, -k:].flip(1)
        if done:
            break
        if beta <= 1e-12 * max(scale, abs(alpha), 1e-300):  # an invariant subspace: go on from a fresh direction
            betas.append(0.0)
            basis[j + 1] = fresh(j + 1)
        else:
            betas.append(beta)
            basis[j + 1] = w / beta
    raise LesionError(f"the top {k} eigenvalues did not converge in {steps} Lanczos steps")


def _tridiagonal_eigen(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix with diagonal `alphas` and
    off-diagonal `betas`."""
    n = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    theta, vectors = torch.linalg.eigh(T)
    return theta, vectors
