"""The reference networks `build_net` knows, each with a one-line description (for `--help`, without torch)."""

from __future__ import annotations

PRESETS: dict[str, str] = {
    "mlp1-W": "784-W-10 MLP, one hidden layer of W units (e.g. mlp1-400, mlp1-48)",
    "mlp2": "LeNet-300-100: 784-300-100-10 MLP",
    "mlp:W1,W2,...": "MLP with the given hidden widths",
    "random-R": "[R]'s random net 4-4-4-4-1, weights N(1, 5²), no biases, seed R",
    "cnn": "small VGG-style CNN for 28×28 images (conv 16-16-32-32, dense 128)",
    "vgg11": "VGG-11 for CIFAR-10 (8 conv layers, 512-512 classifier)",
}


def describe_presets() -> str:
    """One line per preset, for `--help` texts."""
    return "; ".join(f"{name}: {text}" for name, text in PRESETS.items())
