"""Named reference networks and rebuilding an architecture from its stored configuration.

Presets (SPEC §5, issue "Foundation"):
- ``mlp1-W``: 784-W-10 (one hidden layer of W units; [G]'s MLP-1, [R]'s 784-48-10 with W = 48);
- ``mlp2``: LeNet-300-100, 784-300-100-10 ([G]'s MLP-2);
- ``mlp:W1,W2,...``: an MLP with any hidden widths;
- ``random-R``: [R]'s random networks, 4-4-4-4-1 (four hidden layers of 4 units, one linear output),
  no biases, every weight drawn from N(1, 5²) with seed R;
- ``cnn``: a small VGG-style CNN for 28×28 images;
- ``vgg11``: VGG-11 for CIFAR-10 (32×32×3).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lesion.errors import LesionError
from lesion.nets.catalog import PRESETS
from lesion.nets.cnn import SMALL_CNN_HIDDEN, SMALL_CNN_LAYOUT, VGG11_HIDDEN, VGG11_LAYOUT, ConvNet
from lesion.nets.mlp import MLP, init_random_normal

RANDOM_NET_MEAN, RANDOM_NET_STD = 1.0, 5.0
RANDOM_NET_WIDTHS = (4, 4, 4, 4)



def _parse_widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise LesionError(f"bad hidden widths {text!r}: give positive integers separated by commas, e.g. mlp:300,100")
    return widths


def preset_config(
    name: str,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int = 10,
    *,
    activation: str = "relu",
    k: float = 1.0,
    bias: bool = True,
    dropout: float = 0.0,
) -> dict[str, Any]:
    """The architecture configuration of preset `name` for inputs of `input_shape` and `num_classes` outputs.

    `input_shape` defaults to (1, 28, 28), or (4,) for random-R. `activation`, `k` and `bias` apply to the
    MLP presets; `dropout` to every trainable preset.
    """
    if re.fullmatch(r"random-\d+", name):
        if input_shape is not None and math.prod(input_shape) != len(RANDOM_NET_WIDTHS):
            raise LesionError(f"{name} takes 4 inputs (a grid of [0,1]^4, data grid:4:STEPS), not {input_shape}")
        return {"kind": "mlp", "in_features": 4, "widths": list(RANDOM_NET_WIDTHS), "out_features": 1,
                "activation": activation, "k": k, "bias": False, "dropout": 0.0}
    input_shape = (1, 28, 28) if input_shape is None else tuple(input_shape)
    features = math.prod(input_shape)
    mlp = {"in_features": features, "out_features": num_classes, "activation": activation, "k": k,
           "bias": bias, "dropout": dropout}
    if m := re.fullmatch(r"mlp1-(\d+)", name):
        return {"kind": "mlp", "widths": [int(m.group(1))], **mlp}
    if name == "mlp2":
        return {"kind": "mlp", "widths": [300, 100], **mlp}
    if name.startswith("mlp:"):
        return {"kind": "mlp", "widths": _parse_widths(name[4:]), **mlp}
    if name in ("cnn", "vgg11"):
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise LesionError(f"{name} needs square images (C, H, H), got input shape {input_shape}")
        layout, hidden = (SMALL_CNN_LAYOUT, SMALL_CNN_HIDDEN) if name == "cnn" else (VGG11_LAYOUT, VGG11_HIDDEN)
        return {"kind": "convnet", "in_channels": input_shape[0], "image_size": input_shape[1],
                "num_classes": num_classes, "layout": list(layout), "hidden": list(hidden),
                "dropout": dropout, "batch_norm": False}
    raise LesionError(f"unknown network {name!r}; presets are {', '.join(PRESETS)}")


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "convnet": ConvNet}


def build_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild an architecture from the `config()` a checkpoint stored (weights are not set)."""
    kwargs = dict(config)
    kind = kwargs.pop("kind", None)
    if kind not in _BUILDERS:
        raise LesionError(f"checkpoint names an unknown architecture kind {kind!r}; it was written by a newer "
                          "lesion, or edited: retrain or upgrade lesion")
    try:
        return _BUILDERS[kind](**kwargs)
    except (TypeError, ValueError) as err:
        raise LesionError(f"checkpoint architecture cannot be rebuilt ({err}); the file may be corrupt") from err


def build_net(
    name: str,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int = 10,
    *,
    seed: int = 0,
    activation: str = "relu",
    k: float = 1.0,
    bias: bool = True,
    dropout: float = 0.0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build preset `name`, initialised from `seed` (random-R: from R), and return it with its config.

    The global torch random state is left as it was.
    """
    try:
        config = preset_config(name, input_shape, num_classes, activation=activation, k=k, bias=bias,
                               dropout=dropout)
    except ValueError as err:
        raise LesionError(str(err)) from err
    random_net = re.fullmatch(r"random-(\d+)", name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_from_config(config)
        if random_net:
            generator = torch.Generator().manual_seed(int(random_net.group(1)))
            init_random_normal(model, RANDOM_NET_MEAN, RANDOM_NET_STD, generator)
    return model, config
