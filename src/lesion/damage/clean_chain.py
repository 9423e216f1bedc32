"""The clean activations of a chain model at every leaf boundary, computed once (issue 16, item 2).

A campaign evaluates thousands of configurations on the same inputs. When the model is a chain
(`lesion.damage.chain`), the layers before a configuration's first damaged one compute the same values for
every configuration: this cache holds them, so both the vectorised engine (which starts at the first damaged
leaf) and the sparse-difference engine (`lesion.damage.sparse`, which needs the clean input and output of
every leaf after it) read them instead of recomputing them per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lesion.damage.chain import chain_leaves, traced_chain_leaves
from lesion.functional import traceable

CACHE_BYTES = 1 << 30  # above this the boundaries are not kept (the engine recomputes the prefix per chunk)


@dataclass(frozen=True)
class CleanChain:
    """`leaves` of a chain model and `values[i]`, the clean input of leaf i on the inputs x (`values[-1]` is the
    model's output), all on the model's device. `workspace` holds what an engine reading the cache keeps from
    call to call on the same inputs (transposed copies, working tensors: a fresh tensor per call costs its page
    faults again)."""

    model: nn.Module
    leaves: tuple[tuple[str, nn.Module], ...]
    values: tuple[torch.Tensor, ...]
    workspace: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    @torch.no_grad()
    def of(model: nn.Module, x: torch.Tensor, input_batch: int = 4096, limit_bytes: int = CACHE_BYTES,
           trace: bool = True) -> CleanChain | None:
        """The cache for `model` on `x`, or None when the model is not a chain or the boundaries would take more
        than `limit_bytes`. A model that is not an ``nn.Sequential`` is split into the leaves a forward passes one
        tensor through (`traced_chain_leaves`, unless `trace` is False), kept only where they compute the model's
        own output on `x`; else it is one leaf."""
        if isinstance(model, torch.jit.ScriptModule):
            return None
        leaves = chain_leaves(model)
        if leaves is None:
            return None
        values, total = [x], x.numel() * x.element_size()
        with traceable(model):
            traced = trace and len(leaves) == 1 and len(x) > 0
            if traced:  # not an nn.Sequential: a forward that passes one tensor from child to child is a chain too
                leaves = traced_chain_leaves(model, x[:2])
                traced = len(leaves) > 1
            h = x
            for _, module in leaves:
                # each leaf on a copy: an in-place leaf (ReLU(inplace=True)) would overwrite the boundary before it
                parts = [module(h[i:i + input_batch].clone()) for i in range(0, len(h), input_batch)]
                if not all(isinstance(p, torch.Tensor) for p in parts):
                    return None  # a leaf returns a dict or ModelOutput: not a chain of tensors
                h = torch.cat(parts)
                total += h.numel() * h.element_size()
                if total > limit_bytes:
                    return None
                values.append(h)
            if traced and not _same_outputs(model, x, h, input_batch):
                return CleanChain.of(model, x, input_batch, limit_bytes, trace=False)
        return CleanChain(model, tuple(leaves), tuple(values))

    @property
    def output(self) -> torch.Tensor:
        """The clean network's output."""
        return self.values[-1]


def _same_outputs(model: nn.Module, x: torch.Tensor, chained: torch.Tensor, input_batch: int) -> bool:
    """Whether the model's own forward on `x` gives the leaves' output `chained`: exactly, or within a few units
    of rounding where a device picks its kernels call by call."""
    own = torch.cat([model(x[i:i + input_batch].clone()) for i in range(0, len(x), input_batch)])
    if own.shape != chained.shape or own.dtype != chained.dtype:
        return False
    if torch.equal(own, chained):
        return True
    if x.device.type == "cpu" or not bool(torch.isfinite(own).all()):
        return False
    return bool((own - chained).abs().max() <= 16 * torch.finfo(own.dtype).eps * own.abs().max())

