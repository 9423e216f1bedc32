"""What kind of module a call in the forward pass is (SPEC §6.1): a layer of units, a normalisation, an
activation, or a pass-through (dropout, identity).

Recognition is by type for torch's own modules and by class name for the families of timm and
`transformers` (``GELUActivation``, ``NewGELUActivation``, timm's ``LayerNorm2d``, GPT-2's ``Conv1D``), so that
neither library has to be imported.
"""

from __future__ import annotations

from torch import nn

from lesion.nets.activations import ScaledReLU, ScaledSigmoid

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
                nn.Tanhshrink, nn.LogSigmoid, ScaledReLU, ScaledSigmoid)
_ACTIVATION_NAMES = ("GELU", "ReLU", "SiLU", "Swish", "Sigmoid", "Tanh", "Mish", "ELU", "Activation")
_PASS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_PASS_NAMES = ("DropPath", "DropBlock", "Identity", "Dropout")


def is_conv1d_transposed(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D``: a Linear layer whose weight is stored as (in, out), so its units are columns."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, nn.Parameter) and weight.dim() == 2
            and getattr(module, "nf", weight.shape[1]) == weight.shape[1])


def is_unit_layer(module: nn.Module) -> bool:
    """A layer whose outputs are units: Linear, ConvNd, or a GPT-2 style Conv1D."""
    return isinstance(module, (nn.Linear, *_CONV)) or is_conv1d_transposed(module)


def is_conv(module: nn.Module) -> bool:
    """A convolution whose units are the channels of axis 1."""
    return isinstance(module, _CONV)


def is_norm(module: nn.Module) -> bool:
    """A normalisation module (batch, layer, group, RMS norm, and the timm/HF variants by class name)."""
    return isinstance(module, _NORMS) or ("Norm" in type(module).__name__ and not list(module.children()))


def is_activation(module: nn.Module) -> bool:
    """An elementwise activation module, without parameters of its own (PReLU aside)."""
    if isinstance(module, _ACTIVATIONS):
        return True
    name = type(module).__name__
    return (any(key in name for key in _ACTIVATION_NAMES) and not list(module.children())
            and not any(True for _ in module.parameters()))


def is_pass_through(module: nn.Module) -> bool:
    """Modules that do nothing at evaluation (dropout, identity, drop-path)."""
    return isinstance(module, _PASS) or any(key in type(module).__name__ for key in _PASS_NAMES)


def unit_rows(module: nn.Module) -> tuple[str, int]:
    """(parameter, axis) of a unit layer's weight along which its output units lie: rows (axis 0) for Linear and
    ConvNd, columns (axis 1) for GPT-2's Conv1D."""
    return ("weight", 1 if is_conv1d_transposed(module) else 0)


def reader_columns(module: nn.Module) -> int:
    """Axis of a unit layer's weight along which its *inputs* lie: 1 for Linear/ConvNd, 0 for Conv1D."""
    return 0 if is_conv1d_transposed(module) else 1
