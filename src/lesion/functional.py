"""The functional view of a model (ARCHITECTURE.md, "One flow"): a dict of parameters and a pure forward.

Damage never mutates the user's model: it builds a new parameter dict and runs the model through
``torch.func.functional_call`` with it (SPEC §0).

TorchScript modules cannot be called with swapped parameters (torch's stateless API refuses them); for them
`forward_with` loads the parameters into a private copy of the module instead, which is slower but leaves
the user's module untouched all the same.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode (dropout off) and restore its mode afterwards.

    Modules that cannot switch mode (a module from ``torch.export``, fixed at export) are used as they are.
    """
    was_training = model.training
    try:
        model.eval()
    except NotImplementedError:
        yield model
        return
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def traceable(model: nn.Module) -> Iterator[nn.Module]:
    """`eval_mode`, with attention computed by composite ops that every torch.func transform supports (jvp,
    vjp, vmap): scaled_dot_product_attention's math kernel, and nn.TransformerEncoderLayer's fused fast path off
    (the fused CPU kernels have no forward-mode rule and no batching rule). Used by the geometry (metric,
    attack, paths, recovery) and by the vmapped damage engine."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with eval_mode(model), sdpa_kernel([SDPBackend.MATH]):
            yield model
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def parameters_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached views of the model's named parameters, in `named_parameters()` order (SPEC §0: w)."""
    return {name: p.detach() for name, p in model.named_parameters()}


@torch.no_grad()
def forward_with(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                 batch_size: int = 4096) -> torch.Tensor:
    """f(x; params) in eval mode: parameters named in `params` replace the model's, others are kept."""
    if isinstance(model, torch.jit.ScriptModule):
        return _scripted_forward_with(model, params, x, batch_size)
    with eval_mode(model):
        # each batch on a copy: a model that changes its input in place must not change the caller's
        return torch.cat([functional_call(model, params, (x[i:i + batch_size].clone(),), strict=False)
                          for i in range(0, len(x), batch_size)])


def _scripted_forward_with(model: torch.jit.ScriptModule, params: dict[str, torch.Tensor], x: torch.Tensor,
                           batch_size: int) -> torch.Tensor:
    private = copy.deepcopy(model).eval()
    own = dict(private.named_parameters())
    for name, value in params.items():
        own[name].copy_(value)
    return torch.cat([private(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
