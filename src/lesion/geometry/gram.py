"""The Gram route to the metric's spectrum (SPEC §3.1): with A the (m|X|)×n stack of the J_x, the nonzero
eigenvalues of g = AᵀA/|X| are those of K/|X|, K = A Aᵀ, and its eigenvectors are Aᵀu/√(|X| λ).

For MLPs K is built without materialising A, from the layer-wise factorisation of the empirical NTK: for
Linear layer l with input activations a_{x,l} and output sensitivities δ_{x,k,l} = ∂f_k(x)/∂z_l,
    K[(x,k),(x',k')] = Σ_l (δ_{x,k,l}·δ_{x',k',l}) (a_{x,l}·a_{x',l} + [layer l has a bias]).
Other models (CNNs) stack per-input Jacobians (vmap of jacrev) in chunks, within a memory budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lesion.crash.structure import MLPStructure
from lesion.errors import LesionError
from lesion.nets.activations import ScaledReLU, ScaledSigmoid

if TYPE_CHECKING:
    from lesion.geometry.metric import MetricOperator

JACOBIAN_MEMORY = 2 << 30  # bytes allowed for stacked Jacobians on the generic route


def _activation_derivative(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """φ'(z) elementwise: in closed form for the usual activations (ReLU's derivative at 0 taken as 0, as autograd
    does), else as the vector-Jacobian product with a unit cotangent (exact for elementwise φ). The closed forms
    spare a command its first autograd call, which starts autograd's engine (0.4 s)."""
    kind = type(act)
    if kind in (nn.ReLU, ScaledReLU):
        k = getattr(act, "k", 1.0)
        return (z * k > 0).to(z.dtype) * k
    if kind in (nn.Sigmoid, ScaledSigmoid):
        k = getattr(act, "k", 1.0)
        s = torch.sigmoid(z * k)
        return s * (1 - s) * k
    if kind is nn.Tanh:
        return 1 - torch.tanh(z) ** 2
    if kind is nn.Identity:
        return torch.ones_like(z)
    with torch.enable_grad():
        leaf = z.detach().requires_grad_()
        out = act(leaf + 0)  # not the leaf itself, so that an in-place activation may write to it
        (derivative,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
    return derivative


def mlp_factors(structure: MLPStructure, x: torch.Tensor, output: str = "raw"
                ) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Per Linear layer: (input activations a (B, N_in), sensitivities δ (B, m, N_out), has bias)."""
    dtype = x.dtype
    a = x.reshape(len(x), -1)
    inputs, pre = [], []
    with torch.no_grad():
        for layer, weight in enumerate(structure.weights):
            inputs.append(a)
            bias = structure.biases[layer]
            z = a @ weight.to(dtype).T + (0 if bias is None else bias.to(dtype))
            pre.append(z)
            a = structure.activations[layer](z) if layer < structure.depth else z
        m = a.shape[1]
        if output == "softmax":
            p = torch.softmax(a, dim=1)
            delta = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # ∂softmax_k/∂z_j, (B, m, m)
        else:
            delta = torch.eye(m, dtype=dtype, device=a.device).expand(len(x), m, m)
        sensitivities = [delta]
        for layer in range(structure.depth, 0, -1):  # δ_{l} from δ_{l+1}
            back = delta @ structure.weights[layer].to(dtype)  # (B, m, N_l)
            delta = back * _activation_derivative(structure.activations[layer - 1], pre[layer - 1]).unsqueeze(1)
            sensitivities.append(delta)
    sensitivities.reverse()
    return [(inputs[l], sensitivities[l], structure.biases[l] is not None) for l in range(len(structure.weights))]


def gram_matrix(op: MetricOperator) -> torch.Tensor:
    """K = A Aᵀ of size (m|X|)², rows ordered (input, output), at the operator's weights: from the layer factors
    for an MLP, from stacked Jacobians otherwise (the route its `FlatModel` chose)."""
    if op.flat.mlp is None:
        return _gram_from_jacobians(op)
    return gram_from_factors(mlp_factors(op.flat.mlp, op.x, op.output))


def gram_from_factors(factors: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> torch.Tensor:
    """K = Σ_l (δ_l δ_lᵀ) ⊙ (a_l a_lᵀ + [bias]) from the layer factors of `mlp_factors`."""
    K = None
    for a, delta, has_bias in factors:
        B, m = delta.shape[0], delta.shape[1]
        flat = delta.reshape(B * m, -1)
        term = flat @ flat.T  # δ·δ'
        S = a @ a.T + (1.0 if has_bias else 0.0)  # a·a' (+1 for the bias)
        term.view(B, m, B, m).mul_(S.view(B, 1, B, 1))
        K = term if K is None else K.add_(term)
    return K


def _gram_from_jacobians(op: MetricOperator) -> torch.Tensor:
    rows = op.inputs * op.m
    need = rows * op.n * op.weights.element_size()
    if need > JACOBIAN_MEMORY:
        raise LesionError(f"the Gram route for this model would stack {rows:,} Jacobian rows of {op.n:,} weights "
                          f"({need / 2**30:.1f} GiB); use fewer inputs (--inputs; for the spectrum, also the "
                          "operator route: --method lanczos)")
    A = torch.cat([op.jacobian_rows(op.x[i:i + 64]) for i in range(0, len(op.x), 64)])
    return A @ A.T


class MLPGramProduct:
    """u ↦ K u = A (Aᵀ u) for an MLP from its layer factors, without forming K (size m|X|) or A.

    Aᵀu is the weight gradient of Σ_{x,k} u_{x,k} f_k(x): per layer, G_l = E_lᵀ a_l with E_l[x] = Σ_k u_{x,k}
    δ_{x,k,l} (and the bias part Σ_x E_l[x]); A w is the output change Σ_l δ_{x,k,l}·(G_l a_{x,l} + b_l).
    Two matrix products per layer, the cost of a forward and a backward pass, with no autograd overhead.
    """

    def __init__(self, structure: MLPStructure, x: torch.Tensor, output: str = "raw") -> None:
        self._set(mlp_factors(structure, x, output))

    def _set(self, factors: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> None:
        self.factors = factors
        self.inputs = len(factors[0][0])
        self.m = factors[0][1].shape[1]

    @classmethod
    def stacked(cls, products: list[MLPGramProduct]) -> MLPGramProduct:
        """The product over the inputs of several (each taken at its own weights): the layer factors of all,
        concatenated input by input."""
        out = cls.__new__(cls)
        out._set([(torch.cat([a for a, _, _ in layer]), torch.cat([d for _, d, _ in layer]), layer[0][2])
                  for layer in zip(*[p.factors for p in products], strict=True)])
        return out

    @property
    def size(self) -> int:
        """m|X|."""
        return self.inputs * self.m

    def transpose_apply(self, u: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Aᵀu as per-layer (weight gradient (N_out, N_in), bias gradient or None); u of shape (|X|, m)."""
        out = []
        for a, delta, has_bias in self.factors:
            e = torch.einsum("xk,xki->xi", u, delta)
            out.append((e.T @ a, e.sum(0) if has_bias else None))
        return out

    def apply(self, grads: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        """A w for a weight vector given per layer: (|X|, m)."""
        total = None
        for (a, delta, _), (weight, bias) in zip(self.factors, grads, strict=True):
            z = a @ weight.T + (0 if bias is None else bias)
            term = torch.einsum("xki,xi->xk", delta, z)
            total = term if total is None else total + term
        return total

    def diagonal(self) -> torch.Tensor:
        """diag K = Σ_l ‖δ_{x,k,l}‖² (‖a_{x,l}‖² + [bias]) in (input, output) order, without forming K; its sum
        is ‖A‖_F² = |X| tr g (SPEC §3.2)."""
        total = None
        for a, delta, has_bias in self.factors:
            term = (delta**2).sum(-1) * ((a**2).sum(-1, keepdim=True) + (1.0 if has_bias else 0.0))
            total = term if total is None else total + term
        return total.reshape(-1)

    def matvec(self, u: torch.Tensor) -> torch.Tensor:
        """K u for u of shape (m|X|,) in (input, output) order: per layer, e = Σ_k u_{·,k} δ_{·,k}, then
        Σ_x' (a_x·a_x' + [bias]) e_x' and back through δ — with the input Gram matrices a aᵀ formed once (|X|²
        each), never the weight gradient."""
        if not hasattr(self, "_input_grams"):
            self._input_grams = [a @ a.T + (1.0 if has_bias else 0.0) for a, _, has_bias in self.factors]
        U = u.reshape(self.inputs, self.m)
        total = None
        for (_, delta, _), S in zip(self.factors, self._input_grams, strict=True):
            e = torch.einsum("xk,xki->xi", U.to(delta.dtype), delta)
            term = torch.einsum("xki,xi->xk", delta, S @ e)
            total = term if total is None else total + term
        return total.reshape(-1)
