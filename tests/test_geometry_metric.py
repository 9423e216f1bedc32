"""The metric tensor (SPEC §3.1–3.2): operator, Gram route and a dense float64 JᵀJ built with plain autograd."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lesion.geometry.metric import MetricOperator
from lesion.geometry.spectrum import spectrum, top_eigenpairs, trace_exact, trace_hutchinson
from lesion.nets import MLP, ConvNet

REL = 1e-6


def dense_reference(model: nn.Module, x: torch.Tensor, output: str = "raw") -> torch.Tensor:
    """mean_x J_xᵀ J_x with J_x from torch.autograd.grad, one output at a time, in float64."""
    model = copy.deepcopy(model).double().eval()
    params = [p for p in model.parameters()]
    rows = []
    for xi in x.double():
        out = model(xi.unsqueeze(0))[0]
        if output == "softmax":
            out = torch.softmax(out, dim=0)
        for k in range(out.shape[0]):
            grads = torch.autograd.grad(out[k], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    J = torch.stack(rows)
    return J.T @ J / len(x)


def nets():
    torch.manual_seed(0)
    mlp = MLP(5, [6, 4], 3, activation="tanh").double()
    relu = MLP(4, [7], 3, activation="relu", bias=False).double()
    sig = MLP(4, [5], 2, activation="sigmoid", k=2.0).double()
    cnn = ConvNet(1, 6, 3, (3, "M", 4), (5,)).double()
    return [("mlp-tanh", mlp, torch.rand(9, 5, dtype=torch.float64)),
            ("mlp-relu-nobias", relu, torch.rand(8, 4, dtype=torch.float64) - 0.3),
            ("mlp-sigmoid", sig, torch.rand(7, 4, dtype=torch.float64)),
            ("cnn", cnn, torch.rand(6, 1, 6, 6, dtype=torch.float64))]


@pytest.mark.parametrize(("name", "model", "x"), nets(), ids=[n for n, _, _ in nets()])
@pytest.mark.parametrize("output", ["raw", "softmax"])
def test_operator_gram_and_dense_agree(name, model, x, output):
    G = dense_reference(model, x, output)
    op = MetricOperator(model.eval(), x, output)
    assert op.n == G.shape[0]
    v = torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(op.matvec(v), G @ v, rtol=REL, atol=REL * float((G @ v).abs().max()))
    sv = op.to_scipy().matvec(v.numpy())
    np.testing.assert_allclose(sv, (G @ v).numpy(), rtol=REL, atol=REL * float((G @ v).abs().max()))
    assert op.quadratic(v) == pytest.approx(float(v @ G @ v), rel=REL)
    # all nonzero eigenvalues from the Gram route equal the dense ones
    dense = torch.linalg.eigvalsh(G).flip(0).numpy()
    s = spectrum(op, tau=1e-3)
    k = s.rank
    assert k == int((dense > dense[0] * 1e-10).sum())
    np.testing.assert_allclose(s.eigenvalues[:k], dense[:k], rtol=REL, atol=REL * dense[0])
    assert s.trace == pytest.approx(float(torch.trace(G)), rel=REL)
    assert s.rho == pytest.approx(float((dense > 1e-3).sum()) / op.n)
    # eigenvectors from the Gram route satisfy g v = λ v
    top = min(3, k)
    values, vectors, route = top_eigenpairs(op, top, "gram")
    assert route == "gram"
    for lam, vec in zip(values, vectors.T, strict=True):
        torch.testing.assert_close(G @ vec, lam * vec, rtol=REL, atol=REL * float(dense[0]))
        assert float(vec.norm()) == pytest.approx(1.0)
    lanczos, lvec, _ = top_eigenpairs(op, top, "lanczos")
    np.testing.assert_allclose(lanczos, values, rtol=1e-6)


def test_trace_routes_and_gaussian_response():
    _, model, x = nets()[0]
    op = MetricOperator(model.eval(), x)
    G = dense_reference(model, x)
    exact = trace_exact(op)
    assert exact == pytest.approx(float(torch.trace(G)), rel=REL)
    estimate, (lo, hi) = trace_hutchinson(op, samples=400, seed=0)
    assert lo <= exact <= hi
    # [G] Eq. 9: E[duᵀ g du] = (σ²/n) tr g for du ~ N(0, σ²/n I); Monte Carlo with a 5-standard-error band
    sigma, n = 0.3, op.n
    gen = torch.Generator().manual_seed(3)
    values = [op.quadratic(torch.randn(n, dtype=torch.float64, generator=gen) * sigma / n**0.5) for _ in range(3000)]
    mean, se = np.mean(values), np.std(values) / np.sqrt(len(values))
    assert abs(mean - sigma**2 / n * exact) < 5 * se


def test_eigenvector_count_and_float32_route():
    torch.manual_seed(1)
    model = MLP(10, [8], 4).eval()
    x = torch.rand(30, 10)
    op = MetricOperator(model, x)
    s = spectrum(op)
    assert s.rank <= 4 * 30 and s.parameters == sum(p.numel() for p in model.parameters())
    assert s.eigenvalues == sorted(s.eigenvalues, reverse=True)


def test_response_helpers_follow_the_metric():
    from lesion.geometry.response import gaussian_expectation, small_perturbation_response

    _, model, x = nets()[0]
    op = MetricOperator(model.eval(), x)
    check = gaussian_expectation(op, 0.5, trace_exact(op), samples=400)
    assert check["ci"][0] <= check["predicted"] <= check["ci"][1]
    rows = small_perturbation_response(op, sigmas=(1e-4, 1e-1), directions=5)
    assert rows[0]["relative_gap"] < 1e-3 and rows[0]["relative_gap"] < rows[1]["relative_gap"]


def test_top_only_spectrum_of_an_mlp_has_the_exact_trace_from_the_factor_diagonal():
    from lesion.geometry.gram import MLPGramProduct, gram_matrix

    torch.manual_seed(3)
    model = MLP(6, [7, 5], 3, activation="tanh").double().eval()
    x = torch.rand(20, 6, dtype=torch.float64)
    op = MetricOperator(model, x)
    K = gram_matrix(op)
    torch.testing.assert_close(MLPGramProduct(op.flat.mlp, x).diagonal(), torch.diagonal(K), rtol=1e-12, atol=1e-12)
    top = spectrum(op, top=4, full=False)
    assert top.trace == pytest.approx(trace_exact(op), rel=1e-12) and top.extra["trace_method"].startswith("exact")
    assert top.eigenvalues == pytest.approx(spectrum(op, full=True).eigenvalues[:4], rel=1e-8)


def test_the_cost_estimate_counts_the_trace_products_the_spectrum_spends():
    """`trace_products` (in `lesion spectrum`'s time estimate) says 0 where the top-only spectrum reads the trace
    off the factors and HUTCHINSON_SAMPLES where it estimates it: counted here on the operator's vᵀgv passes."""
    from lesion.geometry.spectrum import HUTCHINSON_SAMPLES, trace_products

    torch.manual_seed(4)
    cases = ((MLP(6, [7], 3, activation="tanh").double().eval(), torch.rand(10, 6, dtype=torch.float64)),
             (ConvNet(1, 6, 3, (3, "M", 4), (5,)).double().eval(), torch.rand(4, 1, 6, 6, dtype=torch.float64)))
    for model, x in cases:
        op = MetricOperator(model, x)
        hutchinson = trace_products(op)
        assert hutchinson in (0, HUTCHINSON_SAMPLES)
        calls: list[int] = []
        original = op.quadratic
        op.quadratic = lambda v, original=original, calls=calls: calls.append(1) or original(v)
        result = spectrum(op, top=2, full=False, method="lanczos")
        assert result.extra["trace_method"].startswith("hutchinson" if hutchinson else "exact")
        assert len(calls) == hutchinson  # one vᵀgv a Rademacher vector, none from the factors
    assert hutchinson == HUTCHINSON_SAMPLES  # the CNN has no MLP factors


def test_activation_derivatives_in_closed_form_match_autograd():
    # the closed forms used by the layer factors (ReLU's derivative at 0 is 0, as autograd takes it)
    from lesion.geometry.gram import _activation_derivative
    from lesion.nets.activations import ScaledReLU, ScaledSigmoid

    z = torch.randn(200, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z[0, :5] = 0.0
    for act in [torch.nn.ReLU(), torch.nn.ReLU(inplace=True), ScaledReLU(2.0), torch.nn.Sigmoid(),
                ScaledSigmoid(3.0), torch.nn.Tanh(), torch.nn.Identity(), torch.nn.GELU(), torch.nn.ELU()]:
        leaf = z.clone().requires_grad_()
        out = act(leaf + 0)
        (reference,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
        torch.testing.assert_close(_activation_derivative(act, z), reference, rtol=1e-12, atol=1e-15)


def test_eigenvectors_beyond_the_rank_lie_in_the_null_space():
    # two distinct inputs, each twice: rank 6 (2 inputs × 3 outputs); the Gram route's vectors for the zero
    # eigenvalues were A^T u of rounding noise, neither null nor orthogonal to the others
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(2, 4, dtype=torch.float64).repeat(2, 1)
    g = dense_reference(model, x)
    values, vectors, _ = top_eigenpairs(MetricOperator(model, x), 9, method="gram")
    reference = np.linalg.eigvalsh(g.numpy())[::-1]
    assert np.allclose(values, reference[:9], atol=1e-10)
    assert torch.allclose(vectors.T @ vectors, torch.eye(9, dtype=torch.float64), atol=1e-10)
    assert float((g @ vectors[:, 6:]).abs().max()) < 1e-10


def _small_cnn(inputs: int, seed: int = 5) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    return ConvNet(1, 6, 3, (3, "M", 4), (5,)).double().eval(), torch.rand(inputs, 1, 6, 6, dtype=torch.float64)


def test_hutchinson_trace_of_the_spectrum_follows_the_seed():
    """spectrum(seed=) draws the trace's Rademacher vectors from that seed: two seeds differ, a seed repeats,
    each is `trace_hutchinson` at that seed, and the dense trace lies in each interval."""
    model, x = _small_cnn(6)
    op = MetricOperator(model, x)
    exact = float(torch.trace(dense_reference(model, x)))
    one, two, again = (spectrum(op, top=2, full=False, method="lanczos", seed=s) for s in (1, 2, 1))
    assert one.trace != two.trace and one.trace == again.trace
    assert (one.trace, two.trace) == (trace_hutchinson(op, seed=1)[0], trace_hutchinson(op, seed=2)[0])
    assert one.extra["trace_seed"] == 1 and two.extra["trace_seed"] == 2
    for s in (one, two):
        assert s.extra["trace_ci"][0] <= exact <= s.extra["trace_ci"][1]


def test_top_only_spectrum_on_the_generic_gram_route_has_the_exact_trace():
    """A model that is not an MLP, on the Gram route: K is formed from the stacked Jacobians, so the trace is
    its diagonal's sum (it was Hutchinson's estimate, 3% off on a CNN of digits), equal to the dense trace."""
    from lesion.geometry.spectrum import route_for

    model, x = _small_cnn(6)
    op = MetricOperator(model, x)
    assert op.flat.mlp is None and route_for(op, "auto") == "gram"
    G = dense_reference(model, x)
    top = spectrum(op, top=3, full=False)
    assert top.method == "gram" and top.extra["trace_method"].startswith("exact") and "trace_ci" not in top.extra
    assert top.trace == pytest.approx(float(torch.trace(G)), rel=1e-10)
    np.testing.assert_allclose(top.eigenvalues, torch.linalg.eigvalsh(G).flip(0)[:3].numpy(), rtol=1e-8)


def test_all_eigenvalues_with_the_automatic_route_take_the_gram_route_where_it_can_be_built():
    """--all with method auto on a model that is not an MLP, above the rows the top-K route sends to Gram: every
    nonzero eigenvalue by the Gram route (it was refused with "use fewer inputs"), as with method gram."""
    from lesion.geometry.spectrum import GENERIC_GRAM_ROWS, route_for

    model, x = _small_cnn(180)
    op = MetricOperator(model, x)
    assert op.inputs * op.m > GENERIC_GRAM_ROWS and route_for(op, "auto") == "lanczos"
    auto, gram = spectrum(op, full=True), spectrum(op, full=True, method="gram")
    assert auto.method == "gram" and auto.all_nonzero and auto.rank == gram.rank
    assert auto.eigenvalues == gram.eigenvalues and auto.trace == gram.trace


def test_all_eigenvalues_refusals_say_what_is_wrong_and_what_to_pass(monkeypatch):
    from lesion.errors import LesionError
    from lesion.geometry import spectrum as spectrum_module

    torch.manual_seed(7)
    mlp = MLP(4, [3], 3).double().eval()
    with pytest.raises(LesionError, match="--method lanczos gives only the top eigenvalues: pass --method gram"):
        spectrum(MetricOperator(mlp, torch.rand(5, 4, dtype=torch.float64)), full=True, method="lanczos")
    big = MetricOperator(mlp, torch.rand(4001, 4, dtype=torch.float64))  # 12,003 rows of K
    with pytest.raises(LesionError, match=r"12,003 rows .*above the automatic route's limit of 12,000 rows: use "
                                          r"--inputs 4,000 or fewer, pass --method gram to build K anyway, or drop "
                                          r"--all") as refused:
        spectrum(big, full=True)
    assert "\n" not in str(refused.value)
    model, x = _small_cnn(6)
    op = MetricOperator(model, x)
    monkeypatch.setattr(spectrum_module, "JACOBIAN_MEMORY", 3 * op.m * op.n * 8)  # room for 3 inputs' rows
    with pytest.raises(LesionError, match=r"stacked Jacobian rows .*: use --inputs 3 or fewer, or drop --all"):
        spectrum(op, full=True)


def test_top_eigenvalues_are_clamped_to_the_rank_bound():
    """g = JᵀJ has rank at most m·|X| = 27 here: --top 40 on the operator route computes the top 27 (it gave
    40, the last 13 rounding noise), equal to the dense ones, and says so in `extra`."""
    _, model, x = nets()[0]
    op = MetricOperator(model.eval(), x)
    s = spectrum(op, top=40, full=False, method="lanczos")
    assert len(s.eigenvalues) == 27 and s.extra["top_clamped"] == {"asked": 40, "computed": 27, "rank_bound": 27}
    dense = torch.linalg.eigvalsh(dense_reference(model, x)).flip(0)[:27].numpy()
    np.testing.assert_allclose(s.eigenvalues, dense, rtol=1e-6, atol=1e-8 * dense[0])


def test_top_only_spectrum_of_an_mlp_forced_onto_the_gram_route_has_the_exact_trace(monkeypatch):
    """--method gram above the automatic limit: the layer factors the Lanczos on K uses give diag K, so the
    trace is exact there too (it was Hutchinson's estimate)."""
    from lesion.geometry import spectrum as spectrum_module

    _, model, x = nets()[0]
    op = MetricOperator(model.eval(), x)
    monkeypatch.setattr(spectrum_module, "GRAM_LIMIT", op.inputs * op.m - 1)  # above it, as a large |X| would be
    s = spectrum(op, top=3, full=False, method="gram")
    assert s.method == "gram" and s.extra["trace_method"].startswith("exact")
    assert s.trace == pytest.approx(float(torch.trace(dense_reference(model, x))), rel=1e-10)
