"""Crash robustness ([R], SPEC §2): exact Omega against a float64 brute force written with numpy, the bound
Erf against measured Omega, closed forms, checkpoints and resumes, planning, Monte Carlo, tolerance."""

import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lesion.cli import main
from lesion.crash import (
    CrashBudget,
    budget_bound,
    crash_bound,
    exact_omega,
    mlp_structure,
    monte_carlo_omega,
    output_bounds,
    plan,
    tolerance,
)
from lesion.crash.omega import Interrupted
from lesion.errors import LesionError
from lesion.nets import MLP, build_net, save_checkpoint
from lesion.train import TrainSettings, train

PHI = {"relu": lambda s, k: np.maximum(k * s, 0.0), "sigmoid": lambda s, k: 1.0 / (1.0 + np.exp(-k * s)),
       "tanh": lambda s, k: np.tanh(s)}


def brute_force(model: MLP, x: np.ndarray, budget: CrashBudget, norm: str = "inf", output: str = "raw"):
    """d(x, S) for every crash set, by a numpy float64 forward with the crashed units' outputs set to 0."""
    cfg = model.config()
    layers = model.linear_layers()
    weights = [lin.weight.detach().double().numpy() for lin in layers]
    biases = [np.zeros(w.shape[0]) if lin.bias is None else lin.bias.detach().double().numpy()
              for w, lin in zip(weights, layers, strict=True)]

    def forward(crashed):
        h = x.reshape(len(x), -1)
        for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = h @ w.T + b
            if layer < len(weights) - 1:
                h = PHI[cfg["activation"]](h, cfg["k"])
                for unit_layer, unit in crashed:
                    if unit_layer == layer + 1:
                        h[:, unit] = 0.0
        if output == "softmax":
            e = np.exp(h - h.max(axis=1, keepdims=True))
            h = e / e.sum(axis=1, keepdims=True)
        return h

    clean = forward([])
    order = {"inf": np.inf, "1": 1, "2": 2}[norm]
    rows = []
    for units in budget.sets():
        crashed = [budget.locate(u) for u in units]
        rows.append(np.linalg.norm(forward(crashed) - clean, ord=order, axis=1))
    return np.array(rows)  # (sets, inputs)


def assert_matches(result, d):
    expected = [d.mean(), d.std(), d.max(axis=0).mean(), d.max(), d.mean(axis=1).max()]
    got = [result.omega_av, result.omega_std, result.omega_mav, result.omega_max, result.omega_worst_set]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


nets = st.builds(
    lambda widths, activation, bias, k, seed, m: (widths, activation, bias, k, seed, m),
    st.lists(st.integers(2, 6), min_size=1, max_size=3), st.sampled_from(["relu", "sigmoid", "tanh"]),
    st.booleans(), st.sampled_from([0.5, 1.0, 2.0]), st.integers(0, 10_000), st.sampled_from([1, 3]))


def make(widths, activation, bias, k, seed, m, d=5):
    torch.manual_seed(seed)
    model = MLP(d, widths, m, activation=activation, k=1.0 if activation == "tanh" else k, bias=bias).double()
    x = torch.rand(23, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return model.eval(), x


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets, st.data())
def test_exact_omega_equals_brute_force_and_erf_bounds_it(net, data):
    model, x = make(*net)
    structure = mlp_structure(model)
    depth = structure.depth
    layers = tuple(sorted(data.draw(st.sets(st.integers(1, depth), min_size=1, max_size=depth))))
    widths = tuple(structure.widths[l - 1] for l in layers)
    f = data.draw(st.integers(1, min(3, sum(widths))))
    norm = data.draw(st.sampled_from(["inf", "1", "2"]))
    output = data.draw(st.sampled_from(["raw", "raw", "softmax"]))
    budget = CrashBudget(layers, widths, f)
    d = brute_force(model, x.numpy(), budget, norm, output)
    result = exact_omega(structure, x, budget, norm, output)
    assert_matches(result, d)
    assert result.engine == ("additive" if depth == 1 and output == "raw" else "general")
    if result.engine == "additive":
        assert_matches(exact_omega(structure, x, budget, norm, output, engine="general", set_batch=4), d)
        # steps over ranges of sets by prefix (issue 18): a prefix's sum carried into the kernel
        assert_matches(exact_omega(structure, x, budget, norm, output, set_batch=2), d)
    if norm == "inf" and output == "raw":  # Theorem 2 with C measured on the same inputs
        bound = budget_bound(structure, f, layers, output_bounds(structure, x))
        assert bound.erf >= result.omega_max * (1 - 1e-12)


def test_per_layer_budget_against_brute_force_and_bound():
    model, x = make([4, 3, 3], "relu", True, 1.5, 7, 2)
    structure = mlp_structure(model)
    budget = CrashBudget((1, 3), (4, 3), 3, per_layer=(2, 1))
    assert budget.count() == math.comb(4, 2) * 3
    d = brute_force(model, x.numpy(), budget)
    assert_matches(exact_omega(structure, x, budget), d)
    bound = crash_bound(structure, (2, 0, 1), output_bounds(structure, x))
    assert bound.erf >= d.max()


def test_trained_mlp_matches_brute_force():
    from lesion.data import load

    data = load("digits")
    model, _ = build_net("mlp:12", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=3, seed=0))
    x = data.x_test[:60]
    budget = CrashBudget((1,), (12,), 2)
    d = brute_force(model.double(), x.double().numpy(), budget)
    result = exact_omega(mlp_structure(model), x, budget)
    assert_matches(result, d)
    structure = mlp_structure(model)  # Theorem 2 with C measured on the same inputs bounds the worst case
    assert budget_bound(structure, 2, (1,), output_bounds(structure, x)).erf >= result.omega_max * (1 - 1e-12)


def test_erf_closed_forms_and_log_space():
    model, x = make([7], "sigmoid", True, 2.0, 1, 3)
    structure = mlp_structure(model)
    C = output_bounds(structure)
    assert C.values == (1.0,) and C.source == "activation" and not C.data_dependent
    w_m = float(model.out.weight.detach().abs().max())
    w_av = float(model.out.weight.detach().abs().double().mean())
    r = crash_bound(structure, (3,), C)
    assert r.erf == pytest.approx(3 * w_m, rel=1e-12)  # Theorem 1: C f w_m^(2)
    assert r.erf_av == pytest.approx(3 * w_av, rel=1e-12)
    assert r.K == 0.5  # sigmoid(2 s): k/4
    # two hidden layers: C1 f1 K w3 (N2 − f2) w2 + C2 f2 w3
    model, x = make([4, 5], "relu", False, 3.0, 2, 2)
    structure = mlp_structure(model)
    C = output_bounds(structure, x)
    w = [float(l.weight.detach().abs().max()) for l in model.linear_layers()]
    expected = C.values[0] * 2 * 3.0 * w[2] * (5 - 1) * w[1] + C.values[1] * 1 * w[2]
    assert crash_bound(structure, (2, 1), C).erf == pytest.approx(expected, rel=1e-12)
    assert C.data_dependent and C.source == "measured"
    # overflow: with three hidden layers K = 1e200 enters squared: Erf is infinite as a float, its log exact
    model, x = make([4, 5, 3], "relu", False, 1.0, 2, 2)
    structure = mlp_structure(model)
    C = output_bounds(structure, x)
    w = [float(l.weight.detach().abs().max()) for l in model.linear_layers()]
    huge = crash_bound(structure, (1, 0, 0), C, K=1e200)
    assert huge.erf == math.inf
    expected_log10 = 400 + math.log10(C.values[0] * w[3] * 5 * w[1] * 3 * w[2])
    assert huge.log10_erf == pytest.approx(expected_log10, rel=1e-12)


def test_interval_bound_is_sound():
    model, x = make([6, 4], "relu", True, 1.0, 3, 2)
    structure = mlp_structure(model)
    interval = output_bounds(structure, box=(0.0, 1.0))
    measured = output_bounds(structure, x)  # x lies in [0, 1]^d
    assert all(i >= m for i, m in zip(interval.values, measured.values, strict=True))
    assert interval.source == "interval" and not interval.data_dependent


def test_silent_units_in_blocks_match_brute_force(monkeypatch):
    """A ReLU layer with units dead on every input and units that fire on some blocks only: the additive
    engine's live-unit path (blocks of 16 inputs, sorted by activity) equals the brute-force forward."""
    import lesion.crash.omega as omega_module

    monkeypatch.setattr(omega_module, "ADDITIVE_BLOCK", 16)
    model, _ = make([10], "relu", True, 1.0, 11, 3)
    x = torch.rand(75, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        model.fc1.bias[[0, 3, 7]] = -100.0  # dead everywhere
        model.fc1.weight[[2, 5]] = 0.0  # fire only where x_0 > 0.6 (unit 2) or x_1 < 0.3 (unit 5)
        model.fc1.weight[2, 0], model.fc1.bias[2] = 1.0, -0.6
        model.fc1.weight[5, 1], model.fc1.bias[5] = -1.0, 0.3
    hidden = torch.relu(model.fc1(x))
    assert (hidden[:, [0, 3, 7]] == 0).all() and 0 < int((hidden[:, [2, 5]] == 0).sum()) < 150
    structure = mlp_structure(model)
    from lesion.crash.additive import kernel_pairs

    one_block = torch.relu(model.fc1(x)).detach().numpy()
    live = set(np.flatnonzero((one_block != 0).any(axis=0)).tolist())
    assert len(live) == 7
    for f in (2, 4, 5):  # the plan counts the distinct nonempty live parts S ∩ L, once per input
        parts = {frozenset(s) & live for s in itertools.combinations(range(10), f)} - {frozenset()}
        assert kernel_pairs(one_block, f, block=len(x)) == len(parts) * len(x)
    assert kernel_pairs(np.ones((5, 10)), 4, block=2) == math.comb(10, 4) * 5
    for f in (2, 4, 5):
        budget = CrashBudget((1,), (10,), f)
        for norm in ("inf", "2"):
            result = exact_omega(structure, x, budget, norm)
            assert result.engine == "additive"
            assert_matches(result, brute_force(model, x.numpy(), budget, norm))


@pytest.mark.parametrize("engine", ["additive", "general"])
def test_interrupt_and_resume_is_bit_identical(tmp_path, engine, monkeypatch):
    import lesion.crash.omega as omega_module

    monkeypatch.setattr(omega_module, "ADDITIVE_BLOCK", 16)
    model, _ = make([9], "relu", True, 1.0, 5, 3)
    x = torch.rand(70, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    structure = mlp_structure(model)
    budget = CrashBudget((1,), (9,), 3)
    full = exact_omega(structure, x, budget, engine=engine, set_batch=10)
    path = tmp_path / "omega.ckpt.npz"
    with pytest.raises(Interrupted):
        exact_omega(structure, x, budget, engine=engine, set_batch=10, checkpoint=path, max_steps=2)
    assert path.exists()
    with pytest.raises(Interrupted):  # a second interruption, resumed from the first checkpoint
        exact_omega(structure, x, budget, engine=engine, set_batch=10, checkpoint=path, max_steps=1)
    resumed = exact_omega(structure, x, budget, engine=engine, set_batch=10, checkpoint=path)
    for key in ("omega_av", "omega_std", "omega_mav", "omega_max", "omega_worst_set", "worst_set"):
        assert getattr(resumed, key) == getattr(full, key)
    assert not path.exists()
    other = CrashBudget((1,), (9,), 2)
    with pytest.raises(Interrupted):
        exact_omega(structure, x, other, engine=engine, set_batch=10, checkpoint=path, max_steps=1)
    with pytest.raises(LesionError, match="belongs to another run"):
        exact_omega(structure, x, budget, engine=engine, set_batch=10, checkpoint=path)


def test_planning_refuses_with_count_estimate_and_alternative():
    model, _ = build_net("mlp1-48", seed=0)
    structure = mlp_structure(model)
    budget = CrashBudget((1,), (48,), 5)
    p = plan(structure, budget, 60_000)
    assert p.pairs == math.comb(48, 5) * 60_000 and p.engine == "additive"
    with pytest.raises(LesionError) as info:
        exact_omega(structure, torch.zeros(60_000, 784), budget, time_limit=1.0)
    message = str(info.value)
    assert f"{p.pairs:,}" in message and "Monte Carlo" in message and "--samples" in message


def test_planning_refuses_what_does_not_fit_in_memory(monkeypatch):
    import lesion.crash.omega as omega_module

    model, x = make([10], "relu", True, 1.0, 11, 3)
    structure = mlp_structure(model)
    budget = CrashBudget((1,), (10,), 4)
    p = plan(structure, budget, len(x))
    per_set = 8 * (omega_module.LANES + 4)  # the per-set arrays the additive engine holds at once
    assert p.memory_bytes >= per_set * math.comb(10, 4) and p.affordable(None)
    big = plan(mlp_structure(build_net("mlp1-48", seed=0)[0]), CrashBudget((1,), (48,), 9), 100)
    # 1.4e9 sets (11 GB of sums per array): a step holds one range of at most ADDITIVE_STEP_SETS sets (issue 18)
    assert per_set * omega_module.ADDITIVE_STEP_SETS <= big.memory_bytes < 2 * per_set * omega_module.ADDITIVE_STEP_SETS
    assert big.memory_bytes < per_set * math.comb(48, 9) / 100
    monkeypatch.setattr(omega_module, "available_memory", lambda: p.memory_bytes - 1)
    assert not p.affordable(None) and not p.affordable(1e9)
    with pytest.raises(LesionError) as info:
        exact_omega(structure, x, budget, time_limit=None)
    message = str(info.value)
    assert "of memory free" in message and "Monte Carlo" in message and f"{p.pairs:,}" in message
    curve = tolerance(structure, 10.0, output_bounds(structure, x), (1,), x=x, max_faults=4, samples=50).curve
    assert [point["exact"] for point in curve] == [True, True, True, False]  # the last fell back to Monte Carlo


def test_monte_carlo_interval_and_lower_bounds():
    model, x = make([10], "relu", True, 1.0, 11, 3)
    structure = mlp_structure(model)
    budget = CrashBudget((1,), (10,), 4)
    exact = exact_omega(structure, x, budget)
    covered = 0
    for seed in range(40):  # the 95% interval covers the exact value in about 95% of campaigns
        lo, hi = monte_carlo_omega(structure, x, budget, samples=400, seed=seed).omega_av_ci
        covered += lo <= exact.omega_av <= hi
    assert covered >= 34
    mc = monte_carlo_omega(structure, x, budget, samples=400, seed=0)
    assert mc.max_figures_are_lower_bounds and not mc.exact and mc.samples == 400
    assert mc.omega_max <= exact.omega_max + 1e-12 and mc.omega_mav <= exact.omega_mav + 1e-12
    assert mc.omega_worst_set <= exact.omega_worst_set + 1e-12
    stopped = monte_carlo_omega(structure, x, budget, ci_width=exact.omega_av * 0.2, seed=2)
    assert stopped.omega_av_ci[1] - stopped.omega_av_ci[0] <= exact.omega_av * 0.2


def test_non_mlps_are_refused():
    cnn, _ = build_net("cnn")
    with pytest.raises(LesionError, match="Linear layers and elementwise activations"):
        mlp_structure(cnn)
    with pytest.raises(LesionError, match="without an activation"):
        mlp_structure(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)))
    with pytest.raises(LesionError, match="own forward"):
        mlp_structure(nn.Transformer(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1))


def test_tolerance_reads_the_curve():
    model, x = make([8], "sigmoid", True, 1.0, 4, 2)
    structure = mlp_structure(model)
    C = output_bounds(structure)
    w_m = float(model.out.weight.detach().abs().max())
    result = tolerance(structure, epsilon=2.5 * w_m, C=C, x=x)
    assert result.by_erf == 2  # Erf = f·w_m: 2 w_m ≤ 2.5 w_m < 3 w_m
    omegas = [p["omega_av"] for p in result.curve if "omega_av" in p]
    assert result.by_omega_av == sum(1 for _ in itertools.takewhile(lambda v: v <= 2.5 * w_m, omegas))
    assert result.by_erf_av >= result.by_erf


def test_cli_crash_commands(tmp_path, capsys):
    model, config = build_net("mlp:6", (4,), 3, seed=0)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "mlp:6", config)
    x = np.random.default_rng(0).random((30, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "o.json"
    assert main(["crash", "omega", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'x.npz'}", "--faults", "1-2",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["faults"] for r in results] == [1, 2] and all(r["exact"] for r in results)
    assert {"omega_av", "omega_std", "omega_mav", "omega_max", "omega_worst_set", "sets", "inputs"} <= results[0].keys()
    budget = CrashBudget((1,), (6,), 2)
    d = brute_force(model.double(), x.astype(np.float64), budget)
    assert results[1]["omega_av"] == pytest.approx(d.mean(), rel=1e-9)
    for address in ("act1", "act1#0", "fc1"):  # the site addresses of hidden layer 1 (SPEC §6.1)
        named = tmp_path / f"{address}.json"
        assert main(["crash", "omega", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'x.npz'}", "--faults", "2",
                     "--layer", address, "--json", str(named)]) == 0
        assert json.loads(named.read_text())["results"][0]["omega_av"] == results[1]["omega_av"]
    capsys.readouterr()
    assert main(["crash", "omega", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'x.npz'}", "--layer", "out",
                 "--faults", "1"]) == 2
    assert "or their sites act1" in capsys.readouterr().err
    bound = tmp_path / "b.json"
    assert main(["crash", "bound", "--model", str(ckpt), "--faults", "1,2", "--data", f"npz:{tmp_path / 'x.npz'}",
                 "--json", str(bound)]) == 0
    b = json.loads(bound.read_text())
    assert len(b["erf"]) == 2 and b["erf"][1] >= results[1]["omega_max"] and b["K"] == 1.0 and len(b["C"]) == 1
    assert main(["crash", "tolerance", "--model", str(ckpt), "--model", str(ckpt), "--epsilon", "0.5"]) == 0
    ranking = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ranking")][0]
    assert f"{ckpt} (" in ranking and " = " in ranking and " > " not in ranking  # the same network twice: a tie
    assert main(["crash", "omega", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'x.npz'}", "--faults", "9"]) == 2
    assert main(["crash", "bound", "--model", "preset:cnn", "--faults", "1"]) == 2


@pytest.mark.parametrize("norm", ["inf", "1", "2"])
def test_additive_kernel_tiles_match_brute_force(norm):
    """Every tile shape and edge of the additive kernel (units up to 13, f up to 5, ragged chunks and lanes,
    silent units from none to all) against a float64 enumeration of the sets with numpy; the result does not
    depend on the thread count."""
    from lesion.crash.additive import CHUNK, run_block

    rng = np.random.default_rng(3)
    order = {"inf": np.inf, "1": 1, "2": 2}[norm]
    cases = [(2, 1, 5, 0), (3, 2, 7, 0), (4, 3, 40, 0), (6, 2, 2 * CHUNK + 3, 0), (7, 4, 33, 0), (9, 5, 100, 0),
             (13, 3, 130, 0), (13, 2, 1, 0), (5, 5, 9, 0),
             # silent units (zero on every input): the live-unit path and its expansion to all sets
             (9, 4, 40, 1), (10, 5, 37, 3), (8, 3, 9, 5), (6, 4, 11, 6), (12, 2, 70, 11), (7, 5, 5, 2)]
    for n, f, inputs, silent in cases:
        contrib = rng.normal(size=(n, 3, inputs))
        contrib[rng.choice(n, size=silent, replace=False)] = 0.0
        sets = list(itertools.combinations(range(n), f))
        d = np.array([np.linalg.norm(contrib[list(s)].sum(axis=0), ord=order, axis=0) for s in sets])
        set_sums, input_max, (total, total_sq, maximum) = run_block(contrib, f, norm, len(sets), threads=1)
        np.testing.assert_allclose(set_sums, d.sum(axis=1), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(input_max, d.max(axis=0), rtol=1e-12)
        np.testing.assert_allclose([total, total_sq, maximum], [d.sum(), (d * d).sum(), d.max()], rtol=1e-12)
        threaded = run_block(contrib, f, norm, len(sets), threads=2)
        assert np.array_equal(threaded[0], set_sums) and np.array_equal(threaded[1], input_max)
        assert np.array_equal(threaded[2], [total, total_sq, maximum])


@pytest.mark.parametrize("norm", ["inf", "1", "2"])
def test_prefix_groups_cover_every_set_in_rank_order_and_give_the_kernel_sums(norm):
    """Ranges of sets by shared prefix (issue 18): contiguous, in lexicographic rank order, no larger than asked
    (one prefix at most apart), and their sums — a prefix's contribution carried into the kernel, silent units
    among and after the prefix included — equal a float64 enumeration."""
    from lesion.crash.additive import prefix_groups, run_group

    rng = np.random.default_rng(5)
    order = {"inf": np.inf, "1": 1, "2": 2}[norm]
    for n, f, inputs, silent, max_sets in [(9, 4, 37, 0, 20), (10, 5, 70, 3, 40), (8, 3, 33, 5, 5), (7, 2, 9, 2, 1),
                                           (6, 6, 5, 0, 1), (11, 3, 40, 10, 30)]:
        contrib = rng.normal(size=(n, 2, inputs))
        contrib[rng.choice(n, size=silent, replace=False)] = 0.0
        sets = list(itertools.combinations(range(n), f))
        d = np.array([np.linalg.norm(contrib[list(s)].sum(axis=0), ord=order, axis=0) for s in sets])
        groups = prefix_groups(n, f, max_sets)
        q = len(groups[0].prefixes[0])
        assert (q == 0) == (len(sets) <= max_sets) and sum(g.count for g in groups) == len(sets)
        sums, maxima, totals = [], np.zeros(inputs), [0.0, 0.0, 0.0]
        for g, nxt in zip(groups, [*groups[1:], None], strict=True):
            assert nxt is None or nxt.start == g.start + g.count
            assert sets[g.start][:q] == g.prefixes[0] and g.count <= max(max_sets, math.comb(n - q, f - q))
            part = run_group(contrib, f, norm, g)
            np.testing.assert_allclose(part[0], d[g.start:g.start + g.count].sum(axis=1), rtol=1e-12, atol=1e-12)
            sums.append(part[0])
            maxima = np.maximum(maxima, part[1])
            totals = [totals[0] + part[2][0], totals[1] + part[2][1], max(totals[2], part[2][2])]
        np.testing.assert_allclose(np.concatenate(sums), d.sum(axis=1), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(maxima, d.max(axis=0), rtol=1e-12)
        np.testing.assert_allclose(totals, [d.sum(), (d * d).sum(), d.max()], rtol=1e-12)


class _ClassMLP(torch.nn.Module):
    """Not an nn.Sequential: the MLP engines refuse it, the site engine measures it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = torch.nn.Linear(3, 6), torch.nn.Linear(6, 5), torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


def test_site_engine_omega_of_any_model_matches_brute_force():
    import itertools

    from lesion.crash.site_engine import site_crash_omega
    from lesion.damage import Target

    torch.manual_seed(4)
    model = _ClassMLP().double().eval()
    x = torch.rand(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    sites = [Target(model, example=x).site(a) for a in ("fc1", "fc2")]
    assert [s.name for s in sites] == ["fc1", "fc2"]  # relu and tanh written as functions map 0 to 0
    result = site_crash_omega(model, x, sites, 2)
    with torch.no_grad():
        clean = model(x)
        rows = []
        for chosen in itertools.combinations(range(11), 2):
            h = torch.relu(model.fc1(x))
            h[:, [u for u in chosen if u < 6]] = 0.0
            g = torch.tanh(model.fc2(h))
            g[:, [u - 6 for u in chosen if u >= 6]] = 0.0
            rows.append((model.out(g) - clean).abs().amax(dim=1))
    d = torch.stack(rows).numpy()  # (sets, inputs)
    assert result.exact and result.sets == 55
    assert result.omega_av == pytest.approx(d.mean(), rel=1e-12)
    assert result.omega_mav == pytest.approx(d.max(axis=0).mean(), rel=1e-12)
    assert result.omega_max == pytest.approx(d.max(), rel=1e-12)
    assert result.omega_worst_set == pytest.approx(d.mean(axis=1).max(), rel=1e-12)
    sampled = site_crash_omega(model, x, sites, 2, samples=200, seed=1)
    assert sampled.omega_av_ci[0] <= d.mean() <= sampled.omega_av_ci[1]
    assert sampled.omega_max <= d.max() + 1e-15


def test_crash_sets_by_rank_equal_the_enumeration():
    # unranking and lexicographic successors against itertools' enumeration, every rank and random ranges
    import random

    from lesion.crash import CrashBudget

    rng = random.Random(0)
    for budget in [CrashBudget((1,), (9,), 3), CrashBudget((1,), (7,), 1), CrashBudget((1,), (6,), 6),
                   CrashBudget((1, 2), (5, 4), 3), CrashBudget((1, 2), (5, 4), 3, (2, 1)),
                   CrashBudget((1, 2, 3), (4, 3, 3), 3, (1, 0, 2))]:
        every = list(budget.sets())
        assert [budget.unrank(r) for r in range(len(every))] == every
        for _ in range(30):
            start = rng.randrange(len(every))
            count = rng.randrange(len(every) - start + 1)
            expected = np.array(every[start:start + count], dtype=np.int64).reshape(count, budget.total)
            assert np.array_equal(budget.sets_at(start, count), expected)


def _crash_max(model: nn.Sequential, x: torch.Tensor, crashed: int) -> float:
    """max over sets of `crashed` units of the first hidden layer and inputs of ‖F_crashed − F‖_∞, by hand
    (a one-hidden-layer or two-hidden-layer Sequential)."""
    hidden = model[0].out_features

    def forward(units) -> torch.Tensor:
        h = model[1](model[0](x).clone())
        h[:, list(units)] = 0.0
        return model[2:](h)

    with torch.no_grad():
        clean = forward(())
        return max(float((forward(s) - clean).abs().max()) for s in itertools.combinations(range(hidden), crashed))


@pytest.mark.parametrize("act", [nn.ReLU6(), nn.Hardtanh(-4.0, 4.0)])
def test_the_bound_of_a_clipped_activation_uses_its_range(act):
    # ReLU6 is a Hardtanh: its C is 6, and a Hardtanh(-4, 4)'s is 4, not 1
    model = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(0.0)
    x = torch.ones(5, 3, dtype=torch.float64)
    structure = mlp_structure(model)
    bound = budget_bound(structure, 1, (1,), output_bounds(structure)).erf
    true = _crash_max(model, x, 1)
    assert true > 1.0 and bound >= true * (1 - 1e-12)  # tight here: equal up to the log-space rounding


def test_an_input_range_refuses_activations_that_dip():
    model = nn.Sequential(nn.Linear(1, 1), nn.SiLU(), nn.Linear(1, 1)).double()
    with pytest.raises(LesionError, match="monotone"):
        output_bounds(mlp_structure(model), box=(0.0, 1.0))


def test_omega_checkpoints_know_their_run_and_survive_interrupts(tmp_path, monkeypatch, capsys):
    """Found by a review helper: a checkpoint of a model with other biases or another activation was resumed
    (its identity held the weights only); a truncated or empty one raised a traceback; several budgets shared
    one file, so `--faults 1-3` could not resume; an interrupt between a step's merge and its count counted it
    twice. Now: refused in one line; one file a budget, finished ones kept until all are; resumed figures equal
    an uninterrupted run's."""
    import signal

    import lesion.crash as crash_package
    from lesion.crash.omega import Interrupted, interrupts_deferred

    model, _ = make([9], "relu", True, 1.0, 5, 3)
    x = torch.rand(40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    structure = mlp_structure(model)
    budget = CrashBudget((1,), (9,), 2)
    path = tmp_path / "o.npz"
    with pytest.raises(Interrupted):
        exact_omega(structure, x, budget, engine="general", set_batch=4, checkpoint=path, max_steps=1)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.fc1.bias.add_(0.5)  # the same weights, another bias
    tanh = copy.deepcopy(model)
    tanh.act1 = torch.nn.Tanh()  # the same weights and biases, another activation
    for other in (shifted, tanh):
        with pytest.raises(LesionError, match="belongs to another run"):
            exact_omega(mlp_structure(other), x, budget, engine="general", set_batch=4, checkpoint=path)
    for broken in (path.read_bytes()[:50], b""):
        (tmp_path / "broken.npz").write_bytes(broken)
        with pytest.raises(LesionError, match="cannot read checkpoint"):
            exact_omega(structure, x, budget, engine="general", set_batch=4, checkpoint=tmp_path / "broken.npz")

    with pytest.raises(KeyboardInterrupt):  # a Ctrl-C inside the block waits for its end
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            reached = True
    assert reached

    np.savez(tmp_path / "x.npz", x=x.float().numpy())
    trained, config = build_net("mlp:9", (5,), 3, seed=0)
    ckpt = save_checkpoint(tmp_path / "m.pt", trained, "mlp:9", config)
    import lesion.crash.omega as omega_module

    monkeypatch.setattr(omega_module, "ADDITIVE_BLOCK", 16)  # three steps a budget on 40 inputs
    argv = ["crash", "omega", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'x.npz'}", "--faults", "1-3"]
    assert main([*argv, "--json", str(tmp_path / "full.json")]) == 0
    real = crash_package.exact_omega

    def cut_short(structure, x, budget, *args, **kwargs):
        if budget.total == 2:  # an interrupt in the second budget
            try:
                return real(structure, x, budget, *args, **{**kwargs, "max_steps": 1})
            except Interrupted:
                raise KeyboardInterrupt from None
        return real(structure, x, budget, *args, **kwargs)

    monkeypatch.setattr(crash_package, "exact_omega", cut_short)
    state = tmp_path / "state"
    assert main([*argv, "--checkpoint", str(state)]) == 130
    assert (tmp_path / "state.f1.npz").exists() and (tmp_path / "state.f2.npz").exists()
    monkeypatch.setattr(crash_package, "exact_omega", real)
    assert main([*argv, "--checkpoint", str(state), "--json", str(tmp_path / "resumed.json")]) == 0
    full, resumed = (json.loads((tmp_path / f).read_text())["results"] for f in ("full.json", "resumed.json"))
    for a, b in zip(full, resumed, strict=True):
        assert {k: a[k] for k in ("omega_av", "omega_max", "worst_set")} == \
            {k: b[k] for k in ("omega_av", "omega_max", "worst_set")}
    assert not list(tmp_path.glob("state*"))


def test_tolerance_at_the_top_of_the_examined_range_is_a_lower_bound(tmp_path, capsys):
    """--max-faults F with every count up to F within ε printed "tolerates F", as if exact."""
    model, x = make([8], "sigmoid", True, 1.0, 4, 2)
    structure = mlp_structure(model)
    C = output_bounds(structure)
    w_m = float(model.out.weight.detach().abs().max())
    capped = tolerance(structure, epsilon=100 * w_m, C=C, x=x, max_faults=3)
    assert (capped.by_erf, capped.by_erf_av, capped.by_omega_av, capped.examined) == (3, 3, 3, 3)
    assert capped.capped == {"by_erf": True, "by_erf_av": True, "by_omega_av": True}
    whole = tolerance(structure, epsilon=100 * w_m, C=C, x=x)  # every unit: 8 is the answer itself
    assert whole.by_erf == 8 > capped.by_erf and not any(whole.capped.values())
    inside = tolerance(structure, epsilon=2.5 * w_m, C=C, max_faults=5)  # Erf = f·w_m exceeds at f = 3
    assert inside.by_erf == 2 and not inside.capped["by_erf"]
    net, config = build_net("mlp:6", (4,), 3, seed=0)
    ckpt = save_checkpoint(tmp_path / "m.pt", net, "mlp:6", config)
    out = tmp_path / "t.json"
    capsys.readouterr()
    assert main(["--quiet", "crash", "tolerance", "--model", str(ckpt), "--model", str(ckpt), "--epsilon", "100",
                 "--max-faults", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())["networks"]
    assert all(r["tolerance"]["capped"]["by_erf"] and r["tolerance"]["by_erf"] == 2 for r in rows)
    assert "tolerates ≥ 2 crashes by Erf" in text and "tolerates 2 " not in text
    ranking = [line for line in text.splitlines() if line.startswith("ranking")][0]
    assert " = " not in ranking and " ? " in ranking  # two lower bounds: their order is unknown


def test_nearly_every_unit_crashed_in_a_wide_layer_with_silent_units_equals_brute_force():
    """f = 68 of 70 units, some of them silent on the inputs: the engine's binomial table held C(a, b) for every
    b ≤ f, beyond int64 from b ≈ 33 on, and raised OverflowError (a traceback); the entries read stay below
    C(n, f)."""
    torch.manual_seed(1)
    model = MLP(5, [70], 3, activation="relu", bias=True).double().eval()
    with torch.no_grad():
        model.linear_layers()[0].bias[:6] = -100.0  # six units never active: silent
    x = torch.rand(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    budget = CrashBudget((1,), (70,), 68)
    d = brute_force(model, x.numpy(), budget)
    assert_matches(exact_omega(mlp_structure(model), x, budget), d)


def test_a_plan_too_large_to_run_reads_as_orders_of_magnitude():
    # C(100, 50) = 100891344545564193334812497256 crash sets: a 30-digit count and 10^20 s say nothing digit by digit
    from lesion.crash.omega import Plan

    line = Plan(sets=math.comb(100, 50), inputs=360, pairs=360 * math.comb(100, 50), engine="general",
                estimated_seconds=1e20).describe()
    assert line.startswith("≈1.00e29 crash sets × 360 inputs = ≈3.63e31 (set, input) pairs, about 3.2e+12 years")
    small = Plan(sets=10**15 - 1, inputs=2, pairs=2 * (10**15 - 1), engine="additive", estimated_seconds=90000)
    assert small.describe().startswith("999,999,999,999,999 crash sets × 2 inputs = ≈1.99e15 (set, input) pairs, "
                                       "about 25.0 h")
