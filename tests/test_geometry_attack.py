"""Perturbation response and attacks (SPEC §3.3–3.4) on a small trained MLP; CLI spectrum and attack."""

import json

import numpy as np
import pytest
import torch

from lesion.cli import main
from lesion.data import load
from lesion.geometry.attack import adversarial_direction, attack, gradient_direction, greedy_bitflips
from lesion.geometry.metric import MetricOperator
from lesion.nets import build_net, save_checkpoint
from lesion.train import TrainSettings, train


@pytest.fixture(scope="module")
def trained():
    data = load("digits")
    model, config = build_net("mlp:32", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=15, seed=0))
    return model.eval(), config, data


def test_small_sigma_output_change_matches_the_metric(trained):
    """duᵀ g du ≈ mean_x ‖f(w + du) − f(w)‖² for small du ([G] Eq. 1–3), and the gap shrinks like σ³."""
    model, _, data = trained
    x = data.x_train[:200].double()
    model64 = build_net("mlp:32", data.input_shape, 10)[0].double()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    op = MetricOperator(model64.eval(), x)
    direction = torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    direction /= direction.norm()
    gaps = []
    for sigma in (1e-2, 1e-3):
        du = sigma * direction
        predicted = op.quadratic(du)
        measured = float(((op.outputs_fn(x)(op.weights + du) - op.outputs_fn(x)(op.weights)) ** 2).sum(1).mean())
        gaps.append(abs(measured - predicted) / predicted)
    assert gaps[1] < 0.05 and gaps[1] < gaps[0] / 5


def test_designed_directions_beat_random_ones(trained):
    model, _, data = trained
    x_an, y_an = data.x_train[:300], data.y_train[:300]
    result = attack(model, x_an, y_an, data.x_test, data.y_test, sigma=2.0, directions=60, k=8, seed=0)
    random = result.random_accuracy
    assert random["n"] == 60 and random["min"] <= random["mean"] <= random["max"]
    assert result.adversarial_accuracy < random["min"]
    assert abs(sum(result.collapse["prediction_counts"]) - len(data.x_test)) == 0
    flips = result.details["bitflips"]
    spent = sum((f["after"] - f["before"]) ** 2 for f in flips)
    assert spent <= 2.0**2 + 1e-9  # matched budget: the flips change the weights by at most σ in norm
    assert all(0 <= f["bit"] < 32 for f in flips)


def test_directions_are_unit_and_raise_the_loss(trained):
    model, _, data = trained
    x, y = data.x_train[:200], data.y_train[:200]
    op = MetricOperator(model, x)
    u, info = adversarial_direction(op, x, y, sigma=1.0, k=5, steps=20)
    assert float(u.norm()) == pytest.approx(1.0, rel=1e-5)
    g = gradient_direction(op.flat, x, y)
    assert float(g.norm()) == pytest.approx(1.0, rel=1e-5)
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        clean = float(loss(op.outputs_fn(x)(op.weights), y))
        adv = float(loss(op.outputs_fn(x)(op.weights + u), y))
    assert adv > clean and info["analysis_loss"] == pytest.approx(adv, rel=1e-4)
    flipped, flips = greedy_bitflips(op.flat, x, y, sigma=0.5, max_flips=3)
    assert len(flips) <= 3 and float((flipped - op.weights).norm()) <= 0.5 + 1e-6


def test_cli_spectrum_and_attack(trained, tmp_path, capsys):
    model, config, _ = trained
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "mlp:32", config)
    out, plot = tmp_path / "s.json", tmp_path / "s.png"
    top = tmp_path / "top.json"
    assert main(["spectrum", "--model", str(ckpt), "--data", "digits", "--inputs", "50", "--top", "5",
                 "--json", str(top), "--plot", str(tmp_path / "top.png")]) == 0
    assert main(["spectrum", "--model", str(ckpt), "--data", "digits", "--inputs", "50", "--top", "5", "--all",
                 "--json", str(out), "--plot", str(plot)]) == 0
    t, s = json.loads(top.read_text()), json.loads(out.read_text())
    assert len(t["eigenvalues"]) == 5 and t["rank"] is None and not t["all_nonzero"]  # only the top K computed
    np.testing.assert_allclose(t["eigenvalues"], s["eigenvalues"][:5], rtol=1e-6)
    for key in ("eigenvalues", "trace", "rank", "rho", "threshold", "inputs", "parameters"):
        assert key in s
    assert s["inputs"] == 50 and s["rank"] <= 500 and s["eigenvalues"] == sorted(s["eigenvalues"], reverse=True)
    # the nonzero eigenvalues sum to the trace, up to those below the float32 Gram matrix's rank tolerance
    # λ_max·rows·ε (numerically zero, not reported): at most rows − rank of them
    rows, floor = 500, s["eigenvalues"][0] * 500 * float(np.finfo(np.float32).eps)
    assert -1e-6 * s["trace"] <= s["trace"] - sum(s["eigenvalues"]) <= (rows - s["rank"]) * floor + 1e-6 * s["trace"]
    assert s["eigenvalues"][-1] > floor
    # ρ(τ) counts the reported eigenvalues above τ, none below the floor
    assert round(s["rho"] * s["parameters"]) == sum(e > s["threshold"] for e in s["eigenvalues"])
    assert plot.stat().st_size > 10_000
    # the top 5 say nothing of the density: one panel (narrower), where the whole spectrum has two
    from matplotlib.image import imread

    assert imread(tmp_path / "top.png").shape[1] < 0.7 * imread(plot).shape[1]
    att = tmp_path / "a.json"
    assert main(["attack", "--model", str(ckpt), "--data", "digits", "--inputs", "100", "--sigma", "1",
                 "--directions", "20", "--top", "4", "--no-bitflips", "--json", str(att)]) == 0
    a = json.loads(att.read_text())
    for key in ("clean_accuracy", "random_accuracy", "adversarial_accuracy", "gradient_accuracy", "sigma"):
        assert key in a
    assert {"mean", "ci", "min", "max"} <= a["random_accuracy"].keys()
    assert a["bitflip_accuracy"] == "nan"  # skipped; JSON keeps NaN as a string
    assert main(["attack", "--model", str(ckpt), "--data", "digits", "--sigma", "-1"]) == 2


def test_halving_norm_brackets_the_first_crossing_of_closed_forms():
    from lesion.geometry.attack import HALVING_STEPS, halving_norm

    for crossing in (1e-4, 0.37, 1.0, 3.0, 4096.0):  # accuracy 1 / (1 + σ / crossing): halved at σ = crossing
        r = halving_norm(lambda s, c=crossing: 1.0 / (1.0 + s / c), 0.5)
        lo, hi = r["bracket"]
        assert lo < crossing <= hi == r["norm"] and hi / lo <= 2 ** (1 / 2**HALVING_STEPS) * (1 + 1e-12)
    assert halving_norm(lambda s: 0.9, 0.5)["norm"] is None  # never halved within 2^30
    stepped = halving_norm(lambda s: 0.9 if s < 3 or s > 20 else 0.1, 0.5)  # a dip the doubling lands in
    assert 3 <= stepped["norm"] <= 3 * 1.02


def test_halving_norms_on_a_trained_network_match_a_hand_perturbed_copy(trained):
    """At the returned norm the network moved by hand along the direction has accuracy ≤ half of clean, at
    the bracket's lower end above it; the adversarial direction halves accuracy at a smaller norm than random
    directions do."""
    import copy

    from lesion.geometry.attack import _accuracy
    from lesion.geometry.flat import FlatModel

    model, _, data = trained
    x, y = data.x_test[:300], data.y_test[:300]
    view = FlatModel(model, x[:1])
    clean = _accuracy(view, view.weights, x, y)[0]
    result = attack(model, data.x_train[:64], data.y_train[:64], x, y, 1.0, 10, k=5, bitflips=False, halving=3)
    h = result.halving
    assert h["level"] == pytest.approx(0.5 * clean) and len(h["random"]) == 3

    def by_hand(direction, sigma):
        copy_ = copy.deepcopy(model)
        with torch.no_grad():
            offset = 0
            for p in copy_.parameters():
                p += sigma * direction[offset:offset + p.numel()].reshape(p.shape).to(p.dtype)
                offset += p.numel()
            out = copy_(x)
        return float((out.argmax(1) == y).double().mean())

    gen = torch.Generator().manual_seed(31)  # the first random direction, drawn as halving_norms draws it
    u = torch.randn(view.weights.shape, generator=gen, dtype=torch.float64)
    u = (u / u.norm()).to(view.weights.dtype)
    first = h["random"][0]
    assert by_hand(u, first["norm"]) <= h["level"] < by_hand(u, first["bracket"][0])
    assert h["adversarial"]["norm"] < h["random_median"]


def test_random_directions_of_a_model_with_frozen_weights_live_where_the_designed_ones_do():
    from lesion.damage import Perturbation
    from lesion.damage.campaign import Campaign

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3)).eval()
    model[0].weight.requires_grad_(False)  # 43 trainable weights of 103
    x = torch.randn(80, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    result = attack(model, x[:40], y[:40], x[40:], y[40:], sigma=2.0, directions=40, k=4, bitflips=False)
    trainable = Perturbation("sphere", 2.0, "0.bias,2.weight,2.bias")
    expected = Campaign(model, x[40:], y[40:], [trainable], seed=0).run(samples=40).accuracy
    everywhere = Campaign(model, x[40:], y[40:], [Perturbation("sphere", 2.0)], seed=0).run(samples=40).accuracy
    assert result.random_accuracy["mean"] == expected["mean"] != everywhere["mean"]


def _replay_float32(w0: torch.Tensor, flips) -> np.ndarray:
    """The float32 weights after the recorded flips, by XOR of the IEEE 754 words in numpy."""
    w = w0.float().numpy().copy()
    words = w.view(np.uint32)
    for f in flips:
        words[f["weight"]] ^= np.uint32(1 << f["bit"])
    return w


def test_greedy_bitflips_keep_the_total_change_from_the_trained_weights_within_sigma(trained):
    """‖w − w0‖ ≤ σ for the final weights (SPEC §3.4 matched budget), not a per-step sum of squares: on this
    network the search moved weights twice, and a per-step sum undercounts two moves in the same direction (it
    ended 33% over, ‖w − w0‖ = 2.65 at σ = 2). Each record's "norm" is ‖w − w0‖ after it."""
    from lesion.geometry.flat import FlatModel

    model, _, data = trained
    x, y = data.x_train[:200], data.y_train[:200]
    view = FlatModel(model, x)
    w0 = view.weights.clone()
    flat, flips = greedy_bitflips(view, x, y, sigma=2.0)
    assert len(flips) >= 5 and torch.equal(view.weights, w0)
    assert np.array_equal(_replay_float32(w0, flips), flat.numpy())  # the record is what was applied
    assert float((flat.double() - w0.double()).norm()) <= 2.0 * (1 + 1e-12)
    for j, f in enumerate(flips):
        replayed = torch.from_numpy(_replay_float32(w0, flips[: j + 1])).double()
        assert f["norm"] == pytest.approx(float((replayed - w0.double()).norm()), rel=1e-9)
        assert f["format"] == "float32" and 0 <= f["bit"] < 32


def _replay_word(before: float, bit: int, fmt: str) -> float:
    """The value of `before` with bit `bit` of its `fmt` word flipped, in numpy (bfloat16 is the top half of a
    float32 word, so its bit b is float32 bit b + 16)."""
    if fmt == "float16":
        word = np.array([before], dtype=np.float16).view(np.uint16) ^ np.uint16(1 << bit)
        return float(word.view(np.float16)[0])
    if fmt == "bfloat16":
        word = np.array([before], dtype=np.float32).view(np.uint32)
        assert word[0] & np.uint32(0xFFFF) == 0  # a bfloat16 value: the low half of the float32 word is zero
        return float((word ^ np.uint32(1 << (bit + 16))).view(np.float32)[0])
    word = np.array([before], dtype=np.float64).view(np.uint64) ^ np.uint64(1 << bit)
    return float(word.view(np.float64)[0])


@pytest.mark.parametrize(("dtype", "fmt", "width"), [(torch.float16, "float16", 16),
                                                     (torch.bfloat16, "bfloat16", 16),
                                                     (torch.float64, "float64", 64)])
def test_greedy_bitflips_flip_the_words_of_the_weights_own_dtype(trained, dtype, fmt, width):
    """A float16/bfloat16 model's flips are of its 16-bit words (they flipped float32 bits, e.g. exponent bit 29
    of a float16 weight, a value float16 cannot hold), a float64 model's of its 64-bit words; each flip replayed
    in numpy gives the recorded value, and the weights stay values of the model's dtype."""
    import copy

    from lesion.geometry.flat import FlatModel
    from lesion.nets import prepare_model

    model, _, data = trained
    x, y = data.x_train[:200], data.y_train[:200]
    half, _ = prepare_model(copy.deepcopy(model).to(dtype), data.x_test, 10)
    view = FlatModel(half, x)
    w0 = view.weights.clone()
    flat, flips = greedy_bitflips(view, x, y, sigma=1.0, max_flips=6)
    assert flips and all(0 <= f["bit"] < width for f in flips)
    current = w0.double().clone()
    for f in flips:
        assert f["before"] == float(current[f["weight"]])
        assert f["after"] == _replay_word(f["before"], f["bit"], fmt)
        current[f["weight"]] = f["after"]
    assert torch.equal(current, flat.double())
    assert torch.equal(flat.to(dtype).to(flat.dtype), flat)  # every weight a value of the model's dtype
    assert float((flat.double() - w0.double()).norm()) <= 1.0 * (1 + 1e-12)
    from lesion.geometry.attack import bit_formats  # here: the flips above are checked on their own

    assert all(f["format"] == fmt for f in flips) and set(bit_formats(view).values()) == {fmt}


def test_attack_on_a_float16_model_flips_float16_words_and_records_the_format(trained):
    import copy

    from lesion.nets import prepare_model

    model, _, data = trained
    half, _ = prepare_model(copy.deepcopy(model).half(), data.x_test, 10)
    result = attack(half, data.x_train[:100], data.y_train[:100], data.x_test, data.y_test, sigma=1.0,
                    directions=5, k=3)
    assert set(result.details["bitflip_formats"].values()) == {"float16"}
    flips = result.details["bitflips"]
    assert flips and all(f["format"] == "float16" and f["bit"] < 16 for f in flips)
    assert 0.0 <= result.bitflip_accuracy <= 1.0


def test_top_eigenvector_sign_is_chosen_on_the_analysis_inputs_not_the_evaluation_labels(trained):
    """SPEC §3.4: the sign maximises the loss on the analysis inputs. Evaluation labels are set to the
    predictions of the network moved along the analysis-chosen sign (accuracy 1 there, below 0.9 the other way):
    a sign chosen by the lower evaluation accuracy (test-label leakage) reports the other. The top eigenvector
    is found independently, from a dense float64 JᵀJ."""
    import copy

    from torch.func import functional_call, jacrev

    model, _, data = trained
    x_an, y_an, x_ev = data.x_train[:100], data.y_train[:100], data.x_test
    model64 = copy.deepcopy(model).double()
    names = [n for n, _ in model64.named_parameters()]
    shapes = [p.shape for _, p in model64.named_parameters()]
    w = torch.cat([p.detach().reshape(-1) for p in model64.parameters()])

    def f(flat, x):
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = flat[offset:offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        return functional_call(model64, params, (x.double(),))

    with torch.no_grad():
        J = jacrev(f)(w, x_an).reshape(-1, len(w))
        v1 = torch.linalg.eigh(J.T @ J / len(x_an)).eigenvectors[:, -1]
        sigma = 1.0
        losses = {s: float(torch.nn.functional.cross_entropy(f(w + s * sigma * v1, x_an), y_an)) for s in (1, -1)}
        chosen = max(losses, key=losses.get)
        y_ev = f(w + chosen * sigma * v1, x_ev).argmax(1)
        other = float((f(w - chosen * sigma * v1, x_ev).argmax(1) == y_ev).double().mean())
    assert abs(losses[1] - losses[-1]) > 0.01 and other < 0.9, (losses, other)
    result = attack(model, x_an, y_an, x_ev, y_ev, sigma=sigma, directions=5, k=3, bitflips=False)
    assert result.top_eigenvector_accuracy >= 0.98  # float32 against float64: a few inputs on the boundary
    assert result.top_eigenvector_accuracy > other + 0.05


def test_attack_clamps_the_eigenvectors_to_the_rank_bound_and_says_so(trained, tmp_path, capsys):
    """g = JᵀJ on one input of 10 outputs has rank at most 10: --top 20 computes and prints 10."""
    model, config, data = trained
    result = attack(model, data.x_train[:1], data.y_train[:1], data.x_test, data.y_test, sigma=1.0,
                    directions=5, k=20, bitflips=False)
    assert result.details["k"] == 10 and result.details["k_asked"] == 20 and result.details["rank_bound"] == 10
    assert len(result.details["adversarial"]["eigenvalues"]) == 10
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "mlp:32", config)
    capsys.readouterr()
    assert main(["attack", "--model", str(ckpt), "--data", "digits", "--inputs", "1", "--top", "20",
                 "--directions", "5", "--no-bitflips"]) == 0
    out = capsys.readouterr().out
    assert "the top 10 eigenvectors, not --top 20" in out and "span of the top 10 eigenvectors" in out
    assert "top 20 eigenvectors" not in out


def test_cli_attack_refuses_sigma_zero_in_the_parser(trained, tmp_path, capsys):
    model, config, _ = trained
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "mlp:32", config)
    capsys.readouterr()
    assert main(["attack", "--model", str(ckpt), "--data", "digits", "--sigma", "0"]) == 2
    err = capsys.readouterr().err
    assert "argument --sigma: must be > 0, got 0" in err and len(err.strip().splitlines()) == 1


def test_cli_spectrum_seed_draws_the_hutchinson_vectors(tmp_path):
    """A model that is not an MLP on the operator route: the trace is Hutchinson's estimate, from --seed."""
    data = load("digits")
    model, config = build_net("cnn", data.input_shape, 10, seed=0)
    ckpt = save_checkpoint(tmp_path / "cnn.pt", model.eval(), "cnn", config)
    runs = []
    for seed in (1, 2, 1):
        out = tmp_path / f"s{seed}.json"
        assert main(["spectrum", "--model", str(ckpt), "--data", "digits", "--inputs", "10", "--top", "2",
                     "--method", "lanczos", "--seed", str(seed), "--json", str(out)]) == 0
        runs.append(json.loads(out.read_text()))
    traces = [s["trace"] for s in runs]
    assert traces[0] != traces[1] and traces[0] == traces[2]
    assert all(s["trace_method"].startswith("hutchinson") for s in runs)
    assert [s["trace_seed"] for s in runs] == [1, 2, 1]
