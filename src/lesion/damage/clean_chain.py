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

from lesion.damage.chain import chain_leaves
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
    def of(model: nn.Module, x: torch.Tensor, input_batch: int = 4096, limit_bytes: int = CACHE_BYTES
           ) -> CleanChain | None:
        """The cache for `model` on `x`, or None when the model is not a chain or the boundaries would take more
        than `limit_bytes`."""
        if isinstance(model, torch.jit.ScriptModule):
            return None
        leaves = chain_leaves(model)
        if leaves is None:
            return None
        values, total = [x], x.numel() * x.element_size()
        with traceable(model):
            h = x
            for _, module in leaves:
                parts = [module(h[i:i + input_batch]) for i in range(0, len(h), input_batch)]
                if not all(isinstance(p, torch.Tensor) for p in parts):
                    return None  # a leaf returns a dict or ModelOutput: not a chain of tensors
                h = torch.cat(parts)
                total += h.numel() * h.element_size()
                if total > limit_bytes:
                    return None
                values.append(h)
        return CleanChain(model, tuple(leaves), tuple(values))

    @property
    def output(self) -> torch.Tensor:
        """The clean network's output."""
        return self.values[-1]
