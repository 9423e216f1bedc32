"""Configurations whose only damage is transient activation faults, evaluated on the inputs they hit (issue 17).

A transient fault changes one inference: an input no fault of a configuration touches gives the clean output.
So each configuration needs a forward over its hit inputs only, and the hit inputs of a whole batch of
configurations go through the model as one batch, each row carrying the faults of its configuration. At a
bit-error rate of 1e-6 over 1,000 inputs × 300 values × 32 bits about ten inputs of a configuration are hit:
a hundred times less work than a forward over all inputs, which fault injectors that hook a full forward do.
The result equals `damaged_outputs` of each configuration over all inputs (the same forward on each row).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import torch
from torch import nn

from lesion.damage.activation_faults import ActivationFaults
from lesion.damage.realised import Realised
from lesion.errors import LesionError
from lesion.functional import traceable


def merged(faults: list[ActivationFaults]) -> ActivationFaults:
    """One `ActivationFaults` holding several that hit different inputs (same site, kind, format and scale)."""
    first = faults[0]
    if len(faults) == 1:
        return first

    def cat(column: str) -> torch.Tensor | None:
        values = [getattr(f, column) for f in faults]
        return None if values[0] is None else torch.cat(values)

    return ActivationFaults(first.site, cat("positions"), cat("inputs"), cat("masks"), cat("values"), first.fmt,
                            first.scale)


def _hit_keys(entries: list[tuple[int, ActivationFaults]], count: int, device: torch.device) -> torch.Tensor:
    """c·count + input for every fault of every (configuration index c, faults) entry, in entry order."""
    inputs = torch.cat([f.inputs.to(device) for _, f in entries])  # type: ignore[union-attr] (transient: inputs)
    owners = torch.tensor([c for c, _ in entries], device=device)
    sizes = torch.tensor([f.inputs.numel() for _, f in entries], device=device)  # type: ignore[union-attr]
    return owners.repeat_interleave(sizes) * count + inputs


@torch.no_grad()
def transient_outputs(model: nn.Module, configs: list[Realised], x: torch.Tensor, clean: torch.Tensor,
                      input_batch: int = 4096) -> torch.Tensor:
    """Outputs (configs, rows, outputs) of configurations whose damage is transient activation faults only:
    `clean` (the clean outputs on `x`, as rows) where no fault hits, one forward over the hit inputs elsewhere."""
    from lesion.damage.apply import SiteHooks

    if any(not c.transient_only for c in configs):
        raise LesionError("transient_outputs takes configurations whose only damage is transient activation faults")
    device = clean.device
    count = len(x)
    rows_per_input = len(clean) // count
    # per (site, fault order within the configuration, kind, format, scale): the faults of every configuration
    # with the configuration's index; faults of different configurations hit different rows
    layers: dict[tuple, list[tuple[int, ActivationFaults]]] = defaultdict(list)
    for c, config in enumerate(configs):
        for name, faults in config.activations.items():
            for order, f in enumerate(faults):
                layers[(name, order, f.masks is None, f.fmt, f.scale)].append((c, f))
    # each hit (configuration c, input i) as the key c·count + i; sorted, a key's rank is its row in the stacked
    # batch of hit inputs (configurations in order, each one's inputs ascending)
    keys = {layer: _hit_keys(entries, count, device) for layer, entries in layers.items()}
    hit = torch.unique(torch.cat(list(keys.values()))) if keys else torch.zeros(0, dtype=torch.long)
    out = clean.unsqueeze(0).repeat(len(configs), *([1] * clean.dim()))
    if not hit.numel():
        return out
    by_site: dict[str, list[ActivationFaults]] = defaultdict(list)
    for layer in sorted(layers, key=lambda k: (k[0], k[1])):
        faults = merged([f for _, f in layers[layer]])
        by_site[layer[0]].append(replace(faults, inputs=torch.searchsorted(hit, keys[layer])))
    stacked = x[(hit % count).to(x.device)]
    with traceable(model), SiteHooks(model, [], {n: tuple(f) for n, f in by_site.items()}) as hooks:  # clean's kernel
        faulty = torch.cat([hooks.run(model, {}, {}, stacked[i:i + input_batch], start=i)
                            for i in range(0, len(stacked), input_batch)])
    tokens = torch.arange(rows_per_input, device=device)
    out.view(-1, *out.shape[2:])[(hit.unsqueeze(1) * rows_per_input + tokens).reshape(-1)] = faulty
    return out
