"""Models that are chains of modules, so that the layers before a damage can be computed once.

A chain is an ``nn.Sequential`` (or a subclass that keeps Sequential's forward), possibly nested; its leaves
in order compute the model. Damage configurations that all leave the first k leaves intact share their
output: the batched engine computes it once and runs only the rest per configuration.
"""

from __future__ import annotations

from torch import nn


def chain_leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | None:
    """The (qualified name, module) leaves of `model` in execution order, or None if it is not a chain."""
    if (isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward
            and "forward" not in vars(model)):  # a `logits_view` has a forward of its own
        leaves: list[tuple[str, nn.Module]] = []
        for name, child in model.named_children():
            sub = chain_leaves(child, f"{prefix}{name}.")
            if sub is None:
                return None
            leaves.extend(sub)
        return leaves
    return [(prefix.rstrip("."), model)]  # a leaf, or a container with its own forward as one opaque step


def first_touched(leaves: list[tuple[str, nn.Module]], params: set[str], sites: set[str]) -> int:
    """Index of the first leaf whose parameters are damaged or whose output is overridden (len if none)."""
    for i, (name, module) in enumerate(leaves):
        own = {f"{name}.{p}" if name else p for p, _ in module.named_parameters()}
        inner_sites = {f"{name}.{m}" if name and m else (m or name) for m, _ in module.named_modules()}
        if own & params or inner_sites & sites:
            return i
    return len(leaves)
