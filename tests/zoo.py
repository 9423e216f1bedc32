"""Real architectures built from code not written here (timm, transformers, torch), tiny, random weights.

timm imports torchvision at import time for its data pipeline and a frozen batch-norm class, none of which its
models need. torchvision from the registry needs another torch build, so when it is absent this module puts a
stand-in in its place that gives placeholders for those names (calling one raises). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import pytest
import torch
from torch import nn


def _placeholder(owner, name: str, base: type):
    """A new placeholder class for `owner.name`, cached on the owner."""
    if name.startswith("__"):
        raise AttributeError(name)
    sub = _Anything(name, (base,), {})
    setattr(owner, name, sub)
    return sub


class _Anything(type):
    def __getattr__(cls, name: str):
        return _placeholder(cls, name, cls)

    def __call__(cls, *args, **kwargs):
        raise RuntimeError("torchvision is not installed: this part of timm needs it")


class _Placeholder(metaclass=_Anything):
    pass


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str):
        return _placeholder(self, name, _Placeholder)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def timm():
    """timm, importable without torchvision (skips the test when timm is not installed)."""
    if "timm" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        if not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())
    return pytest.importorskip("timm")


def resnet18(classes: int = 10) -> nn.Module:
    """timm resnet18 for 1×28×28 inputs (BatchNorm, residual blocks with in-place adds)."""
    torch.manual_seed(0)
    model = timm().create_model("resnet18", pretrained=False, num_classes=classes, in_chans=1)
    return _settled(model, torch.rand(64, 1, 28, 28))


def vit(classes: int = 10) -> nn.Module:
    """A timm ViT at small size: 2 blocks, 4 heads of 8, patches of 7 on 1×28×28."""
    torch.manual_seed(0)
    return timm().create_model("vit_tiny_patch16_224", pretrained=False, num_classes=classes, img_size=28,
                               patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=4).eval()


def bert(classes: int = 6) -> nn.Module:
    """`transformers` BERT for sequence classification: 2 layers, 4 heads of 8, character vocabulary."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=classes)
    return transformers.BertForSequenceClassification(config).eval()


def gpt2() -> nn.Module:
    """`transformers` GPT-2 language model: 2 layers, 4 heads of 8, Conv1D layers, character vocabulary."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


class EncoderClassifier(nn.Module):
    """torch.nn.TransformerEncoder over character embeddings, mean-pooled, linear head."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(97, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(dim=1))


class DictNet(nn.Module):
    """An MLP written as a class that returns a dict, its activation a function."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": x.flatten(1), "logits": self.fc2(torch.sigmoid(self.fc1(x.flatten(1))))}


def encoder() -> nn.Module:
    torch.manual_seed(0)
    return EncoderClassifier().eval()


def _settled(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BatchNorm running statistics from a few forward passes (random init leaves them at 0 and 1)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


class FailsOnLargeBatches(nn.Module):
    """Runs on a few inputs, fails on batches above 100 (a model that a 2-input check would pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 100:
            raise RuntimeError("out of memory on a large batch")
        return self.fc(x.flatten(1))


@functools.lru_cache(maxsize=1)
def trained_gpt2(epochs: int = 10) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The tiny GPT-2 trained briefly as a character model on the licence texts (1,024 windows of 32
    characters, Adam): a zoo model whose accuracies mean something. Returns (the model's logits view, test
    inputs, test labels), 128 test windows; trained once per test session (do not modify it)."""
    from lesion.data import load
    from lesion.nets.outputs import logits_view
    from lesion.train import TrainSettings, train

    data = load("text")
    model = logits_view(gpt2())
    train(model, data.x_train[:1024, :32], data.y_train[:1024, :32],
          TrainSettings(epochs=epochs, seed=0, lr=3e-3, batch_size=32))
    return model, data.x_test[:128, :32], data.y_test[:128, :32]


@functools.cache
def quantised_cnn() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained 2 epochs on mnist5k (conv 8-16, dense 10), then quantised to int8 with PyTorch's
    post-training static quantisation (calibrated on 256 training digits): (int8 model, float model, test
    inputs, test labels)."""
    from lesion.data import load
    from lesion.nets.quantise import quantise_int8
    from lesion.train import TrainSettings, train

    data = load("mnist5k")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 5 * 5, 10))
    train(model, data.x_train, data.y_train, TrainSettings(epochs=2, lr=3e-3, seed=0))
    model.eval()
    return quantise_int8(model, data.x_train[:256]), model, data.x_test, data.y_test
