"""The functional view of a model for the geometry (SPEC §0): the flat weight vector w ∈ R^n and the pure
function (x, w) ↦ f(x; w), on which the metric (§3.1), the attack (§3.4), damage paths (§3.5) and recovery
(§3.6) are built.

`FlatModel` owns the model, its `ParameterLayout`, the detached weights, the buffers, the output count m and the
rows per input (found once, by one probe forward), and the choice between the two forms of the Jacobian rows
(SPEC §3.6): the factored-MLP rows (`MLPRows`) when the model is an MLP of SPEC §2.2 whose parameters are in
weight/bias order per layer, autograd rows (`ExplicitRows`) otherwise — decided once. The user's model is never
mutated: forwards go through ``torch.func.functional_call``, and `load` fills a private copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cached_property

import torch
from torch import nn
from torch.func import functional_call

from lesion.crash.structure import MLPStructure, mlp_structure
from lesion.errors import LesionError
from lesion.functional import parameters_of, traceable
from lesion.geometry.gram import JACOBIAN_MEMORY
from lesion.geometry.params import ParameterLayout
from lesion.geometry.rows import ExplicitRows, JacobianRows, MLPRows


class FlatModel:
    """f(x; w) as a function of the flat vector w (SPEC §0), at the model's weights or at `weights`.

    w is in the wider of the parameters' dtype and, when it holds floats, `example`'s, with float16 and bfloat16
    widened to float32 (a half-precision model is analysed on a float32 copy, whatever its inputs; a float64 one
    in float64), on the model's device; floating inputs are cast to it. One forward on `example[:1]` gives m
    (outputs per row) and `rows_per_input` (the tokens of a sequence model whose outputs are (input, token) rows,
    else 1).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        if isinstance(model, torch.jit.ScriptModule):
            raise LesionError("the metric tensor needs a Python nn.Module (torch.func cannot differentiate "
                              "TorchScript); save the model with torch.save or give package.module:factory")
        self.model = model
        self.layout = ParameterLayout.of(model)
        if self.layout.n == 0:
            raise LesionError("the model has no float parameters to differentiate (an int8 model stores integers): "
                              "analyse the float model it was quantised from")
        flat = self.layout.flatten(parameters_of(model)) if weights is None else weights
        wide = torch.float32 if flat.dtype in (torch.float16, torch.bfloat16) else flat.dtype
        dtype = torch.promote_types(example.dtype, wide) if example.is_floating_point() else wide
        self.weights = flat.to(dtype).detach()
        self.buffers = dict(model.named_buffers())
        with torch.no_grad():
            probe = self(example[:1], self.weights)
        self.rows_per_input = int(probe.shape[0])
        self.m = int(probe.shape[-1])

    @property
    def n(self) -> int:
        """dim W."""
        return self.layout.n

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of w."""
        return self.weights.dtype

    @property
    def device(self) -> torch.device:
        """The model's device (where w and every tensor made here live)."""
        return self.weights.device

    def at(self, weights: torch.Tensor) -> FlatModel:
        """The same functional view carrying other weights: no new probe, the same route choice."""
        _ = self._mlp_template  # decided here once, shared by the copy
        other = copy.copy(self)
        other.weights = weights.to(self.dtype).detach()
        other.__dict__.pop("mlp", None)  # the structure carries the weights it was built at
        return other

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """w as a parameter dict (views), in `named_parameters()` order (SPEC §0)."""
        return self.layout.unflatten(w)

    def weights_of(self, module: nn.Module) -> torch.Tensor:
        """The flat vector of a module with this layout (a `load`ed copy, say), in this view's dtype."""
        return self.layout.flatten(parameters_of(module)).to(self.dtype)

    def outputs_fn(self, x: torch.Tensor, output: str = "raw") -> Callable[[torch.Tensor], torch.Tensor]:
        """w ↦ f(x; w) (SPEC §0; softmax probabilities when `output` is "softmax"), one row per input (per
        (input, token) pair of a sequence model), run under `traceable` so every torch.func transform applies."""

        if x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)

        def f(w: torch.Tensor) -> torch.Tensor:
            with traceable(self.model):
                out = functional_call(self.model, (self.unflatten(w), self.buffers), (x,))
            return torch.softmax(out, dim=-1) if output == "softmax" else out

        return f

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """f(x; w), raw outputs."""
        return self.outputs_fn(x)(w)

    @cached_property
    def half_precision(self) -> torch.dtype | None:
        """float16 or bfloat16 when the model stores its weights so (w, in the data's float32, is wider)."""
        from lesion.nets.outputs import floating_dtype

        dtype = floating_dtype(self.model)
        return dtype if dtype in (torch.float16, torch.bfloat16) else None

    def stored(self, w: torch.Tensor) -> torch.Tensor:
        """w rounded to the precision the model stores its weights in (a float16 model's float16), in w's dtype:
        the weights a repaired network holds in the user's format (the forward that scores them runs in w's
        dtype)."""
        return w if self.half_precision is None else w.to(self.half_precision).to(w.dtype)

    def load(self, w: torch.Tensor) -> nn.Module:
        """A private copy of the model carrying w, in eval mode (the user's model is untouched, SPEC §0); a
        float16 or bfloat16 model's copy holds w's float32, so that training it does not overflow."""
        private = copy.deepcopy(self.model)
        if self.half_precision is not None:
            private = private.to(w.dtype)
        with torch.no_grad():
            for name, value in self.unflatten(w).items():
                private.get_parameter(name).copy_(value)
        return private.eval()

    @cached_property
    def _mlp_template(self) -> MLPStructure | None:
        try:
            structure = mlp_structure(self.model)
        except LesionError:  # not an MLP of SPEC §2.2: the autograd route
            return None
        expected = [f"{n}.{p}" for n, b in zip(structure.linear_names, structure.biases, strict=True)
                    for p in (("weight",) if b is None else ("weight", "bias"))]
        return structure if list(self.layout.names) == expected else None

    @cached_property
    def mlp(self) -> MLPStructure | None:
        """The MLP of SPEC §2.2 carrying this view's weights, or None for any other model (and for an MLP whose
        parameters are not in weight/bias order per layer): the route of the Jacobian rows, decided once."""
        return None if self._mlp_template is None else self.mlp_at(self.weights)

    def mlp_at(self, w: torch.Tensor) -> MLPStructure:
        """The MLP structure carrying weights w (only when `mlp` is not None)."""
        template = self._mlp_template
        if template is None:
            raise LesionError(f"{type(self.model).__name__} is not an MLP of Linear layers and activations")
        params = self.unflatten(w)
        return MLPStructure(tuple(params[f"{n}.weight"] for n in template.linear_names),
                            tuple(params.get(f"{n}.bias") for n in template.linear_names),
                            template.activations, template.linear_names, template.activation_names)

    def jacobian_bytes(self, inputs: int) -> int:
        """Memory of the stacked Jacobian rows of `inputs` inputs (the autograd route)."""
        return inputs * self.rows_per_input * self.m * self.n * self.weights.element_size()

    def largest_jacobian_batch(self) -> int:
        """The most inputs whose stacked Jacobian rows fit in JACOBIAN_MEMORY (0 when one input does not)."""
        return int(JACOBIAN_MEMORY // max(self.jacobian_bytes(1), 1))

    def stacked_jacobians(self, w: torch.Tensor, x: torch.Tensor, output: str = "raw") -> torch.Tensor:
        """The per-input Jacobians ∂f(x; w)/∂w stacked: (len(x)·rows_per_input·m, n), rows ordered (input,
        [token,] output) — jacrev of one input's outputs, vmapped over the inputs (SPEC §3.1). Refused (a
        LesionError naming the largest batch that fits) above JACOBIAN_MEMORY."""
        need = self.jacobian_bytes(len(x))
        if need > JACOBIAN_MEMORY:
            fits = self.largest_jacobian_batch()
            raise LesionError(f"the Jacobian rows of {len(x)} inputs would take {need / 2**30:.1f} GiB (limit "
                              f"{JACOBIAN_MEMORY / 2**30:.0f} GiB, {self.m} outputs × {self.n:,} weights per row): "
                              + (f"use a batch of at most {fits} inputs" if fits else
                                 "the model is too large for Jacobian rows even on one input"))

        def one(flat: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
            return self.outputs_fn(xi.unsqueeze(0), output)(flat).reshape(-1)

        return torch.func.vmap(torch.func.jacrev(one), in_dims=(None, 0))(w, x).reshape(-1, len(w))

    def jacobian_rows(self, w: torch.Tensor, x: torch.Tensor, output: str = "raw") -> JacobianRows:
        """The Jacobian rows A on inputs x at weights w (SPEC §3.6: g = AᵀA/b on a minibatch): through the layer
        factors for an MLP, stacked autograd Jacobians otherwise (the route of `mlp`)."""
        if self.mlp is None:
            return ExplicitRows(self.stacked_jacobians(w, x, output))
        return MLPRows(self.mlp_at(w), list(self.layout.names), x, output)
