"""Training and evaluation of classifiers (issue "Foundation", item 5; ARCHITECTURE.md: train.py).

Training is seeded: the same seed, data and settings give the same weights on the same machine.
Dropout is active only while training; evaluation runs in eval mode and restores the previous mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lesion import progress
from lesion.errors import LesionError
from lesion.functional import eval_mode
from lesion.nets.outputs import class_indices, flat_labels
from lesion.stats import wilson_interval


@dataclass(frozen=True)
class Evaluation:
    """Accuracy (with its 95% Wilson interval, SPEC §4) and mean cross-entropy loss on n labelled inputs."""

    accuracy: float
    accuracy_ci: tuple[float, float]
    loss: float
    correct: int
    n: int

    @property
    def perplexity(self) -> float:
        """exp(loss): for a language model evaluated per token, its perplexity (inf when the loss overflows)."""
        return math.exp(self.loss) if self.loss < 700 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (with the perplexity exp(loss))."""
        return {**asdict(self), "accuracy_ci": list(self.accuracy_ci), "perplexity": self.perplexity}


@dataclass(frozen=True)
class TrainSettings:
    """How a network is trained: Adam on cross-entropy, minibatches reshuffled each epoch from `seed`."""

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise LesionError(f"bad training settings {self}: epochs and batch size ≥ 1, lr > 0, weight decay ≥ 0")


@dataclass(frozen=True)
class TrainHistory:
    """Per-epoch mean training loss, and the final test evaluation when test labels exist."""

    settings: TrainSettings
    train_loss: list[float] = field(default_factory=list)
    test: Evaluation | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"settings": asdict(self.settings), "train_loss": self.train_loss,
                "test": self.test.to_dict() if self.test else None}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Multiply each named parameter by its 0/1 mask in place (deleted weights held at zero)."""
    for name, p in model.named_parameters():
        if name in masks:
            p.mul_(masks[name])


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Raw outputs f(x; w) of `model` on `x` in eval mode, in batches; the model's mode is restored."""
    with eval_mode(model):
        # each batch on a copy: a model that changes its input in place must not change the caller's
        return torch.cat([model(x[i:i + batch_size].clone()) for i in range(0, len(x), batch_size)])


def evaluate_outputs(outputs: torch.Tensor, y: torch.Tensor) -> Evaluation:
    """Accuracy and mean cross-entropy of raw outputs (logits) against integer labels (per token for sequence
    labels, `lesion.nets.outputs.flat_labels`). A row with a NaN or infinite output counts as misclassified (as
    in campaigns): argmax would pick the NaN's class and call it right. Labels of other integer types and
    whole-number floats count as class indices (`class_indices`)."""
    y = flat_labels(class_indices(y, outputs))
    if len(outputs) != len(y) or len(y) == 0:
        raise LesionError(f"{len(outputs)} outputs for {len(y)} labels: cannot evaluate")
    if outputs.shape[1] < 2:
        raise LesionError("accuracy needs a classifier with at least 2 outputs; this model has 1")
    correct = int(((outputs.argmax(dim=1) == y) & torch.isfinite(outputs).all(dim=1)).sum())
    loss = float(F.cross_entropy(outputs.double(), y, reduction="mean"))
    return Evaluation(correct / len(y), wilson_interval(correct, len(y)), loss, correct, len(y))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> Evaluation:
    """Test accuracy and loss of `model` on labelled inputs (x, y)."""
    return evaluate_outputs(predict(model, x, batch_size), y)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings,
          x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
          masks: dict[str, torch.Tensor] | None = None) -> TrainHistory:
    """Train `model` in place on (x, y) with Adam and cross-entropy; evaluate on the test split if given.

    Minibatch order comes from a generator seeded with `settings.seed`; dropout masks from the torch
    global generator, which is seeded too and restored afterwards. `masks` (parameter name → 0/1 tensor)
    keep deleted weights at zero: they are applied after every step (fine-tuning a damaged network).
    """
    if len(x) != len(y) or len(x) == 0:
        raise LesionError(f"training needs labelled inputs; got {len(x)} inputs and {len(y)} labels")
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    order_rng = torch.Generator().manual_seed(settings.seed)
    steps = math.ceil(len(x) / settings.batch_size)
    losses: list[float] = []
    if masks:
        apply_masks(model, masks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model.train()
        with progress.bar(total=settings.epochs * steps, desc="training", unit="batch") as pbar:
            for epoch in range(settings.epochs):
                order = torch.randperm(len(x), generator=order_rng)
                total = 0.0
                for i in range(0, len(x), settings.batch_size):
                    idx = order[i:i + settings.batch_size]
                    optimiser.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(x[idx]), flat_labels(y[idx]))
                    if not torch.isfinite(loss):
                        raise LesionError(f"training diverged (loss {float(loss.detach())}) in epoch {epoch + 1}; "
                                          "lower the learning rate")
                    loss.backward()
                    optimiser.step()
                    if masks:
                        apply_masks(model, masks)
                    total += float(loss.detach()) * len(idx)
                    pbar.update(1)
                losses.append(total / len(x))
                pbar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
        model.eval()
    test = evaluate(model, x_test, y_test) if x_test is not None and y_test is not None else None
    return TrainHistory(settings, losses, test)


def train_one_cycle(model: nn.Module, count: int, steps: int, batch: int, lr: float, seed: int,
                    loss_of: Callable[[torch.Tensor], torch.Tensor], masks: dict[str, torch.Tensor] | None = None,
                    what: str = "training") -> None:
    """`steps` Adam steps on `model` in place, the learning rate one-cycle (warm-up from lr/25 over the first
    tenth of the steps, at least two, to `lr`, then cosine decay to nearly zero), each on `batch` indices into
    `count` examples (reshuffled from `seed` when used up); `loss_of(indices)` gives a step's loss; `masks` keep
    deleted weights at zero after every step. The model's mode (dropout) is the caller's. A short repair
    (issue 15) reaches more in few steps this way than at a constant rate."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    # the warm-up spans at least two steps (torch's schedule divides by its length); a run of under four steps
    # keeps the peak rate
    schedule = (torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps,
                                                    pct_start=max(0.1, 2.0 / steps)) if steps >= 4 else None)
    order_rng = torch.Generator().manual_seed(seed)
    order = torch.zeros(0, dtype=torch.long)
    with torch.enable_grad(), torch.random.fork_rng(devices=[]), \
            progress.bar(total=steps, desc=what, unit="step") as pbar:
        torch.manual_seed(seed)
        for step in range(steps):
            if len(order) < batch:
                order = torch.cat([order, torch.randperm(count, generator=order_rng)])
            idx, order = order[:batch], order[batch:]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_of(idx)
            if not torch.isfinite(loss):
                raise LesionError(f"{what} diverged (loss {float(loss.detach())}) at step {step + 1}; lower its "
                                  "learning rate")
            loss.backward()
            optimiser.step()
            if schedule is not None:
                schedule.step()
            if masks:
                apply_masks(model, masks)
            pbar.update(1)

