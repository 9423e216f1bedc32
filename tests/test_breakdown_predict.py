"""Break-down early warning (issue 20): the pieces checked against hand computations — forwards with units
removed by hand, enumeration of subsets, a linear scan instead of bisection."""

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from lesion.cli import main
from lesion.errors import LesionError
from lesion.geometry.breakdown_predict import (
    BreakdownProblem,
    crossing_fraction,
    measured_breakdown,
    predict_breakdown,
    predict_probe,
    sum_moments,
)
from lesion.nets import build_net, save_checkpoint


def small_net(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4)).eval()
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(seed))
    y = model(x).argmax(-1)
    flip = torch.arange(60) % 7 == 0
    y[flip] = (y[flip] + 1) % 4  # some wrong answers, so that accuracy is not 1
    return model, x, y


def by_hand(model: nn.Module, x: torch.Tensor, layer: int, units: list[int]) -> torch.Tensor:
    """Outputs with hidden units of layer 1 (after model[1]) or 2 (after model[3]) removed by zeroing the
    columns of the next Linear layer that read them."""
    damaged = nn.Sequential(*[m for m in model])
    reader = 2 if layer == 1 else 4
    weight = model[reader].weight.detach().clone()
    weight[:, units] = 0.0
    copy = nn.Linear(weight.shape[1], weight.shape[0])
    copy.weight.data, copy.bias.data = weight, model[reader].bias.detach().clone()
    damaged[reader] = copy
    with torch.no_grad():
        return damaged(x)


def test_estimated_accuracy_against_hand_forwards():
    model, x, _ = small_net()
    problem = BreakdownProblem(model, x, "1")
    q = torch.softmax(model(x).detach().double(), -1)
    sets = [[], [0, 3, 5], list(range(12))]
    got = problem.estimated_accuracy(sets)
    for units, value in zip(sets, got, strict=True):
        labels = by_hand(model, x, 1, units).argmax(-1)
        expected = q[torch.arange(len(x)), labels].mean() / q.max(-1).values.mean()
        assert value == pytest.approx(float(expected), rel=1e-6)
    assert got[0] == pytest.approx(1.0)


def test_margin_derivatives_are_exact_where_the_margin_is_linear_in_the_units():
    # deleting a unit of the last hidden layer changes the logits linearly: Δmargin = −g_i exactly, as long as
    # the top two classes stay the top two
    model, x, _ = small_net(1)
    problem = BreakdownProblem(model, x, "2")
    g, margin, top, runner = problem.linearise([])
    clean = model(x).detach()
    rows = torch.arange(len(x))
    assert torch.allclose(margin, (clean[rows, top] - clean[rows, runner]).double(), atol=1e-5)
    for unit in range(9):
        out = by_hand(model, x, 2, [unit]).double()
        change = out[rows, top] - out[rows, runner] - margin
        assert torch.allclose(change, -g[:, unit], atol=1e-5)


def test_sum_moments_against_enumeration():
    values = torch.tensor([0.3, -1.2, 2.0, 0.7, -0.1, 1.5], dtype=torch.float64)
    n = len(values)
    k = torch.arange(n + 1, dtype=torch.float64)
    mean, var = sum_moments(k, n, values.mean().view(1), values.var(unbiased=False).view(1))
    for size in range(n + 1):
        sums = torch.tensor([float(values[list(s)].sum()) for s in itertools.combinations(range(n), size)],
                            dtype=torch.float64)
        assert float(mean[0, size]) == pytest.approx(float(sums.mean()), abs=1e-12)
        assert float(var[0, size]) == pytest.approx(float(sums.var(unbiased=False)), abs=1e-12)


def test_probe_bisection_lands_on_a_crossing_of_the_mean_curve():
    model, x, _ = small_net(2)
    problem = BreakdownProblem(model, x, "1", share=0.9)
    fraction, per_order = predict_probe(problem, [], orders=3, seed=5)
    k = int(np.ceil(fraction * 12 - 1e-9))  # the crossing is interpolated between k − 1 and k
    rng = np.random.default_rng(5)  # the continuation orders the probe draws
    orders = [rng.permutation(12).tolist() for _ in range(3)]
    mean_at = [float(np.mean(problem.estimated_accuracy([o[:j] for o in orders]))) for j in range(13)]
    assert mean_at[k] < 0.9 or k == 12
    assert mean_at[k - 1] >= 0.9 or k - 1 == 0
    if k < 12:  # linear interpolation between the bracketing levels
        expected = (k - 1 + (mean_at[k - 1] - 0.9) / (mean_at[k - 1] - mean_at[k])) / 12
        assert fraction == pytest.approx(expected)
    assert len(per_order) == 3 and all(0 < f <= 1 for f in per_order)


def test_measured_breakdown_against_hand_forwards():
    model, x, y = small_net(3)
    result = measured_breakdown(model, x, y, "1", deleted=[4, 7], points=11, orders=2, seed=9)
    rng = np.random.default_rng(9)
    alive = np.setdiff1d(np.arange(12), [4, 7])
    orders = [rng.permutation(alive).tolist() for _ in range(2)]
    counts = sorted({int(round(v)) for v in np.linspace(0, 10, 11)})
    for k, fraction, accuracy in zip(counts, result.fractions, result.accuracy, strict=True):
        assert fraction == pytest.approx((2 + k) / 12)
        hand = np.mean([float((by_hand(model, x, 1, [4, 7, *o[:k]]).argmax(-1) == y).float().mean())
                        for o in orders])
        assert accuracy == pytest.approx(hand)
    threshold = 0.9 * result.clean_accuracy
    assert result.fraction == crossing_fraction(result.fractions, result.accuracy, threshold)


def test_crossing_fraction_interpolates():
    assert crossing_fraction([0, 0.5, 1.0], [1.0, 0.8, 0.2], 0.5) == pytest.approx(0.75)
    assert crossing_fraction([0, 0.5, 1.0], [1.0, 0.9, 0.8], 0.5) is None
    assert crossing_fraction([0, 1.0], [0.4, 0.1], 0.5) == 0.0


@pytest.mark.parametrize("method", ["probe", "margin", "margin-steps", "margin-calibrated"])
def test_every_predictor_reports_a_fraction_with_its_cost(method):
    model, x, _ = small_net(4)
    p = predict_breakdown(model, x, "1", method, deleted=[1, 2], orders=2)
    assert 2 / 12 <= p.fraction <= 1.0 and p.interval[0] <= p.interval[1]
    assert p.forward_passes >= 2 and p.start == pytest.approx(2 / 12)
    assert set(p.to_dict()) >= {"fraction", "interval", "method", "forward_passes", "from"}
    with pytest.raises(LesionError, match="distinct"):
        predict_breakdown(model, x, "1", method, deleted=[1, 1])


def test_cli_breakdown_predict(tmp_path, capsys):
    model, config = build_net("mlp:10", (4,), 3, seed=0)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "mlp:10", config)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((50, 4)).astype(np.float32), y=rng.integers(0, 3, 50),
             x_test=rng.random((40, 4)).astype(np.float32), y_test=rng.integers(0, 3, 40))
    out = tmp_path / "b.json"
    assert main(["breakdown", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'd.npz'}", "--paths", "0",
                 "--points", "5", "--predict", "probe", "--from", "0.2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prediction"]["method"] == "probe" and report["prediction"]["from"] == pytest.approx(0.2)
    assert report["measured_from"]["start"] == pytest.approx(0.2)
    assert "predicted without labels" in capsys.readouterr().out
    assert main(["breakdown", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'd.npz'}", "--predict",
                 "--from", "1.5"]) == 2
    own = tmp_path / "own.json"  # the user's own list of dead units
    assert main(["breakdown", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'd.npz'}", "--paths", "0",
                 "--points", "5", "--predict", "margin", "--deleted", "1,4,7", "--json", str(own)]) == 0
    assert json.loads(own.read_text())["prediction"]["from"] == pytest.approx(0.3)
    for bad in (["--deleted", "1,1"], ["--deleted", "10"], ["--deleted", "1", "--from", "0.2"], ["--deleted", "x"]):
        assert main(["breakdown", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'd.npz'}", "--paths", "0",
                     "--predict", *bad]) == 2


def test_two_point_calibration_recovers_a_known_scale_and_growth():
    """Points read off a curve of known (scale, growth) give them back; growth 0 is the one-scale fit; the grown
    curve is the first-order formula with every effect multiplied by 1 + growth·k/n (checked at one k by hand)."""
    from lesion.geometry.breakdown_predict import FirstOrder

    g = torch.Generator().manual_seed(3)
    inputs, n = 300, 40
    model = FirstOrder(torch.randn(inputs, generator=g, dtype=torch.float64) * 0.05,
                       torch.rand(inputs, generator=g, dtype=torch.float64) * 0.02,
                       torch.rand(inputs, generator=g, dtype=torch.float64) * 2 + 0.1,
                       torch.full((inputs, 1), 0.9, dtype=torch.float64),
                       torch.full((inputs, 1), 0.05, dtype=torch.float64), n, 0.9)
    truth = model.curve(1.7, 3.0)
    scale, growth = model.fit_two((10, float(truth[10])), (30, float(truth[30])))
    assert scale == pytest.approx(1.7, rel=1e-3) and growth == pytest.approx(3.0, rel=1e-3)
    plain = model.curve(2.5)
    assert model.scale_to(20, float(plain[20])) == pytest.approx(2.5, rel=1e-6)
    k, grow = 25, 1.0 + 3.0 * 25 / n
    mean = k * model.mu * 1.7 * grow
    var = k * (n - k) / (n - 1) * model.var * (1.7 * grow) ** 2
    from scipy.stats import norm

    flip = torch.from_numpy(norm.cdf(((mean - model.margin) / var.sqrt()).numpy()))
    by_hand = float(((1 - flip) * model.right[:, 0] + flip * model.wrong[:, 0]).mean() / 0.9)
    assert truth[k] == pytest.approx(by_hand, rel=1e-9)


def test_first_order_crossing_is_read_between_counts():
    """The break-down read off a first-order curve: interpolated between the two counts around the share (as a
    measured curve is read), the layer's end when the curve never falls, the current damage when it is below."""
    model, x, _ = small_net(4)
    problem = BreakdownProblem(model, x, "1")  # 12 units, share 0.9
    assert problem.crossing(np.array([1.0, 0.95, 0.85, 0.5]), 2) == pytest.approx((2 + 1.5) / 12)
    assert problem.crossing(np.array([1.0, 0.95, 0.92]), 3) == pytest.approx((3 + 2) / 12)
    assert problem.crossing(np.array([0.8, 0.5]), 4) == pytest.approx(4 / 12)


def test_calibration_reads_between_probes_that_bracket_the_share():
    """A network whose label-free accuracy falls at once from 1 to 0.5 after 6 more deletions (a step no curve of
    the first-order model's shape follows): the probes end on both sides of the step, and the prediction is the
    straight line between the two nearest of them (`crossing_fraction`), whatever the model says."""
    model, x, _ = small_net(4)
    problem = BreakdownProblem(model, x, "1")
    seen: list[int] = []

    def step(sets):
        seen.append(len(sets[0]))
        return np.full(len(sets), 1.0 if len(sets[0]) < 6 else 0.5)

    problem.estimated_accuracy = step
    p = predict_breakdown(model, x, "1", "margin-calibrated", problem=problem)
    above, below = max(k for k in seen if k < 6), min(k for k in seen if k >= 6)
    assert p.fraction == pytest.approx(crossing_fraction([above / 12, below / 12], [1.0, 0.5], 0.9))
    assert p.details["per_order"] == pytest.approx([p.fraction] * 4)  # every order measured the same step


def test_a_network_already_broken_down_is_told_so_at_one_forward_pass():
    """From a damage where the label-free estimate is already below the share, the prediction is the current
    damage itself (no further unit can go), flagged, after one forward pass beyond the undamaged one."""
    model, x, _ = small_net(4)
    with torch.no_grad():  # decisive outputs that follow the hidden units (no biases to fall back on)
        model[4].weight.mul_(10)
        model[4].bias.zero_()
        model[2].bias.zero_()
    deleted = list(range(11))  # 11 of the 12 units gone
    problem = BreakdownProblem(model, x, "1")
    assert problem.estimated_accuracy([deleted])[0] < 0.9
    for method in ("probe", "margin-calibrated"):
        p = predict_breakdown(model, x, "1", method, deleted, problem=problem)
        assert p.fraction == pytest.approx(11 / 12) and p.interval == (p.fraction, p.fraction)
        assert p.details["already_broken"] and p.forward_passes == 2


def test_margin_predictors_refuse_a_model_with_several_rows_per_input_before_any_work():
    """A per-token model (3 output rows per input) takes only the probe: refused at once, in one line."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.Flatten(0, 1)).eval()
    x = torch.randn(20, 3, 5)
    problem = BreakdownProblem(model, x, "1")
    with pytest.raises(LesionError, match="one output row per input .*3 per input.*--predict probe"):
        predict_breakdown(model, x, "1", "margin-calibrated", problem=problem)
    assert problem.forward_passes == 1
    assert 0 < predict_breakdown(model, x, "1", "probe", problem=problem).fraction <= 1


def test_cli_breakdown_refuses_prediction_options_without_predict(tmp_path):
    model, config = build_net("mlp:10", (4,), 3, seed=0)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "mlp:10", config)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((50, 4)).astype(np.float32), y=rng.integers(0, 3, 50),
             x_test=rng.random((40, 4)).astype(np.float32), y_test=rng.integers(0, 3, 40))
    for extra in (["--from", "0.3"], ["--deleted", "1,2"]):
        assert main(["breakdown", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'd.npz'}", "--paths", "0",
                     *extra]) == 2


def _digits_net(hidden: int, steps: int) -> tuple[nn.Module, torch.Tensor]:
    from lesion.data import load

    data = load("digits")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    optimiser = torch.optim.Adam(net.parameters(), 0.02)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(data.x_train), data.y_train).backward()
        optimiser.step()
    return net.eval(), data.x_train[:300]


def test_probe_from_a_damaged_layer_starts_from_its_measured_estimate():
    """From a damage already there, the probe's curve starts at Â of that damage (measured: one forward pass),
    not at 1: a crossing within the first further unit is interpolated from it (it came late before)."""
    from lesion.data import load
    from lesion.train import TrainSettings, train

    data = load("digits")
    model, _ = build_net("mlp:16", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=5, seed=0))
    model.eval()
    x = data.x_train[:300]
    problem = BreakdownProblem(model, x, "act1", share=0.9)
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(300):
        deleted = sorted(rng.choice(16, int(rng.integers(1, 12)), replace=False).tolist())
        current = float(problem.estimated_accuracy([deleted])[0])
        if not 0.9 <= current < 0.99:  # a damage that costs something already
            continue
        draw = np.random.default_rng(0)  # the continuation orders the probe draws (seed 0)
        alive = np.setdiff1d(np.arange(16), np.asarray(deleted))
        orders = [draw.permutation(alive).tolist() for _ in range(4)]
        one_more = float(np.mean(problem.estimated_accuracy([[*deleted, o[0]] for o in orders])))
        if one_more >= 0.9:
            continue
        fraction = predict_breakdown(model, x, "act1", "probe", deleted, 0.9, orders=4, seed=0,
                                     problem=problem).fraction
        assert fraction == pytest.approx((len(deleted) + (current - 0.9) / (current - one_more)) / 16)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_calibrated_crossing_never_lies_beyond_a_probe_measured_below_the_share():
    """A 2-unit layer whose first-order curve barely falls (no scale within bounds reaches its probes): the
    calibrated prediction said 1.0 (never before the layer's end) although its own probes measured Â below the
    share; it is now read from the measurements, as the probe predictor reads them."""
    net, x = _digits_net(2, 300)
    problem = BreakdownProblem(net, x, "1", share=0.9)
    assert float(problem.estimated_accuracy([[0, 1]])[0]) < 0.9  # the probes measure it below the share
    calibrated = predict_breakdown(net, x, "1", "margin-calibrated", share=0.9, orders=4, seed=0).fraction
    probe = predict_breakdown(net, x, "1", "probe", share=0.9, orders=4, seed=0).fraction
    assert calibrated < 1.0 and calibrated == pytest.approx(probe, abs=0.25)
