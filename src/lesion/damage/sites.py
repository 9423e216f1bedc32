"""Where units live (SPEC §1): the hidden layers of a model whose units can crash.

A *unit site* is a module whose output carries the units: for an MLP, hidden layer l is the output of the
activation that follows the l-th Linear layer ([R]: a neuron's output is φ of its input); for a CNN, a conv
layer's channels after its activation (and batch norm). Sites are found from the module registration order:
every Linear or Conv2d layer except the last layer of the model opens a site, which extends over the
elementwise activations, batch norms and dropouts registered right after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lesion.errors import LesionError
from lesion.nets.activations import is_elementwise_activation

_UNIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PASS_THROUGH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass(frozen=True)
class UnitSite:
    """Hidden layer `index` (1-based): units are the features (Linear) or channels (conv) of the output of
    module `module`, produced by the layer `layer`; `width` units."""

    index: int
    module: str
    layer: str
    width: int
    kind: str  # "linear" or "conv"


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def unit_sites(model: nn.Module) -> list[UnitSite]:
    """The hidden layers of `model` in order (see module docstring)."""
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    layer_positions = [i for i, (_, m) in enumerate(leaves) if isinstance(m, _UNIT_LAYERS)]
    sites = []
    for position in layer_positions[:-1]:  # the last Linear/conv layer is the output layer
        layer_name, layer = leaves[position]
        end = position
        while end + 1 < len(leaves):
            follower = leaves[end + 1][1]
            if not (is_elementwise_activation(follower) or isinstance(follower, _PASS_THROUGH)):
                break
            end += 1
        # dropout is a no-op in eval mode: prefer the last activation/norm as the site
        while end > position and isinstance(leaves[end][1], nn.Dropout | nn.Dropout2d | nn.Identity):
            end -= 1
        kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        sites.append(UnitSite(len(sites) + 1, leaves[end][0], layer_name, _width(layer), kind))
    return sites


def resolve_site(model: nn.Module, layer: int | str) -> UnitSite:
    """The unit site named by a 1-based hidden-layer index or a module name.

    A module name that is not one of the detected sites is accepted if it is a Linear or conv layer (its raw
    output units) or any module whose output has a known width from the site table.
    """
    sites = unit_sites(model)
    if isinstance(layer, int) or (isinstance(layer, str) and layer.isdigit()):
        index = int(layer)
        if not 1 <= index <= len(sites):
            raise LesionError(f"hidden layer {index} does not exist: the model has {len(sites)} hidden layers "
                              f"({', '.join(s.module for s in sites) or 'none'})")
        return sites[index - 1]
    for site in sites:
        if layer in (site.module, site.layer):
            return site if layer == site.module else UnitSite(site.index, site.layer, site.layer, site.width,
                                                              site.kind)
    modules = dict(model.named_modules())
    if layer not in modules:
        raise LesionError(f"no module named {layer!r}; hidden layers are "
                          f"{', '.join(s.module for s in sites) or 'none'}")
    module = modules[layer]
    if isinstance(module, _UNIT_LAYERS):
        kind = "linear" if isinstance(module, nn.Linear) else "conv"
        return UnitSite(0, layer, layer, _width(module), kind)
    raise LesionError(f"module {layer!r} is not a layer of units; hidden layers are "
                      f"{', '.join(s.module for s in sites) or 'none'}")
