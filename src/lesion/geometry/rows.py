"""The Jacobian rows A of a minibatch (b·m rows, one per input and output) as an object with the products
geodesic recovery needs: K = AAᵀ, A v, Aᵀ u and A diag(mask) Aᵀ (SPEC §3.6).

`ExplicitRows` holds A (any model: stacked per-input Jacobians). `MLPRows` never forms A: for an MLP, the row
(x, k) of Linear layer l is δ_{x,k,l} ⊗ a_{x,l} (and δ_{x,k,l} for the bias), so the products are a few matrix
products per layer (`gram.mlp_factors`). `FlatModel.jacobian_rows` chooses between them, once per model;
callers see only the `JacobianRows` protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from lesion.crash.structure import MLPStructure
from lesion.geometry.gram import MLPGramProduct, gram_from_factors


class JacobianRows(Protocol):
    """The products of the Jacobian rows A (b·m rows, n columns) that recovery and the trust region need
    (SPEC §3.6), returned in float64."""

    rows: int

    def gram(self) -> torch.Tensor:
        """K = A Aᵀ."""
        ...

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """A v."""
        ...

    def apply_t(self, u: torch.Tensor) -> torch.Tensor:
        """Aᵀ u."""
        ...

    def masked_gram(self, mask: torch.Tensor) -> torch.Tensor:
        """A diag(mask) Aᵀ."""
        ...


class ExplicitRows:
    """A stored as a (rows, n) matrix in its own precision; products are computed and returned in float64, a
    block of columns at a time (`BLOCK_BYTES`): a Gram matrix formed in float32 carries rounding noise of
    λ_max·rows·1e-7, above the small genuine eigenvalues of a rank-deficient A, and the trust region's 1/λ
    amplified it into the step (7e-4 relative on a 320-row A of a BatchNorm net, 0.15 at a wide radius)."""

    BLOCK_BYTES = 32 << 20  # a float64 copy of this much of A at a time

    def __init__(self, A: torch.Tensor) -> None:
        self.A = A.detach()
        self.rows = self.A.shape[0]

    def _blocks(self) -> Iterator[tuple[slice, torch.Tensor]]:
        width = max(1, self.BLOCK_BYTES // (8 * max(self.rows, 1)))
        for start in range(0, self.A.shape[1], width):
            part = slice(start, start + width)
            yield part, self.A[:, part].double()

    def gram(self) -> torch.Tensor:
        """K = A Aᵀ."""
        return self.masked_gram(None)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """A v."""
        v = v.double()
        out = torch.zeros(self.rows, dtype=torch.float64, device=self.A.device)
        for part, block in self._blocks():
            out += block @ v[part]
        return out

    def apply_t(self, u: torch.Tensor) -> torch.Tensor:
        """Aᵀ u."""
        u = u.double()
        return torch.cat([block.T @ u for _, block in self._blocks()])

    def masked_gram(self, mask: torch.Tensor | None) -> torch.Tensor:
        """A diag(mask) Aᵀ (A Aᵀ for None)."""
        K = torch.zeros(self.rows, self.rows, dtype=torch.float64, device=self.A.device)
        for part, block in self._blocks():
            K += (block if mask is None else block * mask[part].double()) @ block.T
        return K


class MLPRows:
    """A of an MLP through its layer factors (float64), parameters in the model's named_parameters order."""

    def __init__(self, structure: MLPStructure, names: list[str], x: torch.Tensor, output: str = "raw") -> None:
        self.product = MLPGramProduct(structure, x.double(), output)
        self.rows = self.product.size
        self.names = names
        self.linear = structure.linear_names

    @classmethod
    def of_product(cls, product: MLPGramProduct, names: list[str], linear: tuple[str, ...]) -> MLPRows:
        """Rows over the factors of an existing product (`stacked_rows`)."""
        out = cls.__new__(cls)
        out.product, out.rows, out.names, out.linear = product, product.size, names, linear
        return out

    def gram(self) -> torch.Tensor:
        """K from the factors: Σ_l (δδᵀ) ⊙ (aaᵀ + [bias])."""
        return gram_from_factors(self.product.factors)

    def _split(self, v: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        out, offset = [], 0
        for (a, delta, has_bias) in self.product.factors:
            n_out, n_in = delta.shape[2], a.shape[1]
            weight = v[offset:offset + n_out * n_in].view(n_out, n_in)
            offset += n_out * n_in
            bias = None
            if has_bias:
                bias = v[offset:offset + n_out]
                offset += n_out
            out.append((weight, bias))
        return out

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """A v, v in named_parameters order (weight, bias per Linear layer)."""
        return self.product.apply(self._split(v.double())).reshape(-1)

    def apply_t(self, u: torch.Tensor) -> torch.Tensor:
        """Aᵀ u as a flat vector."""
        parts = self.product.transpose_apply(u.double().reshape(self.product.inputs, self.product.m))
        return torch.cat([t for w, b in parts for t in ((w.reshape(-1),) if b is None else (w.reshape(-1), b))])

    def masked_gram(self, mask: torch.Tensor) -> torch.Tensor:
        """A diag(mask) Aᵀ, one row at a time through the factors."""
        eye = torch.eye(self.rows, dtype=torch.float64, device=mask.device)
        return torch.stack([self.apply(self.apply_t(e) * mask.double()) for e in eye], dim=1)


def stacked_rows(parts: list[JacobianRows]) -> JacobianRows:
    """The rows of several minibatches as one A = [A₁; A₂; …] (a running estimate g = AᵀA/Σb over the last few
    steps of a path, each part computed at the weights of its own step): explicit rows concatenated, MLP rows
    through their concatenated layer factors (K's cross terms come from the same factor products)."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, ExplicitRows) for p in parts):
        return ExplicitRows(torch.cat([p.A for p in parts]))  # type: ignore[union-attr]
    if not all(isinstance(p, MLPRows) for p in parts):
        raise TypeError("stacked_rows takes rows of one kind")
    first = parts[0]
    assert isinstance(first, MLPRows)
    return MLPRows.of_product(MLPGramProduct.stacked([p.product for p in parts]),  # type: ignore[union-attr]
                              first.names, first.linear)
