"""The short end-to-end demo `make demo` runs until the report lands (issue "Foundation", item 1):
train a small network on mnist5k, crash growing shares of its hidden units, accuracy before and after."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lesion.damage import RandomCount, Target, UnitCrash, batched_damaged_outputs, realise
from lesion.data import load
from lesion.nets import build_net
from lesion.stats import clipped_interval
from lesion.train import TrainSettings, evaluate_outputs, train


@dataclass(frozen=True)
class CrashPoint:
    """Mean accuracy over `sets` random crash sets of `crashed` of the `width` units of one hidden layer,
    with a Student-t 95% interval over the sets (on the fixed test inputs) and the extremes."""

    layer: int
    crashed: int
    width: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    accuracy_min: float
    accuracy_max: float
    sets: int
    inputs: int


@dataclass(frozen=True)
class DemoResult:
    """The demo's trained network, its clean test accuracy and the crash sweep."""

    net: str
    data: dict[str, Any]
    clean_accuracy: float
    clean_accuracy_ci: tuple[float, float]
    points: list[CrashPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        from dataclasses import asdict

        return asdict(self)


def run_demo(net: str = "mlp2", epochs: int = 10, fractions: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
             sets: int = 10, seed: int = 0) -> DemoResult:
    """Train `net` on mnist5k, then crash a fraction of the units of each hidden layer (SPEC §1, neuron crash)
    with `sets` uniformly drawn crash sets per fraction, and measure test accuracy."""
    data = load("mnist5k", seed=seed)
    model, _ = build_net(net, data.input_shape, data.num_classes or 10, seed=seed, dropout=0.1)
    history = train(model, data.x_train, data.y_train, TrainSettings(epochs=epochs, seed=seed),
                    data.x_test, data.y_test)
    assert history.test is not None
    target = Target(model, example=data.x_test[:2])
    generator = torch.Generator().manual_seed(seed)
    points = []
    for site in target.sites:
        width = site.width
        for fraction in fractions:
            crashed = round(fraction * width)
            damage = [UnitCrash(str(site.index), RandomCount(crashed))]
            configs = [realise(target, damage, generator) for _ in range(sets)]
            outputs = batched_damaged_outputs(model, configs, data.x_test)
            accuracies = [evaluate_outputs(out, data.y_test).accuracy for out in outputs]
            layer = site.index
            points.append(CrashPoint(layer, crashed, width, sum(accuracies) / sets, clipped_interval(accuracies),
                                     min(accuracies), max(accuracies), sets, len(data.y_test)))
    return DemoResult(net, data.to_dict(), history.test.accuracy, history.test.accuracy_ci, points)
