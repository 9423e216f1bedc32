"""Spectrum of the metric tensor (SPEC §3.2): top eigenpairs, all nonzero eigenvalues, trace (exact and
Hutchinson), rank, density and ρ(τ) = the fraction of the n weight-space directions with λ > τ.

Two routes: `gram` (eigen-decomposition of K = A Aᵀ, size m|X|: all nonzero eigenvalues, or the top k by
Lanczos, `lesion.geometry.lanczos`; eigenvectors of g recovered as Aᵀu/√(|X|λ) with one vector-Jacobian product)
and `lanczos` (scipy eigsh on the matrix-free operator, for when K is too large).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lesion.errors import LesionError
from lesion.geometry.gram import JACOBIAN_MEMORY, MLPGramProduct, gram_matrix
from lesion.geometry.lanczos import lanczos_top
from lesion.geometry.metric import MetricOperator
from lesion.stats import RunningMean

GRAM_LIMIT = 12_000  # largest m|X| for which the Gram route is chosen automatically (≈1.2 GB in float64)
GENERIC_GRAM_ROWS = 500  # the same for models that are not MLPs (stacked per-input Jacobians)


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of g (descending), its trace and rank, ρ(τ) with its denominator, and provenance."""

    eigenvalues: list[float]
    trace: float
    rank: int | None
    rho: float | None
    threshold: float
    inputs: int
    parameters: int
    output: str
    method: str
    all_nonzero: bool
    seconds: float
    vulnerable_directions: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: the issue's keys eigenvalues, trace, rank, rho, threshold, inputs, parameters."""
        out = asdict(self)
        out.pop("extra")
        out["rho_denominator"] = "n, the number of trainable parameters"
        return {**out, **self.extra}


def automatic_route(is_mlp: bool, rows: int, n: int, element_size: int, full: bool = False) -> str:
    """The route `auto` picks for m|X| = `rows` Jacobian rows of n weights: `gram` when K is small enough and can
    be built (MLP factors; for other models stacked Jacobians, slow row by row: small problems only). With `full`
    (every nonzero eigenvalue, which only the Gram route gives), `gram` wherever K can be built: up to
    `GRAM_LIMIT` rows, and for other models with the stacked Jacobians within `JACOBIAN_MEMORY`."""
    fits = rows * n * element_size <= JACOBIAN_MEMORY
    if full:
        return "gram" if rows <= GRAM_LIMIT and (is_mlp or fits) else "lanczos"
    if is_mlp:
        return "gram" if rows <= GRAM_LIMIT else "lanczos"
    small = rows <= GENERIC_GRAM_ROWS and fits
    return "gram" if small else "lanczos"


def route_for(op: MetricOperator, method: str, full: bool = False) -> str:
    """`gram` when K is small enough and can be built (MLP factors, or stacked Jacobians within memory); with
    `full` (all nonzero eigenvalues), wherever it can be built (`automatic_route`)."""
    if method == "auto":
        return automatic_route(op.flat.mlp is not None, op.inputs * op.m, op.n, op.weights.element_size(), full)
    if method not in ("gram", "lanczos"):
        raise LesionError(f"unknown spectrum method {method!r}: gram, lanczos or auto")
    return method


def full_refusal(op: MetricOperator, method: str) -> str:
    """Why every nonzero eigenvalue (`--all`) cannot be had on the route `method` leads to, and what to pass."""
    if method == "lanczos":
        return ("--all (every nonzero eigenvalue) needs the Gram route, and --method lanczos gives only the top "
                "eigenvalues: pass --method gram (or leave --method auto) with --all, or drop --all for the top --top")
    rows, per_input, size = op.inputs * op.m, op.m * op.rows_per_input, op.weights.element_size()
    stacked = rows * op.n * size  # bytes of the stacked Jacobians (models that are not MLPs)
    if rows > GRAM_LIMIT:
        why = (f"K = AAᵀ of m·|X| = {rows:,} rows ({rows**2 * 8 / 2**30:.1f} GiB in float64), above the automatic "
               f"route's limit of {GRAM_LIMIT:,} rows")
        most = GRAM_LIMIT // per_input
    else:
        why = (f"{rows:,} stacked Jacobian rows of {op.n:,} weights ({stacked / 2**30:.1f} GiB), above "
               f"{JACOBIAN_MEMORY / 2**30:g} GiB")
        most = JACOBIAN_MEMORY // (per_input * op.n * size)
    fewer = f"use --inputs {most:,} or fewer" if most >= 1 else "use a smaller model"
    forced = op.flat.mlp is not None or stacked <= JACOBIAN_MEMORY  # K can be built, only above the auto limit
    return (f"--all (every nonzero eigenvalue) needs the Gram route, which here would need {why}: {fewer}, "
            + ("pass --method gram to build K anyway, " if forced else "") + "or drop --all for the top --top")


def gram_eigen(op: MetricOperator, k: int | None = None, K: torch.Tensor | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigenvalues of K/|X| (descending) and, when `k` is given, the top-k eigenvectors u of K (columns); `K`,
    the Gram matrix when the caller has it. The eigen-decomposition runs in float64, on a CUDA device where K is
    (cuSOLVER: a 10,000-row K in seconds where the host's LAPACK takes half a minute; the host's when the device
    has no room for it), else on the CPU."""
    K = gram_matrix(op) if K is None else K
    if K.device.type == "cuda":
        try:
            return _eigen(K.double(), k, op.inputs)
        except torch.cuda.OutOfMemoryError:
            pass
    return _eigen(K.double().cpu(), k, op.inputs)


def _eigen(K: torch.Tensor, k: int | None, inputs: int) -> tuple[np.ndarray, np.ndarray | None]:
    size = K.shape[0]
    if k is None:
        values = torch.linalg.eigvalsh(K).cpu().numpy()[::-1] / inputs
        return np.ascontiguousarray(values), None
    if k >= size - 1 or size <= 2000:
        values, vectors = torch.linalg.eigh(K)
        order = torch.argsort(values, descending=True)[:k]
        return values[order].cpu().numpy() / inputs, vectors[:, order].cpu().numpy()
    values, vectors = lanczos_top(lambda u: K @ u, size, k, K.device)
    return values.cpu().numpy() / inputs, vectors.cpu().numpy()


def eigenvectors_from_gram(op: MetricOperator, values: np.ndarray, gram_vectors: np.ndarray) -> torch.Tensor:
    """Unit eigenvectors of g, v = Aᵀu/√(|X|λ), one vjp each: (n, k). Where λ is zero to rounding (k beyond the
    rank: duplicated inputs, dead units), Aᵀu is rounding noise, not a null vector: those columns are unit vectors
    orthogonal to the others (the range of g is spanned by the eigenvectors of its nonzero eigenvalues, so
    these lie in its null space), from a fixed seed."""
    m = len(gram_vectors) // op.inputs
    columns = []
    rows = None if op.flat.mlp is None else op.flat.jacobian_rows(op.weights, op.x, op.output)  # Aᵀu by factors
    rank, _, _ = rank_and_rho(np.asarray(values), op.n, op.inputs * m, 0.0, op.weights.dtype)
    for lam, u in zip(values[:rank], gram_vectors.T[:rank], strict=True):
        cot = torch.from_numpy(np.ascontiguousarray(u)).to(op.weights).reshape(op.inputs, m)
        atu = op.vjp(cot) if rows is None else rows.apply_t(cot.reshape(-1)).to(op.weights)
        v = atu / math.sqrt(op.inputs * max(float(lam), 1e-300))
        columns.append(v / v.norm())
    generator = torch.Generator().manual_seed(0)
    while len(columns) < len(values):
        v = torch.randn(op.n, generator=generator, dtype=torch.float64).to(op.weights)
        for _ in range(2):  # twice: orthogonal to rounding
            for c in columns:
                v = v - (c @ v) * c
        columns.append(v / v.norm())
    return torch.stack(columns, dim=1)


def _mlp_gram_top(op: MetricOperator, k: int, product: MLPGramProduct | None = None
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Top-k eigenpairs of K by Lanczos on the factor product K u (MLPs only; None for other models)."""
    if op.flat.mlp is None:
        return None
    product = product or MLPGramProduct(op.flat.mlp, op.x, op.output)
    if k >= product.size - 1:
        return None
    values, vectors = lanczos_top(lambda u: product.matvec(u.to(op.weights)), product.size, k, op.weights.device)
    return values.cpu().numpy() / op.inputs, vectors.cpu().numpy()


def top_eigenpairs(op: MetricOperator, k: int, method: str = "auto", vectors: bool = True,
                   product: MLPGramProduct | None = None) -> tuple[np.ndarray, torch.Tensor | None, str]:
    """The k largest eigenvalues of g (descending) and unit eigenvectors (n, k) (None with `vectors=False`,
    which skips their cost), and the route used.

    Gram route: Lanczos on K through the layer factors for MLPs (K never formed; `product` when the caller
    holds them already), or on the formed K for other models; eigenvectors of g follow as Aᵀu/√(|X|λ)."""
    if not 1 <= k < op.n:
        raise LesionError(f"ask for between 1 and {op.n - 1} eigenpairs, not {k}")
    route = route_for(op, method)
    if route == "gram":
        found = _mlp_gram_top(op, k, product)
        values, gram_vectors = found if found is not None else gram_eigen(op, k)
        return values, eigenvectors_from_gram(op, values, gram_vectors) if vectors else None, route
    from scipy.sparse.linalg import eigsh  # imported here: scipy.sparse alone takes 0.25 s

    if not vectors:
        return np.sort(eigsh(op.to_scipy(), k=k, which="LA", return_eigenvectors=False))[::-1], None, route
    values, found_vectors = eigsh(op.to_scipy(), k=k, which="LA")
    order = np.argsort(values)[::-1]
    return values[order], torch.from_numpy(found_vectors[:, order].copy()).to(op.weights), route


def trace_exact(op: MetricOperator, K: torch.Tensor | None = None) -> float:
    """tr g = ‖A‖_F²/|X| (SPEC §3.2), from the Gram diagonal (of `K` when the caller has it)."""
    return float(torch.diagonal(gram_matrix(op) if K is None else K).double().sum() / op.inputs)


HUTCHINSON_SAMPLES = 100  # Rademacher vectors of the trace estimate where diag K is not at hand


def trace_products(op: MetricOperator) -> int:
    """The passes the top eigenvalues' route spends on the trace (`spectrum`): none where diag K comes from an
    MLP's layer factors, else `HUTCHINSON_SAMPLES` of vᵀgv (a forward-mode pass each, measured at about the cost
    of a g·v product: 100 of them took 5.7 s where a product took 0.042 s, LeNet-300-100 on 4,000 inputs)."""
    return 0 if _trace_from_factors(op) else HUTCHINSON_SAMPLES


def _trace_from_factors(op: MetricOperator) -> bool:
    return op.flat.mlp is not None and op.inputs * op.m <= GRAM_LIMIT


def trace_hutchinson(op: MetricOperator, samples: int = HUTCHINSON_SAMPLES, seed: int = 0
                     ) -> tuple[float, tuple[float, float]]:
    """Hutchinson's estimate E[vᵀ g v] over Rademacher v, with a 95% interval over the samples."""
    gen = torch.Generator().manual_seed(seed)
    running = RunningMean()
    for _ in range(samples):
        v = (torch.randint(0, 2, (op.n,), generator=gen) * 2 - 1).to(op.weights)
        running.add(op.quadratic(v))
    return running.mean, running.interval()


def rank_and_rho(eigenvalues: np.ndarray, n: int, rows: int, tau: float, dtype: torch.dtype = torch.float64
                 ) -> tuple[int, float, int]:
    """Numerical rank (λ > λ_max·rows·ε, ε of the `dtype` the Gram matrix was formed in), ρ(τ) = #{λ > τ}/n,
    and #{λ > τ}."""
    if len(eigenvalues) == 0:
        return 0, 0.0, 0
    tol = float(eigenvalues[0]) * rows * torch.finfo(dtype).eps
    vulnerable = int((eigenvalues > max(tau, tol)).sum())  # below the rank's floor an eigenvalue is not resolved
    return int((eigenvalues > tol).sum()), vulnerable / n, vulnerable


def spectrum(op: MetricOperator, top: int = 20, tau: float = 1e-3, full: bool | None = None,
             method: str = "auto", seed: int = 0) -> Spectrum:
    """The spectrum of g (SPEC §3.2): all nonzero eigenvalues on the Gram route (when `full`, default when it is
    chosen; `full` with method `auto` takes the Gram route wherever K can be built), else the top eigenvalues by
    Lanczos, at most m·|X| of them (the rank bound of g = JᵀJ: "top_clamped" in `extra` when `top` is above it);
    trace exact wherever K or its diagonal is at hand (the Gram route, an MLP's factors), else Hutchinson's
    estimate with Rademacher vectors drawn from `seed`."""
    started = time.perf_counter()
    route = route_for(op, method, full=bool(full))
    rows = op.inputs * op.m
    full = route == "gram" if full is None else full
    extra: dict[str, Any] = {}
    if full:
        if route != "gram":
            raise LesionError(full_refusal(op, method))
        K = gram_matrix(op)  # once, for the eigenvalues and the trace
        values, _ = gram_eigen(op, K=K)
        rank, rho, vulnerable = rank_and_rho(values, op.n, rows, tau, K.dtype)
        floor = float(values[0]) * rows * float(torch.finfo(K.dtype).eps) if len(values) else 0.0
        values = values[:max(rank, 1)]
        trace = trace_exact(op, K)
        positive = values[values > 0]
        counts, edges = np.histogram(np.log10(positive), bins=40) if len(positive) else (np.zeros(0), np.zeros(0))
        extra = {"density": {"log10_eigenvalue_edges": edges.tolist(), "counts": counts.tolist()},
                 "resolution_floor": floor}  # ρ counts eigenvalues above max(τ, this) only
    else:
        k = min(top, rows, op.n - 1)  # g = JᵀJ has rank at most m·|X|: beyond it only zeros (rounding)
        if k < top:
            extra["top_clamped"] = {"asked": top, "computed": k, "rank_bound": rows}
        # the trace from diag K through the factors (an MLP's Gram route builds them for the eigenvalues anyway)
        exact = _trace_from_factors(op) or (route == "gram" and op.flat.mlp is not None)
        product = MLPGramProduct(op.flat.mlp, op.x, op.output) if exact else None
        rank = rho = vulnerable = None
        if route == "gram" and op.flat.mlp is None:  # K formed from stacked Jacobians: its diagonal is at hand
            K = gram_matrix(op)
            values, _ = gram_eigen(op, k, K=K)
            trace = trace_exact(op, K)
            extra["trace_method"] = "exact, diag K of the stacked Jacobians"
        else:
            values, _, route = top_eigenpairs(op, k, route, vectors=False, product=product)
            if product is not None:
                trace = float(product.diagonal().double().sum() / op.inputs)
                extra["trace_method"] = "exact, diag K from the layer factors"
            else:
                trace, ci = trace_hutchinson(op, seed=seed)
                extra.update({"trace_ci": list(ci), "trace_seed": seed,
                              "trace_method": f"hutchinson, {HUTCHINSON_SAMPLES} Rademacher vectors"})
    return Spectrum([float(v) for v in values], trace, rank, rho, tau, op.inputs, op.n, op.output, route, full,
                    time.perf_counter() - started, vulnerable, extra)
