"""Geodesic recovery (SPEC §3.6): the trust-region solver against dense float64 solutions, OBS against its
dense formula, and recovery paths on a small trained network."""

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, minimize

from lesion.data import load
from lesion.errors import LesionError
from lesion.geometry.damage_set import parse_delete
from lesion.geometry.recovery import RecoveryProblem, finetune, geodesic, naive, obs_metric, prune_retrain, transitions
from lesion.geometry.rows import ExplicitRows, stacked_rows
from lesion.geometry.trust_region import trust_region_step
from lesion.nets import MLP, build_net
from lesion.train import TrainSettings, train


def dense_solution(A, batch, v, beta, radius):
    """θ(μ) = (β/2) Q (Σ + μ)⁻¹ Qᵀ v from the eigen-decomposition of the dense g, μ by brentq."""
    g = A.T @ A / batch
    s, Q = np.linalg.eigh(g)
    c = Q.T @ v

    def theta(mu):
        return beta / 2 * Q @ (c / (s + mu))

    if s.min() > 1e-12 and np.linalg.norm(theta(0.0)) <= radius:
        return theta(0.0), 0.0
    mu = brentq(lambda mu: np.linalg.norm(theta(mu)) - radius, max(0.0, -s.min()) + 1e-14, 1e8, xtol=1e-14,
                rtol=1e-14)
    return theta(mu), mu


@pytest.mark.parametrize(("rows", "n", "radius", "active"), [(5, 12, 0.1, True), (20, 8, 0.05, True),
                                                               (20, 8, 50.0, False), (6, 15, 2.0, True)])
def test_trust_region_matches_dense_solution(rows, n, radius, active):
    rng = np.random.default_rng(rows * n)
    A = rng.standard_normal((rows, n))
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    batch, beta = 4, 1.5
    step = trust_region_step(torch.from_numpy(A), batch, torch.from_numpy(v), beta, radius)
    expected, mu = dense_solution(A, batch, v, beta, radius)
    np.testing.assert_allclose(step.theta.numpy(), expected, rtol=1e-7, atol=1e-10)
    assert step.active == active and step.mu == pytest.approx(mu, rel=1e-6, abs=1e-12)
    assert np.linalg.norm(step.theta.numpy()) <= radius * (1 + 1e-9)
    assert step.metric_length == pytest.approx(float(expected @ (A.T @ A / batch) @ expected), rel=1e-8)
    # an independent optimiser agrees on the objective value
    g = A.T @ A / batch
    res = minimize(lambda t: t @ g @ t - beta * t @ v, np.zeros(n), jac=lambda t: 2 * g @ t - beta * v,
                   constraints=[{"type": "ineq", "fun": lambda t: radius**2 - t @ t, "jac": lambda t: -2 * t}],
                   method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    objective = float(expected @ g @ expected - beta * expected @ v)
    assert objective <= res.fun + 1e-7


def test_inactive_constraint_in_the_range_of_g():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 10))
    v = A.T @ rng.standard_normal(3)  # v in range(Aᵀ) = range(g)
    v /= np.linalg.norm(v)
    step = trust_region_step(torch.from_numpy(A), 2, torch.from_numpy(v), 1e-3, 10.0)
    assert not step.active and step.mu == 0.0
    g = A.T @ A / 2
    np.testing.assert_allclose(step.theta.numpy(), 1e-3 / 2 * np.linalg.pinv(g) @ v, rtol=1e-8, atol=1e-12)


def test_metric_obs_matches_its_dense_formula():
    torch.manual_seed(0)
    model = MLP(5, [6], 3).double().eval()
    x, y = torch.rand(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    damage = parse_delete(model, "units:1:0,2", torch.Generator())
    problem = RecoveryProblem(model, x, y, x, y, damage)
    _, new = obs_metric(problem, batch=8, damping=0.5, seed=0)
    idx = torch.randint(0, 40, (8,), generator=torch.Generator().manual_seed(0))
    A = torch.func.jacrev(problem.flat.outputs_fn(x[idx]))(problem.w0).reshape(-1, problem.flat.n)
    lam = 0.5 * float(torch.trace(A @ A.T)) / 8 / problem.flat.n
    g_inv = torch.linalg.inv(A.T @ A / 8 + lam * torch.eye(problem.flat.n, dtype=torch.float64))
    E = torch.eye(problem.flat.n, dtype=torch.float64)[damage.indices]
    expected = problem.w0 - g_inv @ E.T @ torch.linalg.solve(E @ g_inv @ E.T, problem.w0[damage.indices])
    torch.testing.assert_close(new.double(), expected, atol=1e-12, rtol=1e-10)


def test_mlp_rows_equal_the_explicit_jacobian():
    torch.manual_seed(1)
    model = MLP(5, [6, 4], 3, activation="tanh").double().eval()
    x = torch.rand(7, 5, dtype=torch.float64)
    problem = RecoveryProblem(model, x, torch.zeros(7, dtype=torch.long), x, torch.zeros(7, dtype=torch.long),
                              parse_delete(model, "units:1:0", torch.Generator()))
    rows = problem.flat.jacobian_rows(problem.w0, x)
    explicit = ExplicitRows(torch.func.jacrev(problem.flat.outputs_fn(x))(problem.w0).reshape(-1, problem.flat.n))
    v, u = torch.randn(problem.flat.n, dtype=torch.float64), torch.randn(21, dtype=torch.float64)
    mask = (torch.rand(problem.flat.n) > 0.5).double()
    torch.testing.assert_close(rows.gram(), explicit.gram())
    torch.testing.assert_close(rows.apply(v), explicit.apply(v))
    torch.testing.assert_close(rows.apply_t(u), explicit.apply_t(u))
    torch.testing.assert_close(rows.masked_gram(mask), explicit.masked_gram(mask))


def test_stacked_rows_equal_the_stacked_jacobians_at_their_own_weights():
    # a running metric stacks the rows of minibatches taken at different weights: through the MLP's factors it
    # must equal the autograd Jacobians of each minibatch at its own weights, one above the other
    torch.manual_seed(2)
    model = MLP(5, [6, 4], 3, activation="tanh").double().eval()
    x1, x2 = torch.rand(7, 5, dtype=torch.float64), torch.rand(4, 5, dtype=torch.float64)
    problem = RecoveryProblem(model, x1, torch.zeros(7, dtype=torch.long), x1, torch.zeros(7, dtype=torch.long),
                              parse_delete(model, "units:1:0", torch.Generator()))
    w1 = problem.w0
    w2 = w1 + 0.1 * torch.randn_like(w1)
    stacked = stacked_rows([problem.flat.jacobian_rows(w1, x1), problem.flat.jacobian_rows(w2, x2)])
    dense = torch.cat([torch.func.jacrev(problem.flat.outputs_fn(x))(w).reshape(-1, problem.flat.n)
                       for x, w in ((x1, w1), (x2, w2))])
    explicit = ExplicitRows(dense)
    assert stacked.rows == explicit.rows == 33
    v, u = torch.randn(problem.flat.n, dtype=torch.float64), torch.randn(33, dtype=torch.float64)
    torch.testing.assert_close(stacked.gram(), dense @ dense.T)
    torch.testing.assert_close(stacked.apply(v), dense @ v)
    torch.testing.assert_close(stacked.apply_t(u), dense.T @ u)
    both = stacked_rows([ExplicitRows(dense[:21]), ExplicitRows(dense[21:])])
    torch.testing.assert_close(both.gram(), explicit.gram())


def test_a_running_window_steps_with_the_stacked_metric():
    # geodesic(window=2): step 1 on its minibatch alone, step 2 with g from both minibatches' rows (each at its
    # own weights), batch normalised by their 2b inputs — replayed by hand with dense Jacobians
    torch.manual_seed(3)
    model = MLP(4, [8], 3, activation="relu").double().eval()
    x = torch.rand(40, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    problem = RecoveryProblem(model, x, y, x, y, parse_delete(model, "units:1:0,1,2", torch.Generator()))
    _, w = geodesic(problem, beta=1.0, radius=0.05, batch=6, seed=5, max_steps=2, window=2)
    gen = torch.Generator().manual_seed(5)
    selected = 1.0 - problem.mask
    w_hand, parts = problem.w0.clone(), []
    for _ in range(2):
        gap = -w_hand * selected
        idx = torch.randint(0, len(x), (6,), generator=gen)
        parts.append(torch.func.jacrev(problem.flat.outputs_fn(x[idx]))(w_hand).reshape(-1, problem.flat.n))
        step = trust_region_step(ExplicitRows(torch.cat(parts)), 6 * len(parts), gap / gap.norm(), 1.0,
                                 min(0.05, float(gap.norm())))
        w_hand = w_hand + step.theta
    w_hand = w_hand * problem.mask
    torch.testing.assert_close(w, w_hand)
    _, plain = geodesic(problem, beta=1.0, radius=0.05, batch=6, seed=5, max_steps=2)
    assert not torch.allclose(plain, w_hand)  # the second step differs from [G]'s fresh-minibatch step


def test_paths_chosen_by_validation_accuracy(damaged_problem):
    from lesion.geometry.recovery import VALIDATION_INPUTS, geodesic_best

    p = damaged_problem
    kwargs = {"radius": 0.5, "batch": 16, "max_steps": 60}
    by_length, _ = geodesic_best(p, betas=(0.1, 10.0), **kwargs)
    by_validation, w = geodesic_best(p, betas=(0.1, 10.0), choose="validation", **kwargs)
    paths = by_validation.details["paths"]
    x, y = p.x_train[-VALIDATION_INPUTS:], p.y_train[-VALIDATION_INPUTS:]
    # each path's validation accuracy by hand, and the chosen one is the best of them
    for path in paths:
        _, w_path = geodesic(p, path["beta"], **kwargs)
        outputs = p.flat(x, w_path)
        assert path["validation_accuracy"] == pytest.approx(float((outputs.argmax(1) == y).double().mean()))
    assert by_validation.details["chosen_by"] == "validation"
    best = max(paths, key=lambda q: (q["validation_accuracy"], -q["length"]))
    assert by_validation.details["beta"] == best["beta"]
    assert by_length.details["beta"] == min(paths, key=lambda q: q["length"])["beta"]
    extra = len(paths) * min(VALIDATION_INPUTS, len(p.x_train)) / 3 / len(p.x_train)
    assert by_validation.epoch_equivalents == pytest.approx(by_length.epoch_equivalents + extra)
    with pytest.raises(LesionError, match="length or validation"):
        geodesic_best(p, choose="accuracy")


@pytest.fixture(scope="module")
def damaged_problem():
    data = load("digits")
    model, _ = build_net("mlp1-64", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=20, seed=0))
    damage = parse_delete(model.eval(), "units:1:frac=0.85", torch.Generator().manual_seed(0))
    return RecoveryProblem(model, data.x_train, data.y_train, data.x_test, data.y_test, damage)


def test_geodesic_recovery_lands_on_the_hyperplane_and_beats_naive(damaged_problem):
    p = damaged_problem
    base = naive(p)
    result, w = geodesic(p, beta=1.0, radius=0.5, batch=32, max_steps=300)
    assert bool((w[p.damage.indices] == 0).all())
    assert result.details["residual_before_projection"] <= 1e-3 * float(p.w0[p.damage.indices].norm()) + 1e-9
    assert result.accuracy > base.accuracy + 0.05
    assert result.progress[0] == 0.0 and result.progress[-1] == 1.0
    assert len(result.path_accuracy) == len(result.progress) and result.path_length > 0
    assert result.epoch_equivalents == pytest.approx(result.details["steps"] * 32 * 11 / len(p.x_train))
    untouched = torch.cat([q.detach().reshape(-1) for q in p.model.parameters()])
    torch.testing.assert_close(untouched, p.w0)  # the user's model keeps its weights


def test_baselines_keep_the_damage(damaged_problem):
    p = damaged_problem
    for run in (finetune(p, 1.0), prune_retrain(p, 3, 0.5)):
        result, w = run
        assert bool((w[p.damage.indices] == 0).all()) and 0 <= result.accuracy <= 1
    n = len(p.x_train)  # whole minibatches of 16: 3 rounds of ceil(0.5 n / 16) of them
    assert prune_retrain(p, 3, 0.5)[0].epoch_equivalents == 3 * math.ceil(0.5 * n / 16) * 16 / n


def test_a_fine_tune_after_another_method_runs_without_dropout(damaged_problem, monkeypatch):
    """From naive deletion a fine-tune trains as the network was trained (dropout on); after another method it
    refines the repaired network in eval mode."""
    import lesion.geometry.recovery as recovery

    modes = []
    real = recovery.train_one_cycle

    def recording(model, *args, **kwargs):
        modes.append(model.training)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(recovery, "train_one_cycle", recording)
    p = damaged_problem
    _, plain = finetune(p, 0.1)
    _, after = finetune(p, 0.1, start_weights=p.w0 * p.mask)
    assert modes == [True, False]
    assert bool((after[p.damage.indices] == 0).all())


def test_transitions_delete_and_restore(damaged_problem):
    p = damaged_problem
    keep_1 = p.mask.clone()
    more = parse_delete(p.model, "units:1:frac=0.95", torch.Generator().manual_seed(1))
    keep_2 = keep_1.clone()
    keep_2[more.indices] = 0.0
    stages = transitions(p, [("C2", keep_1), ("C3", keep_2), ("C4", keep_1)], radius=1.0, batch=32, max_steps=100)
    assert [s["stage"] for s in stages] == ["C2", "C3", "C4"]
    assert stages[2]["changed_weights"] == int((keep_1 != keep_2).sum())


def test_cli_recover(tmp_path, capsys):
    from lesion.cli import main
    from lesion.nets import load_model, save_checkpoint

    data = load("digits")
    model, config = build_net("mlp1-48", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=10, seed=0))
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "mlp1-48", config)
    out, plot, fixed = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "fixed.pt"
    assert main(["recover", "--model", str(ckpt), "--data", "digits", "--delete", "units:1:frac=0.75",
                 "--method", "all", "--budget", "1", "--beta", "1", "--json", str(out), "--plot", str(plot),
                 "--out", str(fixed)]) == 0
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"geodesic", "naive", "finetune", "prune-retrain", "obs", "compensate",
                                      "distill", "obs-metric"}  # all but the opt-in geodesic-running
    for r in result["methods"].values():
        assert {"accuracy", "epoch_equivalents", "wall_seconds"} <= r.keys()
    assert result["methods"]["geodesic"]["progress"][-1] == 1.0 and result["methods"]["geodesic"]["path_accuracy"]
    recovered = load_model(str(fixed)).module
    assert int((recovered.fc1.weight.abs().sum(1) == 0).sum()) == 36  # 75% of 48 units deleted
    assert plot.exists()
    naive = result["methods"]["naive"]["accuracy"]
    assert result["below_naive"] == [n for n, r in result["methods"].items() if r["accuracy"] < naive]
    shown = capsys.readouterr().out
    assert ("below naive deletion" in shown) == bool(result["below_naive"]) and "chosen on the test inputs" in shown
    assert main(["recover", "--model", str(ckpt), "--data", "digits", "--delete", "units:9:frac=0.5"]) == 2
    assert main(["recover", "--model", str(ckpt), "--data", "digits", "--delete", "units:1:frac=1.0"]) == 2
    assert "removes all 48 units" in capsys.readouterr().err
    assert main(["recover", "--model", str(ckpt), "--data", "digits", "--delete", "units:out:count=2"]) == 2
    assert "gives the network's outputs" in capsys.readouterr().err  # not a residual add, as it said
    assert main(["recover", "--model", str(ckpt), "--data", "digits", "--delete", "heads:1:0"]) == 2
    assert "this model has no attention module" in capsys.readouterr().err
    assert main(["recover", "--model", str(ckpt), "--data", "digits", "--delete", "units:1:count=4", "--method",
                 "compensate", "--calibration", "100000"]) == 0
    assert f"more than the {len(data.x_train)} training inputs: all of them are used" in capsys.readouterr().out
    # a model from the user's own factory comes back in their format: a state dict for that factory (a pickled
    # module would need the factory's package to unpickle, and is not what they gave)
    (tmp_path / "tinyfactory.py").write_text("import torch\n\ndef net():\n    torch.manual_seed(0)\n    return "
                                             "torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 24), "
                                             "torch.nn.ReLU(), torch.nn.Linear(24, 10))\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import tinyfactory

        trained = tinyfactory.net()
        train(trained, data.x_train, data.y_train, TrainSettings(epochs=5, seed=0))
        torch.save(trained.state_dict(), tmp_path / "w.pt")
        assert main(["recover", "--model", "tinyfactory:net", "--weights", str(tmp_path / "w.pt"), "--data", "digits",
                     "--delete", "units:1:frac=0.5", "--method", "compensate", "--out", str(fixed)]) == 0
        assert "--model tinyfactory:net --weights" in capsys.readouterr().out
        again = load_model("tinyfactory:net", str(fixed)).module
        assert int((again[1].weight.abs().sum(1) == 0).sum()) == 12 and not torch.equal(again[3].weight,
                                                                                          trained[3].weight)
    finally:
        sys.path.remove(str(tmp_path))
    assert main(["recover", "--model", str(ckpt), "--data", "digits", "--delete", "nonsense"]) == 2


def test_a_fine_tune_of_a_batch_norm_model_is_the_network_it_reports():
    # the fine-tune runs on a private copy; the result is scored (and saved) with the model's own running
    # statistics, so the copy must not train against statistics of its own
    torch.manual_seed(0)
    x = torch.randn(700, 6)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long() + (x[:, 3] > 1).long()
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 12),
                                torch.nn.BatchNorm1d(12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    train(model, x[:400], y[:400], TrainSettings(epochs=5, seed=0))
    model.eval()
    damage = parse_delete(model, "units:1:count=10", torch.Generator().manual_seed(0), x[400:402])
    problem = RecoveryProblem(model, x[:400], y[:400], x[400:], y[400:], damage)
    loaded = []
    load = problem.load
    problem.load = lambda w: loaded.append(load(w)) or loaded[-1]
    result, _ = finetune(problem, 1.0)
    trained = loaded[0].eval()  # the copy the fine-tune trained
    with torch.no_grad():
        own = float((trained(x[400:]).argmax(1) == y[400:]).double().mean())
    assert result.accuracy == own
    assert torch.equal(trained[3].running_mean, model[3].running_mean)


class _TokenNet(torch.nn.Module):
    """Per-token logits over a 7-token vocabulary: (N, 5) ids → (N, 5, 7)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc1, self.act, self.out = (torch.nn.Embedding(7, 6), torch.nn.Linear(6, 8), torch.nn.ReLU(),
                                                  torch.nn.Linear(8, 7))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc1(self.emb(ids))))


def test_geodesic_on_a_token_model_averages_the_metric_over_tokens():
    """g of a sequence model averages over (input, token) pairs (SPEC §3.1, as `MetricOperator`): one geodesic
    step against a dense float64 Jacobian and a direct trust-region solve, with g = AᵀA/(b·T) (it used AᵀA/b, a
    metric T times too large); its path length θᵀgθ; its compute, a backward per row (b·(T·V + 1) examples)."""
    from torch.func import functional_call

    from lesion.nets.outputs import logits_view

    torch.manual_seed(0)
    raw = _TokenNet().eval()
    x = torch.randint(0, 7, (150, 5), generator=torch.Generator().manual_seed(1))
    y = (x + 1) % 7
    model = logits_view(raw)
    damage = parse_delete(model, "units:act:1,4", torch.Generator().manual_seed(0), x[:2])
    problem = RecoveryProblem(model, x, y, x[:20], y[:20], damage)
    b, tokens, vocab = 8, 5, 7
    result, w1 = geodesic(problem, beta=1.0, radius=1.0, batch=b, seed=0, max_steps=1)
    idx = torch.randint(0, len(x), (b,), generator=torch.Generator().manual_seed(0))  # the step's minibatch
    names = [n for n, _ in raw.named_parameters()]
    shapes = [p.shape for _, p in raw.named_parameters()]
    double = copy.deepcopy(raw).double()

    def outputs(flat):
        params, at = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = flat[at:at + shape.numel()].view(shape)
            at += shape.numel()
        return functional_call(double, params, (x[idx],)).reshape(-1)

    w0 = problem.w0.double()
    A = torch.autograd.functional.jacobian(outputs, w0)
    assert A.shape[0] == b * tokens * vocab
    g = A.T @ A / (b * tokens)
    selected = 1.0 - problem.mask.double()
    gap = -w0 * selected
    v, radius = gap / gap.norm(), min(1.0, float(gap.norm()))
    eye = torch.eye(len(g), dtype=torch.float64)
    lo, hi = 0.0, 1.0  # the smallest μ with ‖θ(μ)‖ ≤ radius, θ(μ) = (β/2)(g + μI)⁻¹v, by bisection
    while torch.linalg.solve(g + hi * eye, v).norm() / 2 > radius:
        lo, hi = hi, hi * 10
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if torch.linalg.solve(g + mid * eye, v).norm() / 2 > radius else (lo, mid)
    theta = torch.linalg.solve(g + hi * eye, v) / 2
    torch.testing.assert_close(w1.double(), (w0 + theta) * (1 - selected), atol=2e-5, rtol=0)
    assert result.path_length == pytest.approx(float(theta @ g @ theta), rel=1e-3)
    assert result.epoch_equivalents == pytest.approx(b * (tokens * vocab + 1) / len(x))


def test_trust_region_on_float32_rows_forms_its_products_in_float64():
    """Explicit float32 Jacobian rows of a rank-deficient A with a wide spectrum: the step equals the one from the
    same rows held in float64 (products in float64 either way). A Gram matrix formed in float32 carries noise of
    λ_max·rows·1e-7, far above the small genuine eigenvalues, and 1/λ amplified it into the step."""
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(80, 80, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(300, 80, generator=g, dtype=torch.float64))
    s = torch.logspace(2, -3, 80, dtype=torch.float64)
    s[70:] = 0.0  # rank 70 of 80 rows
    A32 = ((U * s) @ V.T).float()
    v = torch.randn(300, generator=g, dtype=torch.float64)
    v /= v.norm()
    for radius in (1.0, 100.0):
        exact = trust_region_step(A32.double(), 8, v, 1.0, radius)
        step = trust_region_step(A32, 8, v, 1.0, radius)
        assert float((step.theta - exact.theta).norm() / exact.theta.norm()) < 1e-6
        assert step.mu == pytest.approx(exact.mu, rel=1e-6, abs=1e-12)


def test_int32_labels_give_the_figures_of_int64_ones():
    """Labels of another integer type (int32 from a user's array) are class indices everywhere: a deletion curve,
    the measured break-down and recovery (fine-tuning too) give the int64 labels' figures (they raised a
    traceback in cross-entropy)."""
    from lesion.geometry.breakdown import deletion_curve
    from lesion.geometry.breakdown_predict import measured_breakdown

    data = load("digits")
    model, _ = build_net("mlp:16", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=3, seed=0))
    model.eval()
    figures = []
    for cast in (torch.long, torch.int32):
        y_train, y_test = data.y_train.to(cast), data.y_test.to(cast)
        curve = deletion_curve(model, data.x_test, y_test, "act1", (0, 0.5), orders=1).accuracy
        measured = measured_breakdown(model, data.x_test, y_test, "act1").fraction
        damage = parse_delete(model, "units:act1:3", torch.Generator(), data.x_test[:2])
        problem = RecoveryProblem(model, data.x_train, y_train, data.x_test, y_test, damage)
        figures.append((curve, measured, problem.evaluate(problem.w0), finetune(problem, 0.2)[0].accuracy))
    assert figures[0] == figures[1]


def test_fine_tuning_counts_the_examples_it_trained_on():
    """A fine-tune runs whole minibatches of 16, at least one a round: asked for 0.003 epoch of 40 inputs it
    trains on 16 (0.4 epoch), and reported 0.003; prune-retrain of 4 rounds likewise."""
    from lesion.geometry.recovery import FINETUNE_BATCH, finetune, prune_retrain

    torch.manual_seed(3)
    model = MLP(4, [8], 3, activation="relu").eval()
    x = torch.rand(40, 4)
    y = torch.randint(0, 3, (40,))
    problem = RecoveryProblem(model, x, y, x, y, parse_delete(model, "units:1:0,1,2,3", torch.Generator()))
    assert finetune(problem, 0.003)[0].epoch_equivalents == FINETUNE_BATCH / 40
    assert finetune(problem, 2.0)[0].epoch_equivalents == 2.0  # 80 examples: 5 whole minibatches
    assert prune_retrain(problem, 4, 0.01)[0].epoch_equivalents == 4 * FINETUNE_BATCH / 40
