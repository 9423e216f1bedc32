"""Closed-form compensation (issue 15, item 1): exact where a deleted unit is an affine function of kept ones
(a duplicated unit, a constant unit), on Linear, conv+BN, conv→flatten→dense, a transformer MLP and GPT-2's
Conv1D; the folded weights against a dense float64 least-squares reference; better than naive deletion on a
trained network."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from lesion.geometry.compensate import compensate
from lesion.geometry.damage_set import parse_delete, union
from lesion.geometry.recovery import RecoveryProblem, naive, recover


def _problem(model, x, spec, y=None):
    y = torch.zeros(len(x), dtype=torch.long) if y is None else y
    damage = parse_delete(model, spec, torch.Generator().manual_seed(0), x[:2])
    return RecoveryProblem(model, x, y, x, y, damage)


def _outputs(problem, w):
    with torch.no_grad():
        return problem.flat(problem.x_eval, w)


def _duplicate_rows(weight, bias, source, copy_to, axis=0):
    with torch.no_grad():
        weight.index_copy_(axis, torch.tensor([copy_to]), weight.index_select(axis, torch.tensor([source])))
        if bias is not None:
            bias[copy_to] = bias[source]


def test_a_duplicated_and_a_constant_unit_are_compensated_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    _duplicate_rows(model[0].weight, model[0].bias, 1, 3)
    with torch.no_grad():  # unit 5: no input weights, a positive bias: the constant relu(0.7)
        model[0].weight[5] = 0.0
        model[0].bias[5] = 0.7
    x = torch.randn(200, 6, dtype=torch.float64)
    problem = _problem(model, x, "units:1:3,5")
    result, w = compensate(problem, calibration=200, ridge=1e-12)
    torch.testing.assert_close(_outputs(problem, w), model(x), atol=1e-8, rtol=1e-8)
    assert bool((w[problem.damage.indices] == 0).all())
    assert _outputs(problem, problem.w0 * problem.mask).sub(model(x)).abs().max() > 0.05  # naive is not exact
    assert result.details["sites"][0] == {"site": "1#0", "reader": "2", "deleted": 2, "kept": 6, "rows": 200}


@pytest.mark.parametrize("fit", ["regression", "obs"])
def test_a_layer_deleted_whole_is_compensated_by_its_mean(fit):
    """No unit left to model the deleted ones from: both fits fold the units' mean activation over the calibration
    inputs into the reader's bias (the outputs become constant, equal to the clean outputs' mean); a hand
    computation of that bias."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.randn(80, 4, dtype=torch.float64)
    problem = _problem(model, x, "units:1:0,1,2,3,4")
    _, w = compensate(problem, calibration=80, ridge=1e-12, fit=fit)
    with torch.no_grad():
        mean = torch.relu(model[0](x)).mean(0)
        expected = model[2].bias + model[2].weight @ mean
    torch.testing.assert_close(_outputs(problem, w), expected.expand(80, -1), atol=1e-6, rtol=1e-6)
    assert bool((w[problem.damage.indices] == 0).all())


def test_deletions_of_one_layer_given_apart_are_one_set_of_its_units():
    """Two --delete options on the same layer, overlapping: the set of units 1, 2, 3 (not 4 units of a layer
    twice as wide), equal to deleting the three at once; compensation sees the layer once."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2), nn.ReLU(), nn.Linear(2, 3))
    x = torch.randn(30, 4)

    def part(spec):
        return parse_delete(model, spec, torch.Generator().manual_seed(0), x[:2])

    merged, direct = union([part("units:1:1,2"), part("units:1:2,3")]), part("units:1:1,2,3")
    assert torch.equal(merged.indices, direct.indices) and merged.units == (1, 2, 3) and merged.width == 6
    assert merged.describe() == direct.describe() and not merged.parts
    both = union([part("units:1:1,2"), part("units:3#0:0"), part("units:1:3")])
    assert [(p.layer, p.units) for p in both.parts] == [(direct.layer, (1, 2, 3)), (part("units:3#0:0").layer, (0,))]
    second = part("units:3#0:0")
    assert both.describe() == (f"3 of the 6 units of {direct.layer} ({len(direct.indices)} weights) + 1 of the 2 "
                               f"units of {second.layer} ({len(second.indices)} weights) ({len(both.indices)} "
                               "weights in all)")


def test_folded_weights_equal_a_dense_least_squares_reference():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    x = torch.randn(120, 5, dtype=torch.float64)
    problem = _problem(model, x, "units:1:0,2,6")
    ridge = 0.1
    _, w = compensate(problem, calibration=120, ridge=ridge)
    # reference in numpy: centred ridge of the deleted units on the kept ones, folded into fc2 by hand
    h = np.tanh(x.numpy() @ model[0].weight.detach().numpy().T + model[0].bias.detach().numpy())
    S, K = [0, 2, 6], [1, 3, 4, 5]
    hk, hs = h[:, K] - h[:, K].mean(0), h[:, S] - h[:, S].mean(0)
    cov = hk.T @ hk / len(h)
    lam = ridge * np.trace(cov) / len(K)
    M = np.linalg.solve(cov + lam * np.eye(len(K)), hk.T @ hs / len(h))
    c = h[:, S].mean(0) - h[:, K].mean(0) @ M
    W2, b2 = model[2].weight.detach().numpy().copy(), model[2].bias.detach().numpy().copy()
    expected_w = W2.copy()
    expected_w[:, K] += W2[:, S] @ M.T
    expected_w[:, S] = 0.0
    expected_b = b2 + W2[:, S] @ c
    params = problem.flat.unflatten(w)
    np.testing.assert_allclose(params["2.weight"].numpy(), expected_w, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(params["2.bias"].numpy(), expected_b, rtol=1e-9, atol=1e-10)


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(h)).flatten(1))


def test_conv_channels_with_batchnorm_and_a_flattened_dense_reader_are_compensated_exactly():
    torch.manual_seed(2)
    model = _ConvNet().double().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.uniform_(0.5, 1.5)
    _duplicate_rows(model.conv1.weight, model.conv1.bias, 0, 4)  # channel 4 = channel 0, through BN too
    for p in (model.bn1.weight, model.bn1.bias, model.bn1.running_mean, model.bn1.running_var):
        with torch.no_grad():
            p[4] = p[0]
    _duplicate_rows(model.conv2.weight, model.conv2.bias, 1, 3)  # channel 3 of conv2 = channel 1 (into fc)
    x = torch.randn(40, 1, 6, 6, dtype=torch.float64)
    for spec in ("units:conv1:4", "units:conv2:3"):
        problem = _problem(model, x, spec)
        _, w = compensate(problem, calibration=40, ridge=1e-12)
        torch.testing.assert_close(_outputs(problem, w), model(x), atol=1e-8, rtol=1e-8, msg=spec)


def test_transformer_mlp_neuron_and_gpt2_conv1d_neuron_are_compensated_exactly():
    encoder = zoo.encoder().double()
    layer = encoder.encoder.layers[0]
    _duplicate_rows(layer.linear1.weight, layer.linear1.bias, 2, 9)
    tokens = torch.randint(0, 97, (6, 12), generator=torch.Generator().manual_seed(3))
    problem = _problem(encoder, tokens, "units:encoder.layers.0.linear1:9")
    _, w = compensate(problem, calibration=6, ridge=1e-12)
    torch.testing.assert_close(_outputs(problem, w), encoder(tokens), atol=1e-8, rtol=1e-8)

    from lesion.nets.outputs import logits_view

    gpt = logits_view(zoo.gpt2().double())
    mlp = gpt.transformer.h[1].mlp
    _duplicate_rows(mlp.c_fc.weight, mlp.c_fc.bias, 5, 17, axis=1)  # Conv1D: units are weight columns
    problem = _problem(gpt, tokens, "units:transformer.h.1.mlp.c_fc:17", torch.zeros_like(tokens))
    _, w = compensate(problem, calibration=6, ridge=1e-12)
    torch.testing.assert_close(_outputs(problem, w), gpt(tokens), atol=1e-7, rtol=1e-7)


def test_compensation_beats_naive_deletion_on_a_trained_network():
    from lesion.data import load
    from lesion.train import TrainSettings, train

    data = load("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    train(model, data.x_train, data.y_train, TrainSettings(epochs=15, seed=0))
    before = copy.deepcopy(model.state_dict())
    damage = parse_delete(model, "units:1:frac=0.75", torch.Generator().manual_seed(0), data.x_test[:2])
    problem = RecoveryProblem(model, data.x_train, data.y_train, data.x_test, data.y_test, damage)
    results, _ = recover(problem, ["naive", "compensate"], compensate_options={"calibration": 256})
    assert results["compensate"].accuracy > results["naive"].accuracy + 0.1
    assert results["compensate"].epoch_equivalents < 0.5
    assert naive(problem).accuracy == results["naive"].accuracy
    for name, value in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(value, before[name])


@pytest.mark.parametrize("ridge", [1e-6, 1.0])
def test_compensated_weights_stay_on_the_damage_hyperplane(ridge):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(50, 4)
    damage_a = parse_delete(model, "units:1:0,1", torch.Generator(), x[:2])
    damage_b = parse_delete(model, "units:2:4", torch.Generator(), x[:2])
    from lesion.geometry.damage_set import union

    y = torch.zeros(50, dtype=torch.long)
    problem = RecoveryProblem(model, x, y, x, y, union([damage_b, damage_a]))
    result, w = compensate(problem, calibration=50, ridge=ridge)
    assert bool((w[problem.damage.indices] == 0).all())
    assert [s["site"] for s in result.details["sites"]] == ["1#0", "3#0"]  # forward order


def test_methods_and_combinations_are_parsed_and_a_combination_counts_both_parts(tmp_path):
    from lesion.errors import LesionError
    from lesion.geometry.recovery import METHODS, OPT_IN, parse_methods

    assert parse_methods("all") == [m for m in METHODS if m not in OPT_IN] and "geodesic-running" in OPT_IN
    assert parse_methods("geodesic-running,compensate") == ["geodesic-running", "compensate"]  # by name
    assert parse_methods("all,geodesic-running") == [*parse_methods("all"), "geodesic-running"]  # was refused
    assert parse_methods("naive,all") == ["naive", *(m for m in parse_methods("all") if m != "naive")]  # each once
    assert parse_methods("naive, compensate+finetune:0.5") == ["naive", "compensate+finetune:0.5"]
    for bad in ("bogus", "compensate+geodesic", "finetune+finetune:1", "compensate+finetune:-1",
                "compensate+finetune:x", ","):
        with pytest.raises(LesionError):
            parse_methods(bad)
    for bad in ("compensate+finetune:-1", "obs+distill:inf", "compensate+finetune:x"):  # a known method, bad epochs
        with pytest.raises(LesionError, match="bad epochs .* give a positive number"):
            parse_methods(bad)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(64, 6)
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    problem = _problem(model, x, "units:1:frac=0.5", y)
    results, weights = recover(problem, ["compensate", "compensate+finetune:0.25"],
                               compensate_options={"calibration": 64})
    alone, both = results["compensate"], results["compensate+finetune:0.25"]
    assert both.epoch_equivalents == pytest.approx(alone.epoch_equivalents + 0.25)
    assert both.details["finetune"]["epochs"] == 0.25 and both.details["compensate"]["method"] == "compensate"
    assert bool((weights["compensate+finetune:0.25"][problem.damage.indices] == 0).all())
    assert not torch.equal(weights["compensate+finetune:0.25"], weights["compensate"])


def test_cli_recover_with_compensation_and_a_combination(tmp_path, capsys):
    from lesion.cli import main

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    torch.save(model, tmp_path / "m.pt")
    argv = ["recover", "--model", str(tmp_path / "m.pt"), "--data", "digits", "--delete", "units:1:frac=0.5",
            "--json", str(tmp_path / "r.json")]
    assert main(argv + ["--method", "naive,compensate,compensate+finetune:0.1", "--calibration", "64"]) == 0
    import json

    methods = json.loads((tmp_path / "r.json").read_text())["methods"]
    assert set(methods) == {"naive", "compensate", "compensate+finetune:0.1"}
    assert methods["compensate"]["details"]["calibration"] == 64
    capsys.readouterr()
    assert main(argv + ["--method", "compensate+geodesic"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_layerwise_obs_equals_the_dense_least_squares_reconstruction_of_the_layer():
    """OBS on the reader: W'_K and b' minimise ‖W h + b − W'_K h_K − b'‖² over the calibration inputs (damping
    → 0), computed here by numpy's lstsq on the layer's inputs and outputs."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 4)).double()
    x = torch.randn(150, 5, dtype=torch.float64)
    problem = _problem(model, x, "units:1:1,4,7")
    result, w = compensate(problem, calibration=150, ridge=1e-12, fit="obs")
    assert result.method == "obs"
    h = torch.tanh(model[0](x)).detach().numpy()
    target = h @ model[2].weight.detach().numpy().T + model[2].bias.detach().numpy()
    K = [0, 2, 3, 5, 6, 8]
    design = np.hstack([h[:, K], np.ones((len(h), 1))])
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    params = problem.flat.unflatten(w)
    np.testing.assert_allclose(params["2.weight"].numpy()[:, K], solution[:-1].T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(params["2.bias"].numpy(), solution[-1], rtol=1e-6, atol=1e-8)
    assert bool((params["2.weight"][:, [1, 4, 7]] == 0).all())


def test_layerwise_obs_is_not_below_naive_deletion_on_a_trained_network():
    from lesion.data import load
    from lesion.train import TrainSettings, train

    data = load("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    train(model, data.x_train, data.y_train, TrainSettings(epochs=15, seed=0))
    for spec in ("units:1:frac=0.25", "units:1:frac=0.5", "units:1:frac=0.9"):
        damage = parse_delete(model, spec, torch.Generator().manual_seed(0), data.x_test[:2])
        problem = RecoveryProblem(model, data.x_train, data.y_train, data.x_test, data.y_test, damage)
        results, _ = recover(problem, ["naive", "obs", "obs-metric"], compensate_options={"calibration": 256})
        assert results["obs"].accuracy >= results["naive"].accuracy, spec


def test_deleted_heads_are_compensated_through_the_output_projection():
    """A duplicated head (same query, key and value weights: the same slice of the attention output) is
    compensated exactly; nn.MultiheadAttention, whose projection runs inside a function, is refused in one line."""
    from lesion.errors import LesionError
    from lesion.nets.outputs import logits_view

    gpt = logits_view(zoo.gpt2().double())
    attn = gpt.transformer.h[0].attn
    with torch.no_grad():  # c_attn (Conv1D, columns q | k | v, 32 each): head 3 := head 1
        for block in range(3):
            attn.c_attn.weight[:, block * 32 + 24: block * 32 + 32] = attn.c_attn.weight[:, block * 32 + 8:
                                                                                        block * 32 + 16]
            attn.c_attn.bias[block * 32 + 24: block * 32 + 32] = attn.c_attn.bias[block * 32 + 8: block * 32 + 16]
    tokens = torch.randint(0, 97, (6, 12), generator=torch.Generator().manual_seed(3))
    problem = _problem(gpt, tokens, "heads:transformer.h.0.attn:3", torch.zeros_like(tokens))
    assert problem.damage.units == (3,) and len(problem.damage.indices) == 8 * 32
    assert problem.damage.describe() == "1 of the 4 heads of transformer.h.0.attn (256 weights)"
    naive_out = _outputs(problem, problem.w0 * problem.mask)
    assert (naive_out - gpt(tokens)).abs().max() > 1e-3
    _, w = compensate(problem, calibration=6, ridge=1e-12)
    torch.testing.assert_close(_outputs(problem, w), gpt(tokens), atol=1e-7, rtol=1e-7)
    encoder = zoo.encoder()
    problem = _problem(encoder, tokens, "heads:encoder.layers.0.self_attn:1")
    with pytest.raises(LesionError, match="not called as a module"):
        compensate(problem, calibration=6)
    # `recover` refuses it before the methods ahead of it run (fine-tuning would otherwise go first, for nothing)
    from unittest import mock

    from lesion.geometry import recovery

    with mock.patch.object(recovery, "finetune", side_effect=AssertionError("ran before the refusal")):
        with pytest.raises(LesionError, match="not called as a module"):
            recovery.recover(problem, ["finetune", "compensate+finetune:0.5"])


def test_compensation_recovers_half_of_what_deleting_mlp_neurons_and_heads_costs_a_trained_transformer():
    """Issue 15: the char-level GPT-2 of the zoo, half of the MLP neurons of every block and a quarter of the
    heads deleted; compensation gets back at least half of the accuracy naive deletion loses."""
    from lesion.data import load
    from lesion.geometry.damage_set import union

    model, x, y = zoo.trained_gpt2()
    data = load("text")
    gen = torch.Generator().manual_seed(0)
    parts = [parse_delete(model, f"units:transformer.h.{b}.mlp.act:frac=0.5", gen, x[:2]) for b in (0, 1)]
    parts += [parse_delete(model, f"heads:transformer.h.{b}.attn:count=1", gen, x[:2]) for b in (0, 1)]
    problem = RecoveryProblem(model, data.x_train[:512, :32], data.y_train[:512, :32], x, y, union(parts))
    results, _ = recover(problem, ["naive", "compensate", "obs"], compensate_options={"calibration": 256})
    clean, clean_loss = problem.evaluate(problem.w0)
    lost, loss_gained = clean - results["naive"].accuracy, results["naive"].loss - clean_loss
    assert lost > 0.02 and loss_gained > 0.1  # measured: 0.327 → 0.298, loss 2.331 → 2.491
    assert results["compensate"].accuracy >= results["naive"].accuracy + lost / 2
    assert results["compensate"].loss <= results["naive"].loss - loss_gained / 2
    assert results["obs"].accuracy >= results["naive"].accuracy


class _TwoReaders(nn.Module):
    """The hidden layer is read by two layers: zeroing the columns of one does not silence a unit."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out, self.skip = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.hidden(x))
        return self.out(h) + self.skip(h)


class _SharedReader(nn.Module):
    """One layer reads the hidden units and, a second time, the input: its weights read other values too."""

    def __init__(self):
        super().__init__()
        self.hidden, self.shared = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.shared(torch.relu(self.hidden(x))) + self.shared(x)


@pytest.mark.parametrize("model_class, words", [(_TwoReaders, "another layer reads hidden too"),
                                                (_SharedReader, "runs 2 times")])
def test_a_deletion_the_reader_weights_cannot_express_is_refused(model_class, words):
    """Compensating through the reader's weights assumes they are all that reads the units: a second reader,
    or a reader run twice, would leave the 'deleted' units alive (repair would fit a different network)."""
    from lesion.errors import LesionError

    torch.manual_seed(0)
    model = model_class()
    x = torch.randn(8, 4)
    with pytest.raises(LesionError, match=words):
        parse_delete(model, "units:hidden:0,2", torch.Generator(), x[:2])


def test_a_frozen_batch_norm_is_left_out_and_a_frozen_reader_is_refused():
    from lesion.errors import LesionError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    for p in model[1].parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 1, 8, 8)
    damage = parse_delete(model, "units:2#0:1", torch.Generator(), x[:2])  # the channel after the relu
    # only trainable weights are in D: conv0's row and bias, and conv3's input channel
    assert len(damage.indices) == 9 + 1 + 2 * 9
    model[3].weight.requires_grad_(False)
    with pytest.raises(LesionError, match="frozen"):
        parse_delete(model, "units:2#0:1", torch.Generator(), x[:2])


@pytest.mark.parametrize("padding_mode, kernel, padding", [("zeros", 3, 1), ("reflect", 3, 1), ("zeros", 1, 3)])
def test_obs_on_a_padded_strided_convolution_after_pooling_is_the_least_squares_optimum_of_the_layer(padding_mode,
                                                                                                    kernel, padding):
    """The reader is a padded, strided convolution that reads the site through a max-pool: OBS folds the
    least-squares optimum of the reader's outputs over its true inputs (pooled, padded im2col patches), computed
    here by numpy's lstsq; compensation is then no worse than deletion on the layer's outputs. A 1×1 kernel with
    padding too: fitted over the unpadded positions, its constant reached the border and ended below naive."""
    import torch.nn.functional as F

    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.MaxPool2d(2),
                          nn.Conv2d(5, 3, kernel, padding=padding, stride=2, padding_mode=padding_mode),
                          nn.Flatten(), nn.LazyLinear(2)).double()
    x = torch.randn(40, 1, 16, 16, dtype=torch.float64)
    model(x[:1])  # the lazy layer's shape
    k = kernel * kernel
    problem = _problem(model, x, "units:0#0:1,3")
    _, w = compensate(problem, calibration=40, ridge=1e-12, fit="obs")
    conv = model[2]
    with torch.no_grad():
        pooled = model[1](model[0](x))
        padded = F.pad(pooled, conv._reversed_padding_repeated_twice,
                       mode="constant" if padding_mode == "zeros" else padding_mode)
        z = F.unfold(padded, kernel, stride=2).transpose(1, 2).reshape(-1, 5 * k).numpy()
    W, b = conv.weight.detach().reshape(3, -1).numpy(), conv.bias.detach().numpy()
    kept = [c * k + j for c in (0, 2, 4) for j in range(k)]
    design = np.hstack([z[:, kept], np.ones((len(z), 1))])
    solution = np.linalg.lstsq(design, z @ W.T + b, rcond=None)[0]
    params = problem.flat.unflatten(w)
    folded = params["2.weight"].reshape(3, -1).numpy()
    np.testing.assert_allclose(folded[:, kept], solution[:-1].T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(params["2.bias"].numpy(), solution[-1], rtol=1e-6, atol=1e-8)
    assert not folded[:, [c * k + j for c in (1, 3) for j in range(k)]].any()
    naive = z[:, kept] @ W[:, kept].T + b
    error = np.linalg.norm(design @ solution - (z @ W.T + b))
    assert error < np.linalg.norm(naive - (z @ W.T + b))


def test_a_norm_over_the_units_between_layer_and_site_keeps_the_layer_rows_out_of_the_deletion():
    """Linear → LayerNorm → ReLU: the Linear's rows feed every unit through the norm's statistics, so a deletion
    is the norm's scale and shift of the units and the reader's columns; it equals zeroing the units' values
    before the reader by a hook."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(30, 4, dtype=torch.float64)
    problem = _problem(model, x, "units:2#0:1,3")
    assert len(problem.damage.indices) == 2 * 2 + 2 * 3  # LN weight and bias of 2 units, 2 columns of 3 rows
    handle = model[3].register_forward_pre_hook(lambda m, a: (a[0] * torch.tensor([1, 0, 1, 0, 1, 1.0]),))
    try:
        expected = model(x)
    finally:
        handle.remove()
    torch.testing.assert_close(_outputs(problem, problem.w0 * problem.mask), expected)


def test_a_later_site_is_fitted_to_the_clean_outputs_of_its_reader_drift_of_the_kept_units_included():
    """Two damaged sites: the second reader's kept inputs have drifted (the first site's damage reaches them).
    OBS (damping → 0) folds the least-squares fit of the reader's clean outputs on its inputs as they are now,
    computed here by numpy's lstsq; fitting only the deleted units would leave the drift in (worse)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    x = torch.randn(300, 4, dtype=torch.float64)
    y = torch.zeros(len(x), dtype=torch.long)
    damage = union([parse_delete(model, spec, torch.Generator().manual_seed(0), x[:2])
                    for spec in ("units:1#0:0,5", "units:3#0:2,6")])
    problem = RecoveryProblem(model, x, y, x, y, damage)
    _, w = compensate(problem, calibration=300, ridge=1e-12, fit="obs")
    params = problem.flat.unflatten(w)
    with torch.no_grad():
        h1 = torch.relu(x @ params["0.weight"].T + params["0.bias"])
        now = torch.relu(h1 @ params["2.weight"].T + params["2.bias"]).numpy()
        target = model(x).numpy()
    K = [0, 1, 3, 4, 5]
    design = np.hstack([now[:, K], np.ones((len(now), 1))])
    solution, residual = np.linalg.lstsq(design, target, rcond=None)[:2]
    folded = now[:, K] @ params["4.weight"].numpy()[:, K].T + params["4.bias"].numpy()  # (a dead unit's weight
    np.testing.assert_allclose(folded, design @ solution, rtol=1e-6, atol=1e-8)  # is free: compare outputs)
    assert not params["4.weight"][:, [2, 6]].any()
    # the deleted units alone, fitted on the drifted kept ones, leave a larger error at the reader
    W4, b4 = model[4].weight.detach().numpy(), model[4].bias.detach().numpy()
    with torch.no_grad():
        clean = torch.relu(model[2](torch.relu(model[0](x)))).numpy()
    S = [2, 6]
    M = np.linalg.lstsq(np.hstack([now[:, K], np.ones((len(now), 1))]), clean[:, S], rcond=None)[0]
    deleted_only = now[:, K] @ (W4[:, K] + W4[:, S] @ M[:-1].T).T + b4 + W4[:, S] @ M[-1]
    assert residual.sum() < ((deleted_only - target) ** 2).sum()
