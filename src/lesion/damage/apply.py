"""Running a damaged network without touching the user's model (issue "Damage engine", items 2–3).

Parameter damage goes through `torch.func.functional_call`; unit damage through forward hooks that exist
only for the duration of the call and read the unit overrides of the configuration being evaluated. Many
configurations are evaluated in one vectorised pass: `torch.func.vmap` over stacked parameter sets and
stacked unit overrides, in chunks whose size keeps memory bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, vmap

from lesion import progress
from lesion.damage.chain import chain_leaves, first_touched
from lesion.damage.realised import Realised, UnitOverride
from lesion.errors import LesionError
from lesion.functional import eval_mode, parameters_of

_overrides = threading.local()
DEFAULT_MEMORY_BYTES = 64 << 20  # working set of one chunk of configurations: small chunks stay in cache


def _hook(site: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]:
    def apply_override(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        keep, value = _overrides.current[site]
        shape = (-1,) + (1,) * (output.dim() - 2)  # features (Linear) or channels (conv) are dimension 1
        return output * keep.to(output.dtype).reshape(shape) + value.to(output.dtype).reshape(shape)

    return apply_override


@contextmanager
def unit_hooks(model: nn.Module, sites: Sequence[str]) -> Iterator[None]:
    """Temporary forward hooks that apply the current unit overrides at `sites`; removed on exit."""
    if sites and isinstance(model, torch.jit.ScriptModule):
        raise LesionError("unit damage (crash) needs a Python nn.Module; a TorchScript model supports weight "
                          "damage only (save the model with torch.save or give package.module:factory)")
    modules = dict(model.named_modules())
    handles = [modules[site].register_forward_hook(_hook(site)) for site in sites]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _call(model: nn.Module, params: dict[str, torch.Tensor], units: dict[str, tuple[torch.Tensor, torch.Tensor]],
          x: torch.Tensor) -> torch.Tensor:
    _overrides.current = units
    try:
        return functional_call(model, params, (x,), strict=False)
    finally:
        _overrides.current = {}


@torch.no_grad()
def damaged_outputs(model: nn.Module, realised: Realised, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Raw outputs of the damaged network f(x; damaged) on `x` (eval mode; the model is not modified)."""
    if isinstance(model, torch.jit.ScriptModule) and not realised.units:
        from lesion.functional import forward_with

        return forward_with(model, realised.params, x, batch_size)
    units = {site: (o.keep, o.value) for site, o in realised.units.items()}
    with eval_mode(model), unit_hooks(model, list(units)):
        return torch.cat([_call(model, dict(realised.params), units, x[i:i + batch_size])
                          for i in range(0, len(x), batch_size)])


def _activation_numel(model: nn.Module, leaves: list[tuple[str, nn.Module]] | None, x: torch.Tensor) -> int:
    """Number of values the leaf modules output for one input (to size chunks); `x` is the first leaf's input."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output[0].numel()

    modules = [m for m in model.modules() if not list(m.children())] if leaves is None else [m for _, m in leaves]
    handles = [m.register_forward_hook(count) for m in modules]
    try:
        h = x[:1]
        for step in ([model] if leaves is None else [m for _, m in leaves]):
            h = step(h)
    finally:
        for handle in handles:
            handle.remove()
    return max(total, 1)


def _suffix_runner(model: nn.Module, leaves: list[tuple[str, nn.Module]] | None
                   ) -> Callable[[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor],
                                 torch.Tensor]:
    """f(params, unit overrides, input of the first leaf) for the whole model or the given chain of leaves."""
    if leaves is None:
        return lambda params, units, inputs: _call(model, params, units, inputs)
    owned = [(name, module, {f"{name}.{p}" if name else p: p for p, _ in module.named_parameters()})
             for name, module in leaves]

    def run(params: dict[str, torch.Tensor], units: dict[str, tuple[torch.Tensor, torch.Tensor]],
            inputs: torch.Tensor) -> torch.Tensor:
        _overrides.current = units
        try:
            h = inputs
            for _, module, names in owned:
                local = {local: params[full] for full, local in names.items() if full in params}
                h = functional_call(module, local, (h,), strict=False) if local else module(h)
            return h
        finally:
            _overrides.current = {}

    return run


@torch.no_grad()
def batched_damaged_outputs(model: nn.Module, configs: Sequence[Realised], x: torch.Tensor,
                            chunk_size: int | None = None, input_batch: int = 4096,
                            memory_bytes: int = DEFAULT_MEMORY_BYTES, desc: str = "damaged forward") -> torch.Tensor:
    """Outputs of every damaged network on `x`, shape (configs, inputs, outputs), in vectorised chunks.

    Parameters that any configuration changes are stacked along a new leading dimension (the trained value
    fills in where a configuration leaves one unchanged), likewise unit overrides, and `vmap` runs the model
    once per chunk of configurations. When the model is a chain (`lesion.damage.chain`), the layers before
    the first damaged one run once for all configurations. The result equals looping `damaged_outputs`
    over the configurations, up to floating-point summation order.
    """
    if not configs:
        raise LesionError("no damage configurations to evaluate")
    if isinstance(model, torch.jit.ScriptModule):
        return torch.stack([damaged_outputs(model, c, x, input_batch) for c in progress.track(configs, desc)])
    base = parameters_of(model)
    names = sorted({name for c in configs for name in c.params}, key=list(base).index)
    widths = {site: o.keep.numel() for c in configs for site, o in c.units.items()}
    if not names and not widths:  # no configuration damages anything: one clean forward serves them all
        clean = damaged_outputs(model, Realised(), x, input_batch)
        return clean.unsqueeze(0).expand(len(configs), *clean.shape).clone()
    leaves = chain_leaves(model)
    with eval_mode(model):
        if leaves is not None:
            first = first_touched(leaves, set(names), set(widths))
            for _, module in leaves[:first]:
                x = torch.cat([module(x[i:i + input_batch]) for i in range(0, len(x), input_batch)])
            leaves = leaves[first:]
        input_batch = min(input_batch, len(x))
        if chunk_size is None:
            changed = sum(base[n].numel() for n in names)
            per_config = x.element_size() * (changed + 2 * input_batch * _activation_numel(model, leaves, x))
            chunk_size = max(1, memory_bytes // max(per_config, 1))
        chunk_size = min(chunk_size, len(configs))
        run = vmap(_suffix_runner(model, leaves), in_dims=(0, 0, None))
        outputs = []
        with unit_hooks(model, list(widths)), progress.bar(len(configs), desc, "config") as bar:
            for start in range(0, len(configs), chunk_size):
                chunk = configs[start:start + chunk_size]
                params = {n: torch.stack([c.param(n, base) for c in chunk]) for n in names}
                units = {}
                for site, width in widths.items():
                    overrides = [c.units.get(site) or UnitOverride.identity(width) for c in chunk]
                    units[site] = (torch.stack([o.keep for o in overrides]).to(x.dtype),
                                   torch.stack([o.value for o in overrides]).to(x.dtype))
                parts = [run(params, units, x[i:i + input_batch]) for i in range(0, len(x), input_batch)]
                outputs.append(torch.cat(parts, dim=1))
                bar.update(len(chunk))
    return torch.cat(outputs)
