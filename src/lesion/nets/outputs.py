"""What a model's output means to lesion (issue "Any model, any device", item 3): one (rows, outputs) tensor.

Rules, in order:
- a tensor is used as it is;
- a dict, or a `transformers` ModelOutput, gives its entry `key` (``--output-key``), else ``logits``, else its
  first tensor value;
- a tuple or list gives its element `key` (an integer) when given, else its first tensor;
- a sequence output (batch, tokens, vocabulary) is read as (batch·tokens, vocabulary): every (input, token)
  pair is one row, so accuracy and loss are per token and the metric tensor and campaigns run over
  (input, token) pairs; labels of shape (batch, tokens) are flattened the same way (`flat_labels`).
A model whose output needs any of this is analysed through `logits_view`, a view of the model (sharing its
modules, parameters and buffers, so parameter names and sites are unchanged) whose forward returns that tensor.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lesion.errors import LesionError


def select_output(output: Any, key: str | None = None) -> torch.Tensor:
    """The tensor of a model's output by the rules of the module docstring (before flattening tokens)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        keys = list(output.keys())
        if key is not None:
            if key not in keys:
                raise LesionError(f"the model's output has no {key!r}; it has {', '.join(map(str, keys))}")
            chosen = output[key]
        elif "logits" in keys:
            chosen = output["logits"]
        else:
            chosen = next((output[k] for k in keys if isinstance(output[k], torch.Tensor)), None)
        if not isinstance(chosen, torch.Tensor):
            raise LesionError(f"the model's output {key or 'entry'} is not a tensor; choose one with --output-key "
                              f"({', '.join(map(str, keys))})")
        return chosen
    if isinstance(output, tuple | list):
        if key is not None:
            if not key.lstrip("-").isdigit() or not -len(output) <= int(key) < len(output):
                raise LesionError(f"the model returns a {len(output)}-tuple: --output-key must be an index")
            chosen = output[int(key)]
        else:
            chosen = next((o for o in output if isinstance(o, torch.Tensor)), None)
        if not isinstance(chosen, torch.Tensor):
            raise LesionError("the model's output holds no tensor to analyse")
        return chosen
    raise LesionError(f"the model returns a {type(output).__name__}; lesion needs a tensor, a tuple, a dict or a "
                      "ModelOutput")


def as_rows(output: torch.Tensor) -> torch.Tensor:
    """(batch, outputs) as it is; (batch, tokens, vocabulary) as (batch·tokens, vocabulary)."""
    if output.dim() == 3:
        return output.reshape(-1, output.shape[-1])
    return output


def flat_labels(y: torch.Tensor) -> torch.Tensor:
    """Labels per row: (batch,) as they are, (batch, tokens) flattened like the outputs (`as_rows`)."""
    return y.reshape(-1) if y.dim() > 1 else y


def class_indices(y: torch.Tensor, outputs: torch.Tensor | None = None) -> torch.Tensor:
    """Labels as int64 class indices: other integer types and whole-number floats converted; one-hot rows (one
    per row of the model's `outputs`, when given) and fractional labels refused in one line."""
    one_hot_shaped = outputs is not None and y.shape == outputs.shape and y.dim() == 2 and y.shape[1] > 1
    if one_hot_shaped and bool(((y == 0) | (y == 1)).all()) and bool((y.sum(1) == 1).all()):
        raise LesionError("the labels look one-hot: give class indices (y.argmax(1))")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise LesionError("labels must be class indices (whole numbers), not probabilities or fractions")
    return y if y.dtype == torch.long else y.long()


def logits_view(model: nn.Module, key: str | None = None, cast_inputs: bool = False) -> nn.Module:
    """A view of `model` whose forward returns `as_rows(select_output(model(x), key))`; with `cast_inputs`,
    floating inputs are first cast to the dtype of the weights the forward runs with (float32 data into a
    float16 model; the float32 weights `functional_call` gives it for the metric).

    The view shares the model's submodules, parameters and buffers (a shallow copy), so names, sites and
    damage are those of the model; the model object itself is not changed.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise LesionError("a TorchScript model must return a (batch, outputs) tensor")
    view = copy.copy(model)
    # a bound method, not a closure: a deep copy of the view then runs its own modules (copy binds it anew)
    object.__setattr__(view, "forward", types.MethodType(_reduced_forward, view))
    object.__setattr__(view, "lesion_output_key", key)
    object.__setattr__(view, "lesion_cast_inputs", cast_inputs)
    return view


def _reduced_forward(view: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    if getattr(view, "lesion_cast_inputs", False) and args and isinstance(args[0], torch.Tensor) \
            and args[0].is_floating_point():
        dtype = next((p.dtype for p in view.parameters() if p.is_floating_point()), args[0].dtype)
        args = (args[0].to(dtype), *args[1:])
    return as_rows(select_output(type(view).forward(view, *args, **kwargs), view.lesion_output_key))


def floating_dtype(model: nn.Module) -> torch.dtype | None:
    """The one floating dtype of the model's parameters (None when it has none, or several)."""
    found = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return found.pop() if len(found) == 1 else None


def without_view(model: nn.Module) -> nn.Module:
    """`model` with a `logits_view`'s own forward and settings removed, in place (for a private copy about to be
    saved: the user's class, its own forward; a bound method of the view would not unpickle). Returns it."""
    for name in ("forward", "lesion_output_key", "lesion_cast_inputs"):
        vars(model).pop(name, None)
    return model


def is_view(model: nn.Module) -> bool:
    """True for a `logits_view` (its forward is not its class's)."""
    return "forward" in vars(model)


def needs_view(output: Any) -> bool:
    """True unless the output is already a (batch, outputs) tensor."""
    return not (isinstance(output, torch.Tensor) and output.dim() == 2)
