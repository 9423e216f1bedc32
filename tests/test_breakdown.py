"""Deletion curves ([G] Fig. 3A): accuracy against deleted fraction, orders, break-down point."""

import numpy as np
import pytest
import torch

from lesion.damage import Explicit, Target, UnitCrash, damaged_outputs, realise
from lesion.data import load
from lesion.geometry.breakdown import deletion_curve, unit_order
from lesion.nets import build_net
from lesion.train import TrainSettings, evaluate_outputs, train


@pytest.fixture(scope="module")
def trained():
    data = load("digits")
    model, _ = build_net("mlp1-40", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=15, seed=0))
    return model.eval(), data


def test_curve_matches_single_evaluations_and_finds_breakdown(trained):
    model, data = trained
    curve = deletion_curve(model, data.x_test, data.y_test, "1", fractions=(0.0, 0.5, 1.0), order="random",
                           orders=3, seed=4)
    assert curve.accuracy[0] == pytest.approx(curve.clean_accuracy)
    assert curve.accuracy[-1] < 0.2  # every hidden unit deleted: the output is the bias alone
    # the second random order, by hand
    rng = np.random.default_rng(4)
    unit_order(model, "1", "random", rng)
    second = unit_order(model, "1", "random", rng)
    config = realise(Target(model), [UnitCrash("1", Explicit(tuple(second[:20])))], torch.Generator())
    by_hand = evaluate_outputs(damaged_outputs(model, config, data.x_test), data.y_test).accuracy
    assert curve.per_order[1][1] == pytest.approx(by_hand)
    assert curve.breakdown_fraction in (0.5, 1.0)
    lo, hi = curve.accuracy_ci[1]
    assert lo <= curve.accuracy[1] <= hi


def test_metric_order_is_more_harmful_than_random(trained):
    model, data = trained
    fractions = (0.0, 0.2, 0.4)
    metric = deletion_curve(model, data.x_test, data.y_test, "1", fractions, order="metric",
                            x_analysis=data.x_train[:200])
    random = deletion_curve(model, data.x_test, data.y_test, "1", fractions, order="random", orders=5)
    magnitude = deletion_curve(model, data.x_test, data.y_test, "1", fractions, order="magnitude")
    assert metric.accuracy[2] < random.accuracy[2]
    assert magnitude.orders == 1 and len(magnitude.accuracy) == 3


def test_progressive_path_profile(trained):
    from lesion.geometry.breakdown import progressive_path

    model, data = trained
    sequence = unit_order(model, "1", "random", np.random.default_rng(0))
    profile = progressive_path(model, "1", sequence, data.x_train[:30], data.x_test, data.y_test,
                               fractions=(0.0, 0.5, 0.9), units_per_point=2)
    assert profile.t == [0.0, 0.5, 0.9]
    clean = deletion_curve(model, data.x_test, data.y_test, "1", fractions=(0.0,), order="magnitude")
    assert profile.accuracy[0] == pytest.approx(clean.accuracy[0])
    assert all(v > 0 for v in profile.speed) and all(v >= 0 for v in profile.covariant_acceleration)
