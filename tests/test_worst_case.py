"""The certified worst case of crashes (issue 19): exact where it claims to be, a true bracket elsewhere,
checked against brute-force enumeration by an independent numpy forward (test_crash.brute_force)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lesion.cli import main
from lesion.crash import CrashBudget, mlp_structure
from lesion.crash.propagate import CrashPropagation, relax, top_sum
from lesion.crash.tolerance import largest_within
from lesion.crash.worst import worst_case
from lesion.crash.worst_additive import per_input_maxima
from lesion.errors import LesionError
from lesion.nets import build_net, save_checkpoint
from test_crash import brute_force, make, nets

TOL = 1e-9


def figures(d: np.ndarray) -> tuple[float, float, float]:
    """Omega_max, Omega_mav, Omega_worst_set of distances (sets, inputs)."""
    return float(d.max()), float(d.max(axis=0).mean()), float(d.mean(axis=1).max())


def assert_brackets(result, d: np.ndarray) -> None:
    truth = figures(d)
    pairs = [(result.omega_max_lower, result.omega_max_upper), (result.omega_mav_lower, result.omega_mav_upper),
             (result.omega_worst_set_lower, result.omega_worst_set_upper)]
    for (lower, upper), value in zip(pairs, truth, strict=True):
        assert lower <= value * (1 + TOL) + 1e-12, (lower, value)
        assert value <= upper * (1 + TOL) + 1e-12, (value, upper)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets, st.data())
def test_last_hidden_layer_raw_outputs_are_exact_for_every_f(net, data):
    widths, *rest = net
    model, x = make(widths, *rest)
    structure = mlp_structure(model)
    layer = structure.depth
    n = structure.widths[-1]
    faults = list(range(1, n + 1))
    results = worst_case(structure, x, layer, faults, time_limit=5.0, enumerate_small=False)
    for f, result in zip(faults, results, strict=True):
        d = brute_force(model, x.numpy(), CrashBudget((layer,), (n,), f))
        omega_max, omega_mav, omega_worst = figures(d)
        assert result.omega_max_lower == result.omega_max_upper
        np.testing.assert_allclose([result.omega_max_upper, result.omega_mav_upper], [omega_max, omega_mav],
                                   rtol=TOL, atol=1e-12)
        assert result.exact  # small nets: branch and bound closes Omega_worst_set
        np.testing.assert_allclose([result.omega_worst_set_lower, result.omega_worst_set_upper],
                                   [omega_worst, omega_worst], rtol=TOL, atol=1e-12)
        # the reported sets attain their figures
        worst = budget_rank(n, f, result.worst_set)
        assert d[worst].mean() == pytest.approx(result.omega_worst_set_lower, rel=TOL, abs=1e-12)
        top = budget_rank(n, f, result.omega_max_set)
        assert d[top, result.omega_max_input] == pytest.approx(omega_max, rel=TOL, abs=1e-12)


def budget_rank(n: int, f: int, units: list[int]) -> int:
    return list(itertools.combinations(range(n), f)).index(tuple(units))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets, st.data())
def test_every_layer_and_output_is_bracketed(net, data):
    model, x = make(*net)
    structure = mlp_structure(model)
    layer = data.draw(st.integers(1, structure.depth))
    n = structure.widths[layer - 1]
    f = data.draw(st.integers(1, min(3, n)))
    output = data.draw(st.sampled_from(["raw", "softmax"]))
    limit = data.draw(st.sampled_from([0.0, 5.0]))  # no time at all still gives a sound bracket
    result = worst_case(structure, x, layer, [f], output, time_limit=limit, enumerate_small=False)[0]
    d = brute_force(model, x.numpy(), CrashBudget((layer,), (n,), f), output=output)
    assert_brackets(result, d)
    assert d[budget_rank(n, f, result.worst_set)].mean() == pytest.approx(result.omega_worst_set_lower, rel=TOL,
                                                                          abs=1e-12)


def test_deeper_nets_close_with_time():
    """Branch and bound closes Omega_max and Omega_mav on small deeper nets (the bracket shrinks to the truth)."""
    model, x = make([6, 6], "relu", True, 1.0, 7, 3)
    structure = mlp_structure(model)
    for f in (1, 2, 3):
        result = worst_case(structure, x, 1, [f], time_limit=10.0, enumerate_small=False)[0]
        omega_max, omega_mav, _ = figures(brute_force(model, x.numpy(), CrashBudget((1,), (6,), f)))
        assert result.omega_max_lower == pytest.approx(omega_max, rel=TOL)
        assert result.omega_max_upper == pytest.approx(omega_max, rel=TOL)
        assert result.omega_mav_upper == pytest.approx(omega_mav, rel=TOL)


@pytest.mark.parametrize("output", ["raw", "softmax"])
def test_small_budgets_are_enumerated(output):
    model, x = make([5, 4], "relu", True, 1.0, 11, 3)
    structure = mlp_structure(model)
    for layer in (1, 2):
        n = structure.widths[layer - 1]
        for f in (1, 2):
            result = worst_case(structure, x, layer, [f], output, time_limit=60.0)[0]
            d = brute_force(model, x.numpy(), CrashBudget((layer,), (n,), f), output=output)
            expected = figures(d)
            got = [result.omega_max_upper, result.omega_mav_upper, result.omega_worst_set_upper]
            np.testing.assert_allclose(got, expected, rtol=TOL, atol=1e-12)
            assert result.exact and result.omega_max_lower == result.omega_max_upper
            assert result.omega_worst_set_lower == result.omega_worst_set_upper
            assert d[budget_rank(n, f, result.worst_set)].mean() == pytest.approx(expected[2], rel=TOL)
            top = budget_rank(n, f, result.omega_max_set)
            assert d[top, result.omega_max_input] == pytest.approx(expected[0], rel=TOL)


def test_per_input_maxima_sort_against_enumeration():
    rng = np.random.default_rng(3)
    hidden = np.maximum(rng.normal(size=(9, 7)), 0)
    weight = rng.normal(size=(4, 7))
    got = per_input_maxima(hidden, weight, list(range(1, 8)))
    for f in range(1, 8):
        expected = np.zeros(9)
        for units in itertools.combinations(range(7), f):
            change = hidden[:, list(units)] @ weight[:, list(units)].T
            expected = np.maximum(expected, np.abs(change).max(axis=1))
        np.testing.assert_allclose(got[f - 1], expected, rtol=1e-12)


def test_top_sum_with_fixed_units_against_enumeration():
    rng = np.random.default_rng(4)
    g = torch.from_numpy(rng.normal(size=(3, 2, 6)))
    inside = torch.tensor([[True, False, False, False, False, False], [False] * 6, [False, True, True] + [False] * 3])
    outside = torch.tensor([[False, True, False, False, False, False], [False] * 5 + [True], [False] * 6])
    f = 3
    remaining = f - inside.sum(-1)
    value, chosen = top_sum(g, inside, ~(inside | outside), remaining, with_set=True)
    for b in range(3):
        for r in range(2):
            best = max(float(g[b, r, list(s)].sum()) for s in itertools.combinations(range(6), f)
                       if all(inside[b, u] <= (u in s) for u in range(6)) and not any(outside[b, u] for u in s))
            assert float(value[b, r]) == pytest.approx(best, rel=1e-12)
            assert int(chosen[b, r].sum()) == f
            assert float(g[b, r][chosen[b, r]].sum()) == pytest.approx(best, rel=1e-12)
    impossible = torch.tensor([[False] * 4 + [True, True]])
    assert top_sum(g[:1], torch.zeros(1, 6, dtype=torch.bool), ~impossible, torch.tensor([5]))[0].isinf().all()


@pytest.mark.parametrize("act", [torch.nn.ReLU(), torch.nn.Sigmoid(), torch.nn.Tanh()])
def test_relaxation_encloses_the_activation(act):
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(500, generator=gen, dtype=torch.float64) * 2
    a, b = torch.randn(2, 500, generator=gen, dtype=torch.float64) * 2
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    r = relax(act, z, lo, hi)
    for t in torch.linspace(0, 1, 21, dtype=torch.float64):
        delta = lo + t * (hi - lo)
        change = act(z + delta) - act(z)
        assert torch.all(change <= r.up_slope * delta + r.up_shift + 1e-12)
        assert torch.all(change >= r.low_slope * delta + r.low_shift - 1e-12)


def test_propagation_refuses_what_it_cannot_bound():
    from lesion.errors import LesionError

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.GELU(),
                                torch.nn.Linear(4, 2))
    with pytest.raises(LesionError, match="monotone"):
        CrashPropagation(mlp_structure(model), 1, torch.rand(2, 3), 1)
    with pytest.raises(LesionError, match="cannot crash 5"):
        CrashPropagation(mlp_structure(model), 2, torch.rand(2, 3), 5)


def test_largest_within_reads_a_prefix():
    assert largest_within([0.1, 0.2, 0.5, 0.1], 0.3, [1, 2, 3, 4]) == 2
    assert largest_within([0.4, 0.1], 0.3) == 0
    assert largest_within([0.1, 0.1, 0.1], 0.3, [1, 2, 3]) == 3


def checkpoint_and_inputs(tmp_path, seed: int, inputs: int):
    """A 4-6-5-3 MLP checkpoint and `inputs` random inputs in an npz file."""
    model, config = build_net("mlp:6,5", (4,), 3, seed=seed)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "mlp:6,5", config)
    x = np.random.default_rng(seed).random((inputs, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    return model, ckpt, x


def test_cli_crash_worst(tmp_path, capsys):
    model, ckpt, x = checkpoint_and_inputs(tmp_path, 0, 25)
    out = tmp_path / "w.json"
    assert main(["crash", "worst", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'x.npz'}", "--faults", "1-3",
                 "--time-limit", "5", "--epsilon", "0.05", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    keys = {"faults", "omega_max_lower", "omega_max_upper", "omega_mav_lower", "omega_mav_upper",
            "omega_worst_set_lower", "omega_worst_set_upper", "worst_set", "exact", "seconds"}
    assert keys <= report["results"][0].keys() and len(report["erf"]) == len(report["erf_av"]) == 3
    d = brute_force(model.double(), x.astype(np.float64), CrashBudget((1,), (6,), 3))
    last = report["results"][2]
    assert last["omega_max_lower"] <= d.max() * (1 + TOL) and d.max() <= last["omega_max_upper"] * (1 + TOL)
    assert all(e >= r["omega_max_upper"] for e, r in zip(report["erf"], report["results"], strict=True))
    query = report["certification"]
    uppers = [r["omega_max_upper"] for r in report["results"]]
    assert query["certified"] == largest_within(uppers, 0.05, [1, 2, 3]) and query["at_most"] >= query["certified"]
    assert "certified" in capsys.readouterr().out
    assert main(["crash", "worst", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'x.npz'}", "--faults", "2",
                 "--layer", "1,2"]) == 2
    assert "one hidden layer" in capsys.readouterr().err
    assert main(["crash", "worst", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'x.npz'}", "--faults", "7"]) == 2


def test_monte_carlo_omega_is_bracketed_by_the_certificate(tmp_path):
    model, ckpt, x = checkpoint_and_inputs(tmp_path, 1, 20)
    out = tmp_path / "mc.json"
    assert main(["crash", "omega", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'x.npz'}", "--faults", "2",
                 "--samples", "8", "--certify-seconds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    cert = result["certified"]
    assert result["max_figures_are_lower_bounds"]
    assert result["omega_max"] <= cert["omega_max_upper"] * (1 + TOL)  # sampled sets cannot beat every set
    assert result["omega_mav"] <= cert["omega_mav_upper"] * (1 + TOL)
    d = brute_force(model.double(), x.astype(np.float64), CrashBudget((1,), (6,), 2))
    assert cert["omega_max_upper"] == pytest.approx(d.max(), rel=1e-6)  # small: enumerated, exact


def test_in_place_activations_leave_the_certified_worst_case_exact():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 10), torch.nn.ReLU(inplace=True), torch.nn.Linear(10, 10),
                                torch.nn.ReLU(inplace=True), torch.nn.Linear(10, 3)).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    result = worst_case(mlp_structure(model), x, 1, [3], time_limit=0.5, enumerate_small=False)[0]

    def forward(units) -> torch.Tensor:
        h = torch.relu(model[0](x))
        h[:, list(units)] = 0.0
        return model[4](torch.relu(model[2](h)))

    with torch.no_grad():
        clean = forward(())
        true = max(float((forward(s) - clean).abs().max()) for s in itertools.combinations(range(10), 3))
    # every input's bracket closed (`exact` also asks for Omega_worst_set, which this test does not)
    assert result.omega_max_exact and result.omega_mav_exact
    assert result.omega_max_lower == pytest.approx(true) == result.omega_max_upper


@pytest.mark.parametrize("make", [lambda: torch.nn.LeakyReLU(-1.0), lambda: torch.nn.ELU(alpha=-0.5), torch.nn.SiLU])
def test_activations_that_are_not_monotone_are_refused_by_the_certified_worst_case(make):
    model = torch.nn.Sequential(torch.nn.Linear(4, 10), make(), torch.nn.Linear(10, 10), make(),
                                torch.nn.Linear(10, 2))
    with pytest.raises(LesionError, match="monotone"):
        worst_case(mlp_structure(model), torch.randn(6, 4), 1, [2], time_limit=0.5, enumerate_small=False)


def test_nan_weights_are_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight[1, 2] = float("nan")
    with pytest.raises(LesionError, match="NaN"):
        mlp_structure(model)


def test_a_sequential_that_uses_one_activation_twice_is_refused_in_one_line():
    act = torch.nn.ReLU()
    model = torch.nn.Sequential(torch.nn.Linear(4, 10), act, torch.nn.Linear(10, 10), act, torch.nn.Linear(10, 2))
    with pytest.raises(LesionError, match="serves two of its layers"):
        mlp_structure(model)


def test_exact_means_every_bracket_closed_in_every_path():
    """`exact` said "the worst set was proved" in the additive path, "every input's Omega_max closed" in bound
    propagation (with the Omega_worst_set bracket still open) and the text said "exact" for Omega_max alone."""
    from lesion.crash.worst import closed

    model, x = make([6, 6], "relu", True, 1.0, 7, 3)
    structure = mlp_structure(model)
    found = [*worst_case(structure, x, 1, [1, 2, 3], time_limit=3.0, enumerate_small=False),  # propagation
             *worst_case(structure, x, 2, [1, 2, 3], time_limit=3.0, enumerate_small=False),  # additive
             *worst_case(structure, x, 1, [2], time_limit=3.0)]  # enumerated
    opened = 0
    for result in found:
        row = result.to_dict()
        flags = []
        for name in ("omega_max", "omega_mav", "omega_worst_set"):
            lower, upper = row[f"{name}_lower"], row[f"{name}_upper"]
            assert row[f"{name}_exact"] == (upper <= lower * (1 + 1e-9) + 1e-15) == closed(lower, upper)
            flags.append(row[f"{name}_exact"])
        assert row["exact"] == result.exact == all(flags)
        opened += row["omega_max_exact"] and not row["exact"]
    assert opened  # propagation closes Omega_max here but not Omega_worst_set: not exact (it said exact)
    first = found[0]
    assert first.omega_max_exact and first.omega_worst_set_lower < first.omega_worst_set_upper and not first.exact


def test_cli_crash_worst_prints_what_the_json_says_is_exact(tmp_path, capsys):
    model, config = build_net("mlp:40,30", (4,), 3, seed=2)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "mlp:40,30", config)
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(2).random((30, 4)).astype(np.float32))
    out = tmp_path / "w.json"
    capsys.readouterr()
    assert main(["--quiet", "crash", "worst", "--model", str(ckpt), "--data", f"npz:{tmp_path / 'x.npz'}",
                 "--faults", "1,6", "--time-limit", "1", "--json", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("f=")]
    rows = json.loads(out.read_text())["results"]
    assert len(lines) == len(rows) == 2
    for line, row in zip(lines, rows, strict=True):
        assert ("(exact;" in line) == row["omega_max_exact"]
        assert ("not every figure exact" in line) == (not row["exact"])
        assert row["exact"] == (row["omega_max_exact"] and row["omega_mav_exact"] and row["omega_worst_set_exact"])
        if not row["omega_max_exact"]:
            assert f"[{row['omega_max_lower']:.6g}, {row['omega_max_upper']:.6g}]" in line
            assert row["omega_max_ratio"] == pytest.approx(row["omega_max_upper"] / row["omega_max_lower"])
    assert not rows[1]["exact"]  # 6 of 40 units, one second: not every bracket closes


def test_an_exact_zero_worst_case_has_ratio_one(tmp_path, capsys):
    """A layer whose units are all silent on the inputs: every crash changes nothing, [0, 0] is exact; its ratio
    was inf (written "inf" in the JSON) and the text said [-0, -0]."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    torch.save(model, tmp_path / "dead.pt")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).random((10, 4)).astype(np.float32))
    out = tmp_path / "w.json"
    capsys.readouterr()
    assert main(["--quiet", "crash", "worst", "--model", str(tmp_path / "dead.pt"), "--data",
                 f"npz:{tmp_path / 'x.npz'}", "--faults", "1-2", "--time-limit", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    for row in report["results"]:
        assert row["omega_max_upper"] == 0.0 and math.copysign(1.0, row["omega_max_lower"]) == 1.0
        assert row["exact"] and row["omega_max_ratio"] == 1.0 and row["erf_over_upper"] is None
    assert "-0" not in text and "inf" not in text and "Omega_max 0 (exact" in text
    from lesion.crash.worst import WorstCase

    opened = WorstCase(2, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5, [], 0.0, 0, [], "test")
    assert opened.max_ratio is None and not opened.exact and opened.to_dict()["omega_max_ratio"] is None
    assert WorstCase(2, 0.25, 0.5, 0.0, 0.5, 0.0, 0.5, [], 0.0, 0, [], "test").max_ratio == 2.0


def test_cli_crash_worst_says_at_least_when_every_tested_count_is_within_epsilon(tmp_path, capsys):
    model, ckpt, x = checkpoint_and_inputs(tmp_path, 0, 25)
    data = f"npz:{tmp_path / 'x.npz'}"
    out = tmp_path / "w.json"
    capsys.readouterr()
    assert main(["--quiet", "crash", "worst", "--model", str(ckpt), "--data", data, "--faults", "1-2",
                 "--epsilon", "100", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    query = json.loads(out.read_text())["certification"]
    assert query["certified"] == query["by_erf"] == 2 and query["tested_up_to"] == 2
    assert all(query["capped"].values())  # 2 of 6 units tested: more may pass
    assert "≥ 2 crashes certified" in text and "Erf says ≥ 2" in text
    # every unit tested: 6 is the answer, not a bound
    assert main(["--quiet", "crash", "worst", "--model", str(ckpt), "--data", data, "--faults", "1-6",
                 "--epsilon", "100", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    query = json.loads(out.read_text())["certification"]
    assert query["certified"] == 6 and not any(query["capped"].values()) and "≥" not in text
    # an answer below the top of the range is exact, read off the brackets
    d = brute_force(model.double(), x.astype(np.float64), CrashBudget((1,), (6,), 2))
    epsilon = float(d.max()) * 0.99  # f = 2 exceeds it, f = 1 may not
    assert main(["--quiet", "crash", "worst", "--model", str(ckpt), "--data", data, "--faults", "1-3",
                 "--epsilon", repr(epsilon), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    query = report["certification"]
    uppers = [r["omega_max_upper"] for r in report["results"]]
    assert query["certified"] == largest_within(uppers, epsilon, [1, 2, 3]) < 2 and not query["capped"]["certified"]


def test_crash_worst_asks_for_k_before_the_work(tmp_path, capsys, monkeypatch):
    """A GELU network: the certificate was computed, then Erf asked for --K, an option crash worst lacked."""
    import lesion.crash.worst as worst_module

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    torch.save(model, tmp_path / "gelu.pt")
    x = np.random.default_rng(0).random((12, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    argv = ["--quiet", "crash", "worst", "--model", str(tmp_path / "gelu.pt"), "--data", f"npz:{tmp_path / 'x.npz'}",
            "--faults", "1-3", "--time-limit", "2"]
    real = worst_module.worst_case

    def not_yet(*args, **kwargs):
        raise AssertionError("the worst case ran before K was known")

    monkeypatch.setattr(worst_module, "worst_case", not_yet)
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "GELU" in err[0] and "--K" in err[0] and "Lipschitz" in err[0]
    monkeypatch.setattr(worst_module, "worst_case", real)
    out = tmp_path / "w.json"
    assert main([*argv, "--K", "1.1289", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["K"] == 1.1289
    hidden = torch.nn.functional.gelu(model[0](torch.from_numpy(x))).detach().double()
    C, w_m = float(hidden.abs().max()), float(model[2].weight.detach().abs().max())
    np.testing.assert_allclose(report["erf"], [C * f * w_m for f in (1, 2, 3)], rtol=1e-6)  # Theorem 1


@pytest.mark.parametrize("faults", ["3,1,2", "2,2", "5-1", "1.5", "0", "1-2-3"])
@pytest.mark.parametrize("command", ["worst", "omega", "bound"])
def test_bad_fault_counts_are_refused_at_parse_time(faults, command, capsys):
    capsys.readouterr()
    data = [] if command == "bound" else ["--data", "digits"]
    assert main(["--quiet", "crash", command, "--model", "/nonexistent/m.pt", *data, "--faults", faults]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--faults" in err[0] and "nonexistent" not in err[0]  # before the model is read


def test_epsilon_with_a_curve_not_from_one_is_refused_before_the_work(capsys):
    capsys.readouterr()
    assert main(["--quiet", "crash", "worst", "--model", "/nonexistent/m.pt", "--data", "digits", "--faults", "2,3",
                 "--epsilon", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "start at 1 without gaps" in err and "nonexistent" not in err
