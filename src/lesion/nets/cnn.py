"""Convolutional reference networks: a small VGG-style CNN for 28×28 images and VGG-11 for CIFAR-10.

Names are stable (damage and reports refer to them): ``features.conv{i}`` are the convolutions (filter
deletion acts on their output channels), ``classifier.fc{j}`` the hidden dense layers and
``classifier.out`` the output layer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import nn

# VGG-11 for CIFAR-10 ([G] §3, adapted like [G]'s ref. [30]): 8 conv layers and a 512-512 classifier,
# 9,750,922 parameters without batch norm.
VGG11_LAYOUT: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG11_HIDDEN: tuple[int, ...] = (512, 512)
# The small VGG-style CNN for 28×28 inputs: conv 16-16-pool-32-32-pool, dense 128.
SMALL_CNN_LAYOUT: tuple[int | str, ...] = (16, 16, "M", 32, 32, "M")
SMALL_CNN_HIDDEN: tuple[int, ...] = (128,)


def _conv_stack(in_channels: int, layout: Sequence[int | str], batch_norm: bool) -> nn.Sequential:
    """3×3 same-padding convolutions with ReLU; "M" is a 2×2 max-pool."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels, conv, pool = in_channels, 0, 0
    for item in layout:
        if item == "M":
            pool += 1
            layers[f"pool{pool}"] = nn.MaxPool2d(2)
            continue
        conv += 1
        layers[f"conv{conv}"] = nn.Conv2d(channels, int(item), kernel_size=3, padding=1)
        if batch_norm:
            layers[f"bn{conv}"] = nn.BatchNorm2d(int(item))
        layers[f"act{conv}"] = nn.ReLU()
        channels = int(item)
    return nn.Sequential(layers)


def _dense_stack(n_in: int, widths: Sequence[int], n_out: int, dropout: float) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for j, width in enumerate(widths, start=1):
        if dropout > 0:
            layers[f"drop{j}"] = nn.Dropout(dropout)
        layers[f"fc{j}"] = nn.Linear(n_in, int(width))
        layers[f"act{j}"] = nn.ReLU()
        n_in = int(width)
    layers["out"] = nn.Linear(n_in, n_out)
    return nn.Sequential(layers)


class ConvNet(nn.Sequential):
    """VGG-style network: `layout` of conv widths and "M" pools, then dense `hidden` layers and the output.

    A chain (an nn.Sequential of ``features`` and ``classifier``), so that analyses can share the work of
    the layers before a damage between damage configurations.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        layout: Sequence[int | str],
        hidden: Sequence[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        pools = sum(1 for item in layout if item == "M")
        side = image_size // 2**pools
        if side < 1:
            raise ValueError(f"{pools} pools leave nothing of a {image_size}×{image_size} image")
        last = [int(item) for item in layout if item != "M"][-1]
        super().__init__(OrderedDict(features=_conv_stack(in_channels, layout, batch_norm),
                                     classifier=_dense_stack(last * side * side, hidden, num_classes, dropout)))
        self._config = {
            "kind": "convnet",
            "in_channels": int(in_channels),
            "image_size": int(image_size),
            "num_classes": int(num_classes),
            "layout": list(layout),
            "hidden": [int(h) for h in hidden],
            "dropout": float(dropout),
            "batch_norm": bool(batch_norm),
        }

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture (stored in checkpoints)."""
        return dict(self._config)
