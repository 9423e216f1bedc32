"""Models that are chains of modules, so that the layers before a damage can be computed once.

A chain is an ``nn.Sequential`` (or a subclass that keeps Sequential's forward), possibly nested; its leaves
in order compute the model. Damage configurations that all leave the first k leaves intact share their
output: the batched engine computes it once and runs only the rest per configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def chain_leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | None:
    """The (qualified name, module) leaves of `model` in execution order, or None if it is not a chain (also
    where two leaves are one module or share a parameter: `distinct_leaves`)."""
    leaves = sequential_leaves(model, prefix)
    return leaves if leaves is None or distinct_leaves(leaves) else None


def sequential_leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | None:
    """`chain_leaves` before the check that no two leaves share a module or a parameter."""
    if (isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward
            and "forward" not in vars(model)):  # a `logits_view` has a forward of its own
        leaves: list[tuple[str, nn.Module]] = []
        for name, child in model._modules.items():  # named_children() would skip a module listed twice
            if child is None:
                continue
            sub = sequential_leaves(child, f"{prefix}{name}.")
            if sub is None:
                return None
            leaves.extend(sub)
        return leaves
    return [(prefix.rstrip("."), model)]  # a leaf, or a container with its own forward as one opaque step


def distinct_leaves(leaves: list[tuple[str, nn.Module]]) -> bool:
    """Whether no module is two leaves and no parameter belongs to two (a Sequential listing one ReLU twice, tied
    weights): the engines give each leaf the parameters under its own names, and a parameter has one name."""
    modules = [id(module) for _, module in leaves]
    params = [id(p) for _, module in leaves for p in module.parameters()]
    return len(set(modules)) == len(modules) and len(set(params)) == len(params)


def traced_chain_leaves(model: nn.Module, example: torch.Tensor, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaves of `model` in execution order, found by watching a forward on `example` where the module is
    not an ``nn.Sequential``: a module whose forward only passes one tensor from child to child (each child
    called once, positionally, on exactly the tensor the child before it returned, unchanged, the first on the
    module's input, the module returning the last child's output unchanged, no parameter or buffer of its own)
    is a chain of its children, and each child is examined the same way; any other module is one opaque leaf
    (a residual block, a transformer's embedding). timm's ResNet is a chain of stem, blocks, pooling and
    classifier this way. The caller checks the result (`CleanChain.of` compares the leaves' output with the
    model's own)."""
    static = chain_leaves(model, prefix)
    if static is not None and len(static) > 1:
        return static
    leaves = _traced(model, example, prefix)
    return leaves if distinct_leaves(leaves) else [(prefix.rstrip("."), model)]


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter (None where it keeps none: an inference tensor)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _traced(model: nn.Module, example: torch.Tensor, prefix: str) -> list[tuple[str, nn.Module]]:
    example = example.clone()  # the caller's values (a slice of the inputs): the model may change them in place
    children = dict(model.named_children())
    if not children or any(True for _ in model.parameters(recurse=False)) \
            or any(True for _ in model.buffers(recurse=False)):
        return [(prefix.rstrip("."), model)]
    calls: list[dict[str, Any]] = []
    state: dict[str, Any] = {"current": example, "kept": example.detach().clone(), "version": _version(example),
                             "ok": _version(example) is not None}

    def untouched(t: Any) -> bool:
        # the very tensor the child before returned, with its values, and no in-place operation on it since (a
        # `clamp_` between children that leaves the clean values as they were would still act on damaged ones)
        return t is state["current"] and _version(t) == state["version"] and torch.equal(t, state["kept"])

    def before(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            # checked when the child is called: an in-place child (ReLU(inplace=True)) changes its input after
            state["ok"] = state["ok"] and not kwargs and len(args) == 1 and untouched(args[0])
            calls.append({"name": name, "input": args[0] if args else None})
        return hook

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, torch.Tensor) or _version(output) is None:
            state["ok"] = False
            return
        state["current"], state["kept"], state["version"] = output, output.detach().clone(), _version(output)

    handles = [h for child in children.values() for h in (child.register_forward_hook(after),)]
    handles += [child.register_forward_pre_hook(before(name), with_kwargs=True) for name, child in children.items()]
    try:
        with torch.no_grad():
            result = model(example)
    finally:
        for handle in handles:
            handle.remove()
    once = len({c["name"] for c in calls}) == len(calls)
    if not (calls and once and state["ok"] and untouched(result)):
        return [(prefix.rstrip("."), model)]
    return [leaf for call in calls
            for leaf in traced_chain_leaves(children[call["name"]], call["input"], f"{prefix}{call['name']}.")]


def first_touched(leaves: list[tuple[str, nn.Module]], params: set[str], sites: set[str]) -> int:
    """Index of the first leaf whose parameters are damaged or whose output is overridden (len if none)."""
    for i, (name, module) in enumerate(leaves):
        own = {f"{name}.{p}" if name else p for p, _ in module.named_parameters()}
        inner_sites = {f"{name}.{m}" if name and m else (m or name) for m, _ in module.named_modules()}
        if own & params or inner_sites & sites:
            return i
    return len(leaves)
