"""Break-down geometry (SPEC §3.5): the covariant acceleration against finite differences and against a dense
float64 computation with the Christoffel symbols of the pseudo-inverse metric on tiny networks."""

import pytest
import torch

from lesion.geometry.metric import MetricOperator
from lesion.geometry.paths import output_derivatives, path_point, predicted_breakdown, straight_path
from lesion.nets import MLP


def tiny(inputs: int, widths=(4,), seed: int = 0):
    torch.manual_seed(seed)
    model = MLP(3, list(widths), 2, activation="tanh").double().eval()
    x = torch.rand(inputs, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return model, x


def test_second_derivative_matches_finite_differences():
    model, x = tiny(5)
    op = MetricOperator(model, x)
    w_end = op.weights * (torch.rand(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) > 0.5)
    gamma, vel, acc = straight_path(op.weights, w_end)
    f = op.outputs_fn(x)
    for t in (0.0, 0.4, 0.9):
        dF, d2F = output_derivatives(op, gamma(t), vel(t), acc(t))
        h = 1e-4
        fd1 = (f(gamma(t + h)) - f(gamma(t - h))) / (2 * h)
        fd2 = (f(gamma(t + h)) - 2 * f(gamma(t)) + f(gamma(t - h))) / h**2
        torch.testing.assert_close(dF, fd1, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(d2F, fd2, rtol=1e-4, atol=1e-6)
        point = path_point(op, t, gamma, vel, acc)
        # full row rank (10 outputs ≤ 22 weights, generic): the projection is the identity
        assert point.covariant_acceleration == pytest.approx(float(fd2.norm() / 5**0.5), rel=1e-4)
        assert point.speed == pytest.approx(float((fd1**2).sum() / 5), rel=1e-6)


def christoffel_reference(op: MetricOperator, w: torch.Tensor, velocity: torch.Tensor) -> float:
    """‖∇_γ'γ'‖_g for a straight path (γ'' = 0): ∇^k = Γ^k_ij γ'^i γ'^j with Γ^k_ij = ½ g⁺^{kl}(∂_i g_jl + ∂_j g_il
    − ∂_l g_ij), g from dense Jacobians, its derivatives by autograd, all in float64."""

    def metric(weights):
        J = torch.func.jacrev(op.outputs_fn(op.x))(weights).reshape(-1, len(weights))
        return J.T @ J / op.inputs

    g = metric(w)
    dg = torch.func.jacrev(metric)(w)  # dg[i, j, l] = ∂_l g_ij
    lower = 0.5 * (torch.einsum("jli,i,j->l", dg, velocity, velocity)
                   + torch.einsum("ilj,i,j->l", dg, velocity, velocity)
                   - torch.einsum("ijl,i,j->l", dg, velocity, velocity))
    nabla = torch.linalg.pinv(g, hermitian=True, rtol=1e-10) @ lower
    return float((nabla @ g @ nabla).sqrt())


@pytest.mark.parametrize(("inputs", "widths"), [(2, (4,)), (20, (2,)), (3, (3, 2))])
def test_covariant_acceleration_equals_christoffel_computation(inputs, widths):
    """Rank-deficient metrics (few inputs: g singular, pseudo-inverse) and rank-deficient Jacobians (many
    inputs: J without full row rank, projection needed)."""
    model, x = tiny(inputs, widths, seed=inputs)
    op = MetricOperator(model, x)
    w_end = op.weights * (torch.rand(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) > 0.4)
    gamma, vel, acc = straight_path(op.weights, w_end)
    for t in (0.2, 0.7):
        ours = path_point(op, t, gamma, vel, acc).covariant_acceleration
        reference = christoffel_reference(op, gamma(t), vel(t))
        assert ours == pytest.approx(reference, rel=1e-6, abs=1e-10)


def test_predicted_breakdown_reads_the_first_spike():
    t = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert predicted_breakdown(t, [1.0, 2.0, 5.0, 30.0, 50.0], factor=10) == 0.75
    assert predicted_breakdown(t, [1.0, 1.0, 1.0, 1.0, 1.0]) is None


def test_range_projection_is_refused_before_forming_a_gram_matrix_too_large_to_decompose():
    from torch import nn

    from lesion.errors import LesionError
    from lesion.geometry.metric import MetricOperator
    from lesion.geometry.paths import range_projection

    class Net(nn.Module):  # not an MLP of SPEC §2.2: the autograd route, at most 500 rows
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 5)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = Net()
    small, large = MetricOperator(model, torch.randn(100, 3)), MetricOperator(model, torch.randn(101, 3))
    vectors = torch.randn(100, 5)
    projected = range_projection(small, small.weights, vectors)
    assert projected.shape == vectors.shape
    with pytest.raises(LesionError, match="505 output rows"):
        range_projection(large, large.weights, torch.randn(101, 5))
