"""Reference networks: shapes, parameter counts (closed forms), activations' Lipschitz constants."""

import math

import pytest
import torch
from torch import nn

from lesion.errors import LesionError
from lesion.nets import MLP, ScaledReLU, ScaledSigmoid, build_net, lipschitz_constant, output_bound


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_params(c_in: int, c_out: int) -> int:
    return c_in * c_out * 9 + c_out


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("mlp2", None, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
        ("mlp1-400", None, 784 * 400 + 400 + 400 * 10 + 10),
        ("mlp1-48", None, 784 * 48 + 48 + 48 * 10 + 10),
        ("mlp:20,30,40", None, 784 * 20 + 20 + 20 * 30 + 30 + 30 * 40 + 40 + 40 * 10 + 10),
        ("random-0", None, 4 * 4 * 4 + 4 * 1),
        ("cnn", None, conv_params(1, 16) + conv_params(16, 16) + conv_params(16, 32) + conv_params(32, 32)
         + 32 * 7 * 7 * 128 + 128 + 128 * 10 + 10),
        ("vgg11", (3, 32, 32), conv_params(3, 64) + conv_params(64, 128) + conv_params(128, 256)
         + conv_params(256, 256) + conv_params(256, 512) + 3 * conv_params(512, 512)
         + 512 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10),
    ],
)
def test_preset_parameter_counts_and_output_shapes(name, shape, expected):
    model, _ = build_net(name, shape)
    assert count(model) == expected
    in_shape = shape or ((4,) if name.startswith("random") else (1, 28, 28))
    out = model(torch.zeros(3, *in_shape))
    assert out.shape == (3, 1 if name.startswith("random") else 10)


def test_lenet_300_100_has_266610_parameters():
    assert count(build_net("mlp2")[0]) == 266_610


def test_vgg11_count_is_the_documented_figure():
    assert count(build_net("vgg11", (3, 32, 32))[0]) == 9_750_922


def test_random_nets_follow_R_weight_law():
    weights = torch.cat([torch.cat([p.flatten() for p in build_net(f"random-{r}")[0].parameters()])
                         for r in range(200)]).detach()
    assert weights.numel() == 200 * 68
    # N(1, 5²): the standard error of the mean is 5/sqrt(13600) ≈ 0.043
    assert abs(float(weights.mean()) - 1.0) < 0.2
    assert abs(float(weights.std()) - 5.0) < 0.15
    model = build_net("random-3")[0]
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [4, 4, 4, 4, 1]


def test_random_nets_are_seeded_by_R():
    a, b, c = (torch.cat([p.flatten() for p in build_net(n)[0].parameters()])
               for n in ("random-5", "random-5", "random-6"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(99)
    before = torch.rand(1)
    torch.manual_seed(99)
    m1, _ = build_net("mlp2", seed=7)
    after = torch.rand(1)
    m2, _ = build_net("mlp2", seed=7)
    m3, _ = build_net("mlp2", seed=8)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters(), strict=True))
    assert not torch.equal(m1.fc1.weight, m3.fc1.weight)


def max_slope(act: nn.Module, lo: float = -20.0, hi: float = 20.0, n: int = 400_001) -> float:
    s = torch.linspace(lo, hi, n, dtype=torch.float64)
    y = act(s)
    return float(((y[1:] - y[:-1]) / (s[1:] - s[:-1])).abs().max())


@pytest.mark.parametrize("k", [0.25, 1.0, 3.0])
def test_relu_k_lipschitz_constant_is_k(k):
    act = ScaledReLU(k)
    assert lipschitz_constant(act) == k
    assert max_slope(act) == pytest.approx(k, rel=1e-9)
    assert torch.equal(act(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0 * k]))
    assert output_bound(act) is None


@pytest.mark.parametrize("k", [0.5, 1.0, 4.0])
def test_sigmoid_k_lipschitz_constant_is_k_over_4(k):
    act = ScaledSigmoid(k)
    assert lipschitz_constant(act) == k / 4
    assert max_slope(act) == pytest.approx(k / 4, rel=1e-6)
    assert float(act(torch.tensor(0.7))) == pytest.approx(1 / (1 + math.exp(-0.7 * k)))
    assert output_bound(act) == 1.0


def test_tanh_and_builtin_activations():
    assert lipschitz_constant(nn.Tanh()) == 1.0 == pytest.approx(max_slope(nn.Tanh()), rel=1e-6)
    assert lipschitz_constant(nn.Sigmoid()) == 0.25
    assert lipschitz_constant(nn.LeakyReLU(0.1)) == 1.0
    assert lipschitz_constant(nn.GELU()) is None


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_mlp_structure_matches_a_hand_written_forward(activation):
    model = MLP(6, [5, 4], 3, activation=activation, k=2.0 if activation != "tanh" else 1.0)
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(0))
    phi = {"relu": lambda s: torch.relu(2.0 * s), "sigmoid": lambda s: torch.sigmoid(2.0 * s),
           "tanh": torch.tanh}[activation]
    h = phi(x @ model.fc1.weight.T + model.fc1.bias)
    h = phi(h @ model.fc2.weight.T + model.fc2.bias)
    expected = h @ model.out.weight.T + model.out.bias
    torch.testing.assert_close(model(x), expected)


def test_mlp_without_bias_and_dropout_only_in_training():
    model = MLP(10, [50], 2, bias=False, dropout=0.5)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    x = torch.randn(4, 10)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))


def test_bad_preset_arguments_are_lesion_errors():
    for name in ("mlp3", "mlp:0,3", "mlp:a"):
        with pytest.raises(LesionError):
            build_net(name)
    with pytest.raises(LesionError, match="4 inputs"):
        build_net("random-1", (1, 28, 28))
    with pytest.raises(LesionError, match="square images"):
        build_net("cnn", (784,))
    with pytest.raises(LesionError):
        build_net("mlp2", activation="swish")
