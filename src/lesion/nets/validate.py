"""Checks that a model can be analysed on a data set's inputs (issue "Foundation", item 4)."""

from __future__ import annotations

import torch
from torch import nn

from lesion.errors import LesionError


def non_finite_parameters(module: nn.Module) -> dict[str, int]:
    """Names of parameters and buffers holding NaN or ±inf values, with how many each holds."""
    bad = {}
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() or tensor.is_complex():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad[name] = count
    return bad


CHECK_BATCH = 4096  # the input batch of `damaged_outputs` and `forward_with`: a model that fails only on large
                   # batches is refused before the work, not in the middle of it


def validate_model(module: nn.Module, inputs: torch.Tensor, num_classes: int | None = None,
                   data_name: str = "the data") -> int:
    """Raise a LesionError unless `module` has finite weights and maps `inputs` to finite (rows, m) outputs.

    Returns m, the output dimension. A model whose output needs reading (a tuple, a dict, a ModelOutput,
    tokens) is checked as `prepare_model` would read it.
    """
    return prepare_model(module, inputs, num_classes, data_name)[1]


def prepare_model(module: nn.Module, inputs: torch.Tensor, num_classes: int | None = None,
                  data_name: str = "the data", output_key: str | None = None) -> tuple[nn.Module, int]:
    """The module to analyse and its output count m, or a LesionError saying why `module` cannot be analysed.

    Checks finite weights; runs a full batch (`inputs[:CHECK_BATCH]`, the size the engines use); when the
    output is not a (batch, m) tensor (or `output_key` is given) the module is read through
    `lesion.nets.outputs.logits_view` (tuples, dicts, ModelOutputs, token sequences as (batch·tokens, m) rows);
    the outputs must be finite and m ≥ `num_classes`. Floating inputs are cast to the model's floating dtype
    (float16, bfloat16) by the same view.
    """
    from lesion.nets.outputs import floating_dtype, logits_view, needs_view

    bad = non_finite_parameters(module)
    if bad:
        listed = ", ".join(f"{name} ({count})" for name, count in list(bad.items())[:5])
        raise LesionError(f"the model has NaN/inf weights in {listed}{' …' if len(bad) > 5 else ''}; "
                          "repair or retrain it before analysing it")
    batch = inputs[:CHECK_BATCH]
    dtype = floating_dtype(module)
    scripted = isinstance(module, torch.jit.ScriptModule)
    viewed = batch.is_floating_point() and dtype is not None and dtype != batch.dtype and not scripted
    if viewed:  # float32 data into a float16 model: read through a casting view (which also picks the output)
        module = logits_view(module, output_key, cast_inputs=True)
    out = _run(module, batch, data_name)
    if scripted and needs_view(out):
        raise LesionError(f"a TorchScript model must return a (batch, outputs) tensor; this one returns "
                          f"{type(out).__name__ if not isinstance(out, torch.Tensor) else tuple(out.shape)}: "
                          "save the Python module with torch.save (or give package.module:factory) to pick an "
                          "output with --output-key")
    if not viewed and not scripted and (needs_view(out) or output_key is not None):
        module = logits_view(module, output_key)
        out = _run(module, batch, data_name)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] % batch.shape[0] != 0:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LesionError(f"the model must return a (batch, outputs) or (batch, tokens, outputs) tensor; it returned "
                          f"{shape} for a batch of {batch.shape[0]}")
    if not torch.isfinite(out).all():
        raise LesionError(f"the model's outputs on {data_name} contain NaN/inf")
    m = int(out.shape[1])
    if num_classes is not None and m < num_classes:
        raise LesionError(f"the model has {m} outputs but {data_name} has {num_classes} classes")
    return module, m


def _run(module: nn.Module, batch: torch.Tensor, data_name: str) -> object:
    try:
        with torch.no_grad():
            return module(batch)
    except LesionError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward means a shape mismatch
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        tables = [m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)]
        if tables and not batch.is_floating_point() and batch.numel() and int(batch.max()) >= max(tables):
            raise LesionError(f"token ids in {data_name} run up to {int(batch.max())}, but the model's largest "
                              f"embedding table has {max(tables)} rows (ids 0–{max(tables) - 1}); encode the "
                              "text with the model's own vocabulary") from err
        raise LesionError(f"the model does not run on inputs of shape {tuple(batch.shape[1:])} from {data_name} "
                          f"({message}); give data the model was built for") from err
