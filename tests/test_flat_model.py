"""The functional-model layer (SPEC §0): f(x, w) against the model's own forward, the output count found by one
probe, a private copy for `load`, and the Jacobian rows of the cached route against dense float64 autograd."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import zoo
from lesion.geometry import flat as flat_module
from lesion.geometry.flat import FlatModel
from lesion.geometry.metric import MetricOperator
from lesion.geometry.rows import ExplicitRows, MLPRows
from lesion.nets import MLP
from lesion.nets.outputs import logits_view

TOKENS = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(6))


class ReluNet(nn.Module):
    """An MLP written as a class, its activation a function (not a chain: the autograd route)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 7), nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class TokenTagger(nn.Module):
    """One output row per (input, token): (batch, tokens, vocabulary) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(97, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.embed(ids)))


def cases():
    torch.manual_seed(0)
    tagger = TokenTagger().double().eval()
    return [("mlp", MLP(5, [6, 4], 3, activation="tanh").double().eval(), torch.rand(6, 5, dtype=torch.float64),
             1, 3),
            ("class", ReluNet().double().eval(), torch.rand(6, 5, dtype=torch.float64) - 0.3, 1, 3),
            ("encoder", zoo.encoder().double(), TOKENS, 1, 6),
            ("tokens", logits_view(tagger), TOKENS[:2, :4], 4, 5)]


def own_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).reshape(-1, model(x).shape[-1])


def dense_rows(model: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A = ∂f(x; w)/∂w, (rows, n), from torch.autograd.functional.jacobian on a copy carrying w."""
    private = copy.deepcopy(model)
    names = [n for n, _ in private.named_parameters()]
    shapes = [p.shape for _, p in private.named_parameters()]

    def f(vector: torch.Tensor) -> torch.Tensor:
        parts, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            parts[name] = vector[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return torch.func.functional_call(private, parts, (x,)).reshape(-1)

    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        return jacobian(f, w).reshape(-1, len(w))


@pytest.mark.parametrize("name, model, x, rows_per_input, m", cases(), ids=[c[0] for c in cases()])
def test_outputs_count_and_weights_match_the_model(name, model, x, rows_per_input, m):
    view = FlatModel(model, x)
    expected_w = parameters_to_vector(model.parameters()).detach()
    assert torch.equal(view.weights, expected_w) and view.n == len(expected_w)
    assert view.dtype == torch.float64 and view.device == expected_w.device
    assert (view.rows_per_input, view.m) == (rows_per_input, m)
    torch.testing.assert_close(view(x, view.weights), own_forward(model, x), rtol=1e-10, atol=1e-10)
    w = view.weights + 0.1 * torch.randn(view.n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    other = copy.deepcopy(model)
    vector_to_parameters(w, other.parameters())
    out = view(x, w)
    assert out.shape == (len(x) * rows_per_input, m)
    torch.testing.assert_close(out, own_forward(other, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name, model, x, rows_per_input, m", cases(), ids=[c[0] for c in cases()])
def test_load_is_a_private_copy_and_the_model_is_unchanged(name, model, x, rows_per_input, m):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean = own_forward(model, x)
    view = FlatModel(model, x)
    w = view.weights * 0.5
    loaded = view.load(w)
    assert loaded is not model and not loaded.training
    torch.testing.assert_close(parameters_to_vector(loaded.parameters()).detach(), w)
    torch.testing.assert_close(own_forward(loaded, x), view(x, w), rtol=1e-10, atol=1e-10)
    view(x, w)
    view.jacobian_rows(w, x[:2])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(own_forward(model, x), clean)


@pytest.mark.parametrize("name, model, x, rows_per_input, m", cases(), ids=[c[0] for c in cases()])
def test_jacobian_rows_of_the_cached_route_match_dense_autograd(name, model, x, rows_per_input, m):
    view = FlatModel(model, x)
    w = view.weights + 0.05 * torch.randn(view.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rows = view.jacobian_rows(w, x)
    assert isinstance(rows, MLPRows if name == "mlp" else ExplicitRows)
    assert (view.mlp is not None) == (name == "mlp")
    A = dense_rows(model, x, w)
    assert rows.rows == A.shape[0] == len(x) * rows_per_input * m
    torch.testing.assert_close(rows.gram(), A @ A.T, rtol=1e-9, atol=1e-11)
    v = torch.randn(view.n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(rows.apply(v), A @ v, rtol=1e-9, atol=1e-11)


def test_the_route_and_the_output_count_are_found_once(monkeypatch):
    calls = []
    real = flat_module.mlp_structure
    monkeypatch.setattr(flat_module, "mlp_structure", lambda model: calls.append(1) or real(model))
    torch.manual_seed(0)
    model = MLP(5, [6], 3).double().eval()
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    x = torch.rand(4, 5, dtype=torch.float64)
    view = FlatModel(model, x)
    assert len(forwards) == 1
    op = MetricOperator.over(view, x)
    moved = op.at(view.weights * 2)
    assert len(forwards) == 1 and (moved.m, moved.rows_per_input, moved.n) == (3, 1, view.n)
    for _ in range(3):
        assert isinstance(view.jacobian_rows(view.weights, x), MLPRows)
    assert isinstance(moved.flat.jacobian_rows(moved.weights, x), MLPRows)
    assert len(calls) == 1
    torch.testing.assert_close(moved.flat.mlp.weights[0], 2 * model.fc1.weight.detach())


def test_a_frozen_layer_leads_to_the_autograd_route():
    """An MLP whose first layer is frozen has trainable parameters out of the weight/bias-per-layer order: the
    factored rows do not apply, the autograd rows over the trainable weights do."""
    torch.manual_seed(0)
    model = MLP(5, [6], 3).double().eval()
    model.fc1.requires_grad_(False)
    x = torch.rand(4, 5, dtype=torch.float64)
    view = FlatModel(model, x)
    assert view.mlp is None and view.n == 6 * 3 + 3
    rows = view.jacobian_rows(view.weights, x)
    assert isinstance(rows, ExplicitRows)
    hidden = model.act1(model.fc1(x)).detach()  # f = W_out h + b_out: row k is (e_k ⊗ h, e_k)
    eye = torch.eye(3, dtype=torch.float64)
    A = torch.cat([torch.cat([torch.kron(eye, h.unsqueeze(0)), eye], dim=1) for h in hidden])
    torch.testing.assert_close(rows.gram(), A @ A.T)


def test_metric_operator_over_a_flat_model_keeps_its_dtype_rules():
    torch.manual_seed(0)
    model = MLP(5, [6], 3).eval()
    x64 = torch.rand(4, 5, dtype=torch.float64)
    assert FlatModel(model, x64).dtype == torch.float64 and FlatModel(model, x64.float()).dtype == torch.float32
    assert FlatModel(zoo.encoder(), TOKENS).dtype == torch.float32
    op = MetricOperator(model, x64)
    assert op.flat.dtype == torch.float64 and op.weights is op.flat.weights and op.layout is op.flat.layout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_everything_the_layer_makes_is_on_the_models_device():
    torch.manual_seed(0)
    for model in (MLP(5, [6], 3).double().eval().cuda(), ReluNet().double().eval().cuda()):
        x = torch.rand(4, 5, dtype=torch.float64, device="cuda")
        view = FlatModel(model, x)
        w = view.weights * 0.5
        rows = view.jacobian_rows(w, x)
        mask = (torch.arange(view.n, device="cuda") % 2).double()
        for t in (view.weights, view(x, w), rows.gram(), rows.apply(w), rows.apply_t(torch.ones(12, device="cuda")),
                  rows.masked_gram(mask), view.stacked_jacobians(w, x)):
            assert t.device.type == "cuda"
        assert next(view.load(w).parameters()).device.type == "cuda"
        op = MetricOperator.over(view, x)
        assert op.time_matvec() > 0 and op.dense().device.type == "cuda"


def test_jacobian_rows_beyond_the_memory_limit_are_refused_with_the_batch_that_fits(monkeypatch):
    from lesion.errors import LesionError
    from lesion.geometry.damage_set import parse_delete
    from lesion.geometry.recovery import RecoveryProblem, check_jacobian_batch, obs_batch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    model.forward = lambda x: model[2](torch.tanh(model[0](x)))  # a class-like model: the autograd route
    x = torch.randn(8, 6)
    flat = FlatModel(model, x)
    row = 3 * flat.n * 4  # one input: m rows of n float32 weights
    assert flat.jacobian_bytes(2) == 2 * row
    monkeypatch.setattr(flat_module, "JACOBIAN_MEMORY", 3 * row)
    assert flat.largest_jacobian_batch() == 3
    assert flat.stacked_jacobians(flat.weights, x[:3]).shape == (9, flat.n)
    with pytest.raises(LesionError, match="use a batch of at most 3 inputs"):
        flat.stacked_jacobians(flat.weights, x[:4])
    y = torch.randint(0, 3, (8,))
    problem = RecoveryProblem(model, x, y, x, y, parse_delete(model, "units:1:0", torch.Generator(), x))
    assert problem.flat.mlp is None and obs_batch(problem) == 3
    check_jacobian_batch(problem, ["geodesic", "obs-metric", "obs"], 3)
    with pytest.raises(LesionError, match="use --batch 3 or less"):
        check_jacobian_batch(problem, ["geodesic"], 4)
    monkeypatch.setattr(flat_module, "JACOBIAN_MEMORY", row - 1)
    with pytest.raises(LesionError, match="too large for Jacobian rows"):
        check_jacobian_batch(problem, ["obs-metric"], 1)
    check_jacobian_batch(problem, ["obs", "compensate"], 1)  # layer-wise: no Jacobian rows


def test_weights_are_float64_for_a_float64_model_and_float32_for_a_half_token_model():
    """The README's advice for the exact rank, `model.double()`, is analysed in float64 even on float32 data (it
    ran in float32); a float16 model over token ids on a float32 copy (it ran in float16, and its Gram matrix
    overflowed); float inputs are cast to the weights' dtype."""
    from lesion.geometry.metric import MetricOperator

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).double()
    x = torch.rand(7, 5)
    view = FlatModel(model, x[:1])
    assert view.weights.dtype == torch.float64
    torch.testing.assert_close(view(x, view.weights), model(x.double()), rtol=0, atol=0)
    assert MetricOperator(model, x).weights.dtype == torch.float64

    from lesion.nets.outputs import logits_view

    tokens = torch.nn.Sequential(torch.nn.Embedding(9, 4), torch.nn.Linear(4, 5)).half()
    ids = torch.randint(0, 9, (3, 6))
    half = FlatModel(logits_view(tokens), ids[:1])
    assert half.weights.dtype == torch.float32 and half.m == 5 and half.rows_per_input == 6
    expected = copy.deepcopy(tokens).float()(ids).reshape(18, 5)
    torch.testing.assert_close(half(ids, half.weights), expected, rtol=0, atol=0)
