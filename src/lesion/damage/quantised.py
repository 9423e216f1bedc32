"""Quantised models (issue 17, item 2): faults in the integers an int8 model really stores.

A model quantised with PyTorch (`torch.ao.quantization`: eager or FX static int8, dynamic int8 Linear) keeps
the weights of its quantised Linear and convolution layers as packed int8 integers with per-tensor or
per-channel scales and zero points; they are not parameters, so they cannot be swapped functionally. Here
they are named like parameters (`fc.weight`), read as their integer words (`stored_integers`), damaged as
patches of those integers (`bitflip:…:fmt=int8` flips bits of the stored byte: SPEC §1, bit flip, "in its
stored format"), and evaluated on a working copy of the model whose layers get the damaged integers for the
length of one forward (`StoredIntegerRunner`): the user's model is never touched.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lesion.damage.realised import Realised
from lesion.errors import LesionError


def _quantised_weight(module: nn.Module) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    if not callable(weight) or not hasattr(module, "set_weight_bias"):
        return None
    value = weight()
    return value if isinstance(value, torch.Tensor) and value.is_quantized else None


def stored_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """`path.weight` → the quantised weight tensor of every layer that stores packed integers, as they are now
    (not cached: a model re-quantised in place must not be damaged from its old integers)."""
    found = {}
    for path, module in model.named_modules():
        weight = _quantised_weight(module)
        if weight is not None:
            found[f"{path}.weight" if path else "weight"] = weight
    return found


def stored_integers(model: nn.Module) -> dict[str, torch.Tensor]:
    """`path.weight` → the stored integer words (int8) of the model's quantised weights."""
    return {name: weight.int_repr() for name, weight in stored_weights(model).items()}


def with_integers(weight: torch.Tensor, integers: torch.Tensor) -> torch.Tensor:
    """A quantised tensor with the quantisation parameters of `weight` and the integer words `integers`."""
    if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return torch._make_per_tensor_quantized_tensor(integers, weight.q_scale(), weight.q_zero_point())
    return torch._make_per_channel_quantized_tensor(integers, weight.q_per_channel_scales(),
                                                    weight.q_per_channel_zero_points(), weight.q_per_channel_axis())


def requantised_like(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Real `values` quantised as `like` is (its scheme, scales, zero points and integer type); values beyond
    what its words hold are clamped to them, as the stored words would be."""
    if like.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return torch.quantize_per_tensor(values, like.q_scale(), like.q_zero_point(), like.dtype)
    return torch.quantize_per_channel(values, like.q_per_channel_scales(), like.q_per_channel_zero_points(),
                                      like.q_per_channel_axis(), like.dtype)


def flipped_integers(words: torch.Tensor, flat_indices: torch.Tensor, bits: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct flat indices, new words) after flipping bit `bits[k]` of word `flat_indices[k]` (several bits
    of one word flip together) of the int8 or uint8 words `words`."""
    touched, inverse = torch.unique(flat_indices.to(torch.int64), return_inverse=True)
    masks = torch.zeros(touched.numel(), dtype=torch.int64).index_add_(0, inverse,
                                                                       torch.ones_like(bits.to(torch.int64)) << bits)
    flat = words.reshape(-1)
    signed = torch.where(masks >= 128, masks - 256, masks) if words.dtype == torch.int8 else masks
    return touched, torch.bitwise_xor(flat[touched.to(flat.device)], signed.to(words.dtype).to(flat.device))


def touches_stored_integers(configs: list[Realised], model: nn.Module) -> bool:
    """Whether any configuration changes the stored integers of a quantised layer of `model`."""
    stored = stored_weights(model)
    return bool(stored) and any(name in stored for config in configs for name in config.changed)


class StoredIntegerRunner:
    """Forwards of damaged configurations of a quantised model, on a working copy of it (module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.copy = copy.deepcopy(model).eval()
        self.layers = {name: self.copy.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self.copy
                       for name in stored_weights(model)}
        self.original = {name: (layer.weight(), layer.bias()) for name, layer in self.layers.items()}

    @torch.no_grad()
    def outputs(self, config: Realised, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """The damaged network's outputs on `x` (rows, outputs): stored integers patched, float parameters
        changed functionally, unit overrides and activation faults by hooks."""
        from lesion.damage.apply import SiteHooks  # noqa: PLC0415 (apply routes quantised models here)

        base = _float_parameters(self.copy)
        floats = {n: config.param(n, base) for n in config.changed if n not in self.layers}
        changed = [name for name in config.patches if name in self.layers]
        try:
            for name in changed:
                weight, bias = self.original[name]
                indices, words = config.patches[name]
                integers = weight.int_repr().clone()
                integers.view(-1)[indices.to(integers.device)] = words.to(integers.dtype)
                self.layers[name].set_weight_bias(with_integers(weight, integers), bias)
            units = {name: (o.keep, o.value) for name, o in config.units.items()}
            with SiteHooks(self.copy, [o.site for o in config.units.values()], config.activations) as hooks:
                return torch.cat([hooks.run(self.copy, floats, units, x[i:i + batch_size], start=i)
                                  for i in range(0, len(x), batch_size)])
        finally:
            for name in changed:
                self.layers[name].set_weight_bias(*self.original[name])


def _float_parameters(model: nn.Module) -> dict[str, Any]:
    from lesion.functional import parameters_of  # noqa: PLC0415

    return parameters_of(model)


def check_stored_format(name: str, fmt: str) -> None:
    """A bit flip in a quantised layer's weights flips the stored int8 word: the format must say so."""
    if fmt != "int8":
        raise LesionError(f"{name} is stored as int8 integers in this quantised model: flip its bits with "
                          f"fmt=int8 (got fmt={fmt})")
