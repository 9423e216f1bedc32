"""The metric tensor g = (1/|X|) Σ_x J_xᵀ J_x of [G] Eq. 1–3 (SPEC §3.1), as a matrix-free operator.

J_x = ∂f(x; w)/∂w ∈ R^{m×n} on raw outputs (or softmax probabilities on request). g·v = (1/|X|) Σ_x J_xᵀ(J_x v)
is computed with one forward-mode product (jvp) and one reverse-mode product (vjp) per chunk of inputs, never
materialising a Jacobian. `to_scipy()` exports it as a scipy LinearOperator (float64). The model enters through
its functional view, a `FlatModel` (SPEC §0).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import jvp, vjp

from lesion import progress
from lesion.errors import LesionError
from lesion.geometry.flat import FlatModel

OUTPUTS = ("raw", "softmax")


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise LesionError(f"output must be raw or softmax, got {output!r}")


def _from_flat(name: str) -> property:
    """A read-only attribute of the operator's `FlatModel`."""
    return property(lambda self: getattr(self.flat, name), doc=f"`FlatModel.{name}`")


class MetricOperator:
    """g = AᵀA/|X| over a `FlatModel` (SPEC §3.1), at the model's current weights (or at `weights`), on inputs
    `x`, in the dtype of `x` (of the model's parameters when `x` holds token ids), on the model's device."""

    def __init__(self, model: nn.Module, x: torch.Tensor, output: str = "raw",
                 weights: torch.Tensor | None = None, chunk: int = 2048) -> None:
        _check_output(output)
        self._setup(FlatModel(model, x, weights), x, output, chunk)

    @classmethod
    def over(cls, flat: FlatModel, x: torch.Tensor, output: str = "raw", chunk: int = 2048) -> MetricOperator:
        """g on inputs x over an existing functional view (no second probe forward)."""
        _check_output(output)
        op = cls.__new__(cls)
        op._setup(flat, x, output, chunk)
        return op

    def _setup(self, flat: FlatModel, x: torch.Tensor, output: str, chunk: int) -> None:
        self.flat, self.x, self.output, self.chunk = flat, x, output, chunk
        self.matvecs = 0

    def at(self, weights: torch.Tensor) -> MetricOperator:
        """g on the same inputs at other weights (no probe forward)."""
        return MetricOperator.over(self.flat.at(weights), self.x, self.output, self.chunk)

    # the functional view's attributes (SPEC §0), read through: model (never mutated), layout, buffers, w where
    # g is taken, m outputs per row, rows per input (the tokens of a sequence model, else 1), n = dim W
    model = _from_flat("model")
    layout = _from_flat("layout")
    buffers = _from_flat("buffers")
    weights = _from_flat("weights")
    m = _from_flat("m")
    rows_per_input = _from_flat("rows_per_input")
    n = _from_flat("n")

    @property
    def inputs(self) -> int:
        """|X|: the inputs, or the (input, token) pairs of a sequence model (one output row each)."""
        return len(self.x) * self.rows_per_input

    def outputs_fn(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """w ↦ f(x; w) (softmax applied on request), as a function of the flat weight vector."""
        return self.flat.outputs_fn(x, self.output)

    def _chunks(self) -> list[torch.Tensor]:
        return [self.x[i:i + self.chunk] for i in range(0, len(self.x), self.chunk)]

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """J v for all inputs: (|X|, m)."""
        return torch.cat([jvp(self.outputs_fn(xc), (self.weights,), (v,))[1] for xc in self._chunks()])

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """Jᵀ u = Σ_x J_xᵀ u_x for cotangents u of shape (|X|, m): (n,)."""
        total = torch.zeros_like(self.weights)
        rows = self.chunk * self.rows_per_input
        for i, xc in enumerate(self._chunks()):
            _, pullback = vjp(self.outputs_fn(xc), self.weights)
            total += pullback(u[i * rows:i * rows + len(xc) * self.rows_per_input])[0]
        return total

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """g v = (1/|X|) Σ_x J_xᵀ (J_x v)."""
        self.matvecs += 1
        v = v.to(self.weights.dtype)
        total = torch.zeros_like(self.weights)
        for xc in self._chunks():
            f = self.outputs_fn(xc)
            _, jv = jvp(f, (self.weights,), (v,))
            _, pullback = vjp(f, self.weights)
            total += pullback(jv)[0]
        return total / self.inputs

    def quadratic(self, v: torch.Tensor) -> float:
        """vᵀ g v = (1/|X|) Σ_x ‖J_x v‖² (one jvp)."""
        jv = self.jvp(v.to(self.weights.dtype))
        return float((jv.double() ** 2).sum() / self.inputs)

    def time_matvec(self) -> float:
        """Seconds one g·v takes here (one jvp and one vjp over all inputs), for estimates: the second of two
        products (the first pays torch.func's one-off set-up)."""
        gen = torch.Generator(device=self.flat.device).manual_seed(0)
        v = torch.randn(self.n, generator=gen, dtype=torch.float64, device=self.flat.device).to(self.weights)
        self.matvec(v)
        started = time.perf_counter()
        self.matvec(v)
        self.matvecs -= 2
        return time.perf_counter() - started

    def to_scipy(self) -> Any:
        """g as a float64 scipy LinearOperator (symmetric); each product advances a progress bar."""
        from scipy.sparse.linalg import LinearOperator  # imported here: scipy.sparse alone takes 0.25 s

        bar = progress.bar(None, "g·v products (Lanczos)", "product")

        def mv(v: np.ndarray) -> np.ndarray:
            out = self.matvec(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).reshape(-1))
            bar.update(1)
            return out.double().cpu().numpy()

        return LinearOperator((self.n, self.n), matvec=mv, rmatvec=mv, dtype=np.float64)

    def jacobian_rows(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The stacked per-input Jacobians J_x on inputs x: (len(x)·rows_per_input·m, n), rows ordered (input,
        output) (`FlatModel.stacked_jacobians`: jacrev of one input's outputs, vmapped over the inputs)."""
        return self.flat.stacked_jacobians(self.weights if weights is None else weights, x, self.output)

    def dense(self) -> torch.Tensor:
        """g as a dense n×n matrix from the per-input Jacobians (for small models and tests)."""
        if self.n * self.n > 5e7:
            raise LesionError(f"a dense metric of {self.n:,}² values is too large; use the operator or Gram route")
        total = torch.zeros(self.n, self.n, dtype=self.weights.dtype, device=self.weights.device)
        for xc in self._chunks():
            jac = self.jacobian_rows(xc)
            total += jac.T @ jac
        return total / self.inputs
