"""Int8 models as an edge deployment has them (issue 17, item 2): PyTorch's post-training static quantisation.

`quantise_int8` wraps a float model between a quantise and a dequantise step and converts it with
`torch.ao.quantization` (eager mode): Linear and convolution layers then store int8 weights (per-channel
scales) and pass uint8 activations (per-tensor scales, observed on calibration inputs). Such a model is what
`bitflip:…:fmt=int8` damages in its stored integers (`lesion.damage.quantised`); a model the user quantised
with torch.ao themselves (eager or FX, static or dynamic) works the same way.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from lesion.errors import LesionError


@torch.no_grad()
def quantise_int8(model: nn.Module, calibration: torch.Tensor, backend: str = "x86",
                  batch_size: int = 256) -> nn.Module:
    """An int8 copy of `model` (eval mode; float inputs and outputs), its activation ranges observed on the
    `calibration` inputs; `model` itself is left as it is."""
    from torch.ao import quantization as tq

    if backend not in torch.backends.quantized.supported_engines:
        raise LesionError(f"quantisation backend {backend!r} is not available here; this torch has "
                          f"{', '.join(torch.backends.quantized.supported_engines)}")
    if len(calibration) == 0:
        raise LesionError("quantisation needs calibration inputs to observe the activation ranges")
    torch.backends.quantized.engine = backend
    wrapped = nn.Sequential(tq.QuantStub(), copy.deepcopy(model).cpu().eval(), tq.DeQuantStub()).eval()
    wrapped.qconfig = tq.get_default_qconfig(backend)
    with warnings.catch_warnings():  # torch.ao's eager mode is deprecated in favour of torchao, still shipped
        warnings.simplefilter("ignore")
        prepared = tq.prepare(wrapped)
        for i in range(0, len(calibration), batch_size):
            prepared(calibration[i:i + batch_size].cpu())
        return tq.convert(prepared).eval()
