"""Attention heads (SPEC §6.1): where the heads of the attention modules people use can be reached.

Providers, by duck typing so that neither timm nor `transformers` is imported:
- ``nn.MultiheadAttention``: ``num_heads``, ``head_dim``, output projection ``out_proj`` (Linear);
- timm ``Attention`` (ViT): ``num_heads``, ``head_dim``, ``proj`` (Linear);
- GPT-2 style (``GPT2Attention``): ``num_heads``, ``head_dim``, ``c_proj`` (Conv1D, weight stored (in, out));
- BERT style (``BertAttention``): ``self.num_attention_heads``, ``self.attention_head_size``, ``output.dense``;
- LLaMA/Mistral style: ``num_heads``/``config.num_attention_heads``, ``head_dim``, ``o_proj``.
A head's output is its slice of the attention output before the output projection; zeroing it is the same as
zeroing the projection's weight entries that read that slice, which is how lesion applies a head crash.
"""

from __future__ import annotations

from torch import nn

from lesion.sites.modules import is_conv1d_transposed
from lesion.sites.site import HeadLayout

_PROJECTIONS = ("out_proj", "proj", "c_proj", "o_proj")


def _int(module: nn.Module, *names: str) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def head_layout(path: str, module: nn.Module) -> HeadLayout | None:
    """The heads of `module` (at `path`), or None when it is not an attention module lesion knows."""
    prefix = f"{path}." if path else ""
    heads = _int(module, "num_heads", "num_attention_heads", "n_head")
    projection, name = None, None
    for candidate in _PROJECTIONS:
        child = getattr(module, candidate, None)
        if isinstance(child, nn.Module) and isinstance(getattr(child, "weight", None), nn.Parameter):
            projection, name = child, candidate
            break
    inner = getattr(module, "self", None)
    output = getattr(module, "output", None)
    if projection is None and isinstance(inner, nn.Module) and isinstance(output, nn.Module):  # BERT style
        heads = _int(inner, "num_attention_heads", "num_heads")
        dense = getattr(output, "dense", None)
        if heads and isinstance(dense, nn.Linear):
            head_dim = _int(inner, "attention_head_size", "head_dim") or dense.in_features // heads
            return _layout(f"{prefix}output.dense.weight", dense, heads, head_dim)
        return None
    if projection is None or heads is None:
        return None
    head_dim = _int(module, "head_dim", "head_size")
    axis = 0 if is_conv1d_transposed(projection) else 1
    width = projection.weight.shape[axis]
    head_dim = head_dim or width // heads
    return _layout(f"{prefix}{name}.weight", projection, heads, head_dim)


def _layout(param: str, projection: nn.Module, heads: int, head_dim: int) -> HeadLayout | None:
    axis = 0 if is_conv1d_transposed(projection) else 1
    if projection.weight.shape[axis] != heads * head_dim:
        return None
    return HeadLayout(param, heads, head_dim, axis)
