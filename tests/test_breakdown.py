"""Deletion curves ([G] Fig. 3A): accuracy against deleted fraction, orders, break-down point."""

import copy

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


def test_path_embedding_and_cli(trained, tmp_path):
    import json

    from lesion.cli import main
    from lesion.geometry.breakdown import path_embedding
    from lesion.nets import save_checkpoint

    model, data = trained
    sequences = [unit_order(model, "1", "random", np.random.default_rng(s)) for s in range(3)]
    emb = path_embedding(model, "1", sequences, data.x_test[:100], data.y_test[:100], end_fraction=0.9, points=4)
    assert len(emb["x"]) == 3 * 5 and set(emb["path"]) == {0, 1, 2}
    starts = [i for i, f in enumerate(emb["fraction"]) if f == 0.0]
    ends = [i for i, f in enumerate(emb["fraction"]) if f == max(emb["fraction"])]
    # same endpoints: every path starts at the trained network and ends at the same damaged one
    assert len({round(emb["accuracy"][i], 9) for i in starts}) == 1 and len({round(emb["accuracy"][i], 9)
                                                                           for i in ends}) == 1
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "mlp1-40", model.config())
    out = tmp_path / "b.json"
    assert main(["breakdown", "--model", str(ckpt), "--data", "digits", "--points", "5", "--paths", "1",
                 "--inputs", "20", "--json", str(out), "--plot", str(tmp_path / "b.png")]) == 0
    result = json.loads(out.read_text())
    for key in ("fractions", "accuracy", "breakdown_fraction", "predicted_breakdown_fraction", "paths"):
        assert key in result
    for key in ("t", "speed", "acceleration", "covariant_acceleration"):
        assert len(result["paths"][0][key]) == 5
    assert main(["breakdown", "--model", str(ckpt), "--data", "digits", "--layer", "7"]) == 2


def test_deletion_curve_points_are_the_fractions_actually_deleted():
    """A 5-unit layer asked for 11 fractions: each point is labelled with the share of units it deleted (0.1 had
    deleted none and was labelled 0.1; 0.3, 0.4 and 0.5 all deleted 2 units), once each, and its accuracy is a
    hand forward with those units' reader columns zeroed."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()
    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 3
    curve = deletion_curve(model, x, y, "1", tuple(np.linspace(0, 1, 11)), orders=1, seed=3)
    assert curve.fractions == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    order = np.random.default_rng(3).permutation(5).tolist()  # the random order the curve draws
    for fraction, accuracy in zip(curve.fractions, curve.accuracy, strict=True):
        hand = copy.deepcopy(model)
        with torch.no_grad():
            hand[2].weight[:, order[:round(fraction * 5)]] = 0.0
            assert accuracy == pytest.approx(float((hand(x).argmax(1) == y).double().mean()))
