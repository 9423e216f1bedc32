"""Sites on real architectures (timm, transformers, torch): each damage equals a forward with the unit removed
by hand (weights edited, or a hook written here), on models nobody here wrote."""

import copy
import json

import pytest
import torch
from torch import nn

import zoo
from lesion.damage import Target, batched_damaged_outputs, damaged_outputs, parse_damage, realise
from lesion.errors import LesionError

IMAGES = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
TOKENS = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(6))


def damaged(model, spec, x, seed=0):
    realised = realise(Target(model, example=x), [parse_damage(spec)], torch.Generator().manual_seed(seed))
    return damaged_outputs(model, realised, x), realised


def logits(out):
    return out.logits if hasattr(out, "logits") else out


def test_vit_mlp_neuron_crash_equals_zeroing_the_readers_columns():
    model = zoo.vit()
    table = Target(model, example=IMAGES).table
    site = table.resolve("blocks.0.mlp.act", "unit")
    assert (site.kind, site.width, site.axis) == ("token-feature", 128, 2)  # features, not tokens
    out, _ = damaged(model, "crash:blocks.0.mlp.act:3,5,100", IMAGES)
    hand = copy.deepcopy(model)
    with torch.no_grad():
        hand.blocks[0].mlp.fc2.weight[:, [3, 5, 100]] = 0.0
    torch.testing.assert_close(out, hand(IMAGES), atol=1e-5, rtol=0)
    assert not torch.allclose(out, model(IMAGES), atol=1e-4)


@pytest.mark.parametrize("build", ["bert", "gpt2"])
def test_head_crash_equals_zeroing_the_heads_slice_by_a_hook(build):
    model = getattr(zoo, build)()
    target = Target(model, example=TOKENS)
    heads = [s for s in target.sites if s.kind == "attention-head"]
    assert [s.width for s in heads] == [4, 4]
    site = heads[1]
    out, realised = damaged(model, f"head:{site.name}:1,3", TOKENS)
    projection = dict(model.named_modules())[site.heads.param.rsplit(".", 1)[0]]

    def silence(module, args):
        x = args[0].clone()
        x[..., 8:16] = 0.0  # head 1 of 4 heads of 8
        x[..., 24:32] = 0.0  # head 3
        return (x,)

    handle = projection.register_forward_pre_hook(silence)
    try:
        with torch.no_grad():
            expected = logits(model(TOKENS))
    finally:
        handle.remove()
    torch.testing.assert_close(out.reshape(expected.shape), expected, atol=1e-5, rtol=0)
    assert realised.faults[0]["indices"] == [1, 3]


@pytest.mark.parametrize("later", ["gauss:0.1", "bitflip:ber=1e-3"])
def test_weight_damage_after_a_head_crash_leaves_the_heads_silent(later):
    """A crashed head outputs nothing: weight damage realised after it (noise, bit flips in memory) changes the
    rest of the network, not the zeroed projection entries that read the head (which would revive it)."""
    model = zoo.gpt2()
    target = Target(model, example=TOKENS)
    site = [s for s in target.sites if s.kind == "attention-head"][0]
    both = realise(target, [parse_damage(f"head:{site.name}:1,3"), parse_damage(later)],
                   torch.Generator().manual_seed(3))
    alone = realise(target, [parse_damage(later)], torch.Generator().manual_seed(3))  # the same draws
    weight = alone.param(site.heads.param, target.base)
    columns = torch.cat([torch.arange(8, 16), torch.arange(24, 32)])
    assert bool((weight.index_select(site.heads.axis, columns) != target.base[site.heads.param].index_select(
        site.heads.axis, columns)).any())  # the later damage does write into the heads' entries
    assert bool((both.param(site.heads.param, target.base).index_select(site.heads.axis, columns) == 0).all())
    projection = dict(model.named_modules())[site.heads.param.rsplit(".", 1)[0]]

    def silence(module, args):
        x = args[0].clone()
        x[..., columns] = 0.0
        return (x,)

    handle = projection.register_forward_pre_hook(silence)
    try:
        expected = damaged_outputs(model, alone, TOKENS)
    finally:
        handle.remove()
    torch.testing.assert_close(damaged_outputs(model, both, TOKENS), expected, atol=1e-5, rtol=1e-5,
                               equal_nan=True)


def test_deletion_curve_over_heads_equals_silencing_them_by_a_hook():
    """A break-down curve at a site of attention heads deletes whole heads in its order: its accuracies equal
    the ViT with those heads' slices zeroed before the projection by a hook."""
    import numpy as np

    from lesion.geometry.breakdown import deletion_curve, order_accuracies, unit_order

    model = zoo.vit()
    x = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        y = model(x).argmax(1)  # the clean model is right everywhere
    target = Target(model, example=x)
    site = [s for s in target.sites if s.kind == "attention-head"][1]
    sequence = [2, 0, 3, 1]
    got = order_accuracies(model, target, x, y, site.name, sequence, [0.0, 0.25, 0.5, 1.0])
    projection = dict(model.named_modules())[site.heads.param.rsplit(".", 1)[0]]
    expected = []
    for k in (0, 1, 2, 4):
        def silence(module, args, k=k):
            h = args[0].clone()
            for head in sequence[:k]:
                h[..., head * 8:(head + 1) * 8] = 0.0
            return (h,)

        handle = projection.register_forward_pre_hook(silence)
        try:
            with torch.no_grad():
                expected.append((model(x).argmax(1) == y).double().mean().item())
        finally:
            handle.remove()
    assert got == pytest.approx(expected, abs=1e-12) and expected[0] == 1.0 and expected[-1] < 1.0
    curve = deletion_curve(model, x, y, site.name, (0.0, 0.5, 1.0), "random", 2, 0.9, 0)
    assert curve.units == 4 and curve.accuracy[0] == 1.0 and len(curve.per_order) == 2
    with pytest.raises(LesionError, match="only the random order"):
        unit_order(model, site.name, "magnitude", np.random.default_rng(0), x)


def test_deleted_bn_conv_filter_is_silent_after_bn_and_activation():
    model = zoo.resnet18()
    out, realised = damaged(model, "filter:conv1:0,7", IMAGES)
    assert realised.faults[0]["site"] == "act1"
    hand = copy.deepcopy(model)
    with torch.no_grad():
        hand.conv1.weight[[0, 7]] = 0.0
        hand.bn1.weight[[0, 7]] = 0.0
        hand.bn1.bias[[0, 7]] = 0.0
    seen = {}
    handle = hand.act1.register_forward_hook(lambda m, i, o: seen.setdefault("act1", o.clone()))
    with torch.no_grad():
        expected = hand(IMAGES)
    handle.remove()
    assert float(seen["act1"][:, [0, 7]].abs().max()) == 0.0
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    conv_only = copy.deepcopy(model)  # the old deletion: the BN shift revives the channel
    with torch.no_grad():
        conv_only.conv1.weight[[0, 7]] = 0.0
        conv_only.conv1.bias is None or conv_only.conv1.bias[[0, 7]].zero_()
    assert not torch.allclose(conv_only(IMAGES), expected, atol=1e-4)


def test_resnet_campaign_with_in_place_residual_adds_matches_the_loop():
    model = zoo.resnet18()
    target = Target(model, example=IMAGES)
    assert len([s for s in target.sites if s.kind == "conv-channel"]) >= 20
    configs = [realise(target, [parse_damage("crash:8:frac=0.3"), parse_damage("crash:layer1.0.act1:count=4")],
                       torch.Generator().manual_seed(i)) for i in range(3)]
    batched = batched_damaged_outputs(model, configs, IMAGES)
    loop = torch.stack([damaged_outputs(model, c, IMAGES) for c in configs])
    torch.testing.assert_close(batched, loop, atol=1e-4, rtol=1e-4)


class SharedRelu(nn.Module):
    """torchvision's BasicBlock pattern: one ReLU module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 2)
        self.relu = nn.ReLU()

    def forward(self, x):
        h = self.relu(self.fc1(x))
        return self.out(self.relu(self.fc2(h) + x))


def test_shared_module_is_crashed_at_one_call_only():
    torch.manual_seed(0)
    model = SharedRelu().eval()
    x = torch.randn(6, 5)
    names = [s.name for s in Target(model, example=x).sites]
    assert names == ["relu#0", "fc2", "relu#1"]  # fc2 is added to x: its own output is a site
    out, _ = damaged(model, "crash:relu#1:2,4", x)
    with torch.no_grad():
        h = torch.relu(model.fc1(x))
        g = torch.relu(model.fc2(h) + x)
        g[:, [2, 4]] = 0.0
        expected = model.out(g)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    with pytest.raises(LesionError, match="runs 2 times"):
        damaged(model, "crash:relu:1", x)


def test_gpt2_conv1d_filter_deletes_output_columns():
    model = zoo.gpt2()
    out, realised = damaged(model, "filter:transformer.h.1.mlp.c_fc:0,1,2", TOKENS)
    assert realised.faults[0]["site"] == "transformer.h.1.mlp.act"
    hand = copy.deepcopy(model)
    with torch.no_grad():  # Conv1D stores (in, out): the units are columns; GELU(0) = 0
        hand.transformer.h[1].mlp.c_fc.weight[:, [0, 1, 2]] = 0.0
        hand.transformer.h[1].mlp.c_fc.bias[[0, 1, 2]] = 0.0
        expected = hand(TOKENS).logits
    torch.testing.assert_close(out.reshape(expected.shape), expected, atol=1e-5, rtol=0)


def test_layernorm_between_linear_and_gelu_crashes_after_the_activation():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3)).eval()
    x = torch.randn(5, 6)
    site = Target(model, example=x).site(1)
    assert site.name == "2#0" and site.chain == ("1", "2")
    out, _ = damaged(model, "crash:1:0,3", x)
    hand = copy.deepcopy(model)
    with torch.no_grad():
        hand[3].weight[:, [0, 3]] = 0.0
    torch.testing.assert_close(out, hand(x), atol=1e-6, rtol=0)


class FunctionalSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.sigmoid(self.fc1(x)))


def test_activation_written_as_a_function_crashes_the_unit_not_its_input():
    torch.manual_seed(2)
    model = FunctionalSigmoid().eval()
    x = torch.randn(5, 4)
    site = Target(model, example=x).site(1)
    assert site.name == "fc2@in"
    out, _ = damaged(model, "crash:1:1,2", x)
    hand = copy.deepcopy(model)
    with torch.no_grad():
        hand.fc2.weight[:, [1, 2]] = 0.0  # the unit outputs 0, not sigmoid(0) = 0.5
    torch.testing.assert_close(out, hand(x), atol=1e-6, rtol=0)


def test_report_on_a_token_model_gives_per_token_figures_by_position(tmp_path):
    """The network section of a character GPT-2's report: accuracy and loss at each token position equal a hand
    computation from the model's logits; the summary says "per token" and gives the loss per token."""
    import torch.nn.functional as F

    from lesion.cli import main
    from lesion.data import load

    gpt = tmp_path / "gpt2.pt"
    torch.manual_seed(0)
    model = zoo.gpt2().eval()
    torch.save(model, gpt)
    out = tmp_path / "r"
    assert main(["--quiet", "report", "--model", str(gpt), "--data", "text", "--quick", "--stages", "network",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    tokens = results["network"]["per_token"]
    data = load("text")
    with torch.no_grad():
        logits = torch.cat([model(data.x_test[i:i + 128]).logits for i in range(0, len(data.x_test), 128)])
    right = (logits.argmax(-1) == data.y_test).double().mean(0)
    loss = F.cross_entropy(logits.double().reshape(-1, logits.shape[-1]), data.y_test.reshape(-1),
                           reduction="none").reshape(data.y_test.shape).mean(0)
    assert (tokens["sequences"], tokens["tokens_per_sequence"]) == tuple(data.y_test.shape)
    assert tokens["accuracy_by_position"] == pytest.approx(right.tolist(), abs=1e-12)
    assert tokens["loss_by_position"] == pytest.approx(loss.tolist(), rel=1e-5)
    card = {e["key"]: e for e in results["scorecard"]}
    assert card["clean_loss"]["value"] == pytest.approx(results["network"]["clean"]["loss"])
    assert card["clean_loss"]["value"] == pytest.approx(float(loss.mean()), rel=1e-5)
    assert "per token" in card["clean_accuracy"]["text"] and (out / "tokens.png").exists()
    assert "Clean accuracy by token position" not in (out / "report.md").read_text()  # a figure, not text
    assert "tokens.png" in (out / "report.md").read_text()


def test_torch_transformer_encoder_sites_and_head_crash():
    model = zoo.encoder()
    target = Target(model, example=TOKENS)
    heads = [s for s in target.sites if s.kind == "attention-head"]
    assert [s.name for s in heads] == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    out, _ = damaged(model, "head:encoder.layers.0.self_attn:2", TOKENS)
    hand = copy.deepcopy(model)
    with torch.no_grad():
        hand.encoder.layers[0].self_attn.out_proj.weight[:, 8:12] = 0.0
    torch.testing.assert_close(out, hand(TOKENS), atol=1e-5, rtol=0)


def test_unit_and_head_addresses_are_checked():
    model = zoo.bert()
    target = Target(model, example=TOKENS)
    with pytest.raises(LesionError, match="is an attention module"):
        realise(target, [parse_damage("crash:1:0")], torch.Generator())
    with pytest.raises(LesionError, match="is not an attention module"):
        realise(target, [parse_damage("head:bert.pooler.activation:0")], torch.Generator())
    with pytest.raises(LesionError, match="no module 'nope' runs"):
        realise(target, [parse_damage("crash:nope:0")], torch.Generator())


def test_cli_on_dict_returning_model_and_token_model(tmp_path, capsys):
    from lesion.cli import main

    path = tmp_path / "dict.pt"
    torch.manual_seed(0)
    torch.save(zoo.DictNet(), path)
    assert main(["sites", "--model", str(path), "--data", "mnist5k", "--json", str(tmp_path / "s.json")]) == 0
    sites = json.loads((tmp_path / "s.json").read_text())["sites"]
    assert [s["name"] for s in sites] == ["fc2@in"]
    assert main(["evaluate", "--model", str(path), "--data", "mnist5k", "--damage", "crash:1:frac=0.5",
                 "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["damaged_evaluation"]["n"] == 1000
    gpt = tmp_path / "gpt2.pt"
    torch.save(zoo.gpt2(), gpt)
    assert main(["evaluate", "--model", str(gpt), "--data", "text", "--damage", "head:1:0",
                 "--json", str(tmp_path / "g.json")]) == 0
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["evaluation"]["n"] == 703 * 64  # per (input, token) pair
    import math

    assert result["evaluation"]["perplexity"] == pytest.approx(math.exp(result["evaluation"]["loss"]))
    assert 50 < result["evaluation"]["perplexity"] < 200  # an untrained model over 97 characters: near uniform
    assert main(["evaluate", "--model", str(path), "--data", "mnist5k", "--output-key", "nope"]) == 2
    assert "no 'nope'" in capsys.readouterr().err


def test_metric_on_attention_models_matches_a_dense_autograd_jacobian():
    """g·v through torch.func (jvp and vjp, math attention kernel) against Aᵀ(A v)/|X| with A from
    torch.autograd.functional.jacobian in float64; for GPT-2, over (input, token) pairs."""
    from torch.autograd.functional import jacobian

    from lesion.geometry.metric import MetricOperator
    from lesion.nets.outputs import logits_view

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=11, n_embd=8, n_layer=1, n_head=2,
                                                                 n_positions=8, bos_token_id=0, eos_token_id=0))
    tokens = torch.randint(0, 11, (2, 4), generator=torch.Generator().manual_seed(1))
    cases = [(logits_view(small.eval()).double(), tokens, 8),
             (logits_view(zoo.encoder()).double(), TOKENS[:2, :5], 2)]
    for model, x, pairs in cases:
        op = MetricOperator(model, x)
        assert op.inputs == pairs and op.weights.dtype == torch.float64
        w0 = op.weights.clone()
        A = jacobian(op.outputs_fn(x), w0).reshape(-1, op.n)
        v = torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(op.matvec(v), A.T @ (A @ v) / pairs, rtol=1e-8, atol=1e-10)
        assert op.quadratic(v) == pytest.approx(float((A @ v).square().sum() / pairs), rel=1e-8)


def test_cli_omega_and_report_stages_on_a_transformer(tmp_path):
    from lesion.cli import main

    path = tmp_path / "encoder.pt"
    torch.save(zoo.encoder(), path)
    assert main(["crash", "omega", "--model", str(path), "--data", "text-cls", "--layer", "encoder.layers.1.linear1",
                 "--faults", "1", "--inputs", "8", "--json", str(tmp_path / "o.json")]) == 0
    result = json.loads((tmp_path / "o.json").read_text())["results"][0]
    assert result["exact"] and result["sets"] == 32 and result["engine"] == "sites"
    # a deletion path on a model whose input shape lesion cannot guess (token ids): the data's inputs are used
    assert main(["breakdown", "--model", str(path), "--data", "text-cls", "--layer", "encoder.layers.0.linear1",
                 "--orders", "1", "--paths", "1", "--points", "3", "--inputs", "4"]) == 0
    assert main(["report", "--quick", "--model", str(path), "--data", "text-cls", "--out", str(tmp_path / "r"),
                 "--stages", "network,breakdown"]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert any(s["kind"] == "attention-head" for s in results["network"]["sites"])
    summary = {e["key"] for e in results["scorecard"]}  # the summary is built for any model
    assert "clean_accuracy" in summary and "tolerated_deletion:encoder.layers.0.linear1" in summary
    heads = [c for c in results["breakdown"]["curves"] if c["kind"] == "attention-head"]  # heads are sites too
    assert [c["layer"] for c in heads] == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert "tolerated_deletion:encoder.layers.1.self_attn" in summary
    # the path runs through linear1's units: their reader, linear2, is found through the functional ReLU
    path = results["breakdown"]["path"]
    assert results["breakdown"]["curves"] and "skipped" not in path and len(path["t"]) == len(path["speed"]) > 2


class _FunctionalRelu(nn.Module):
    """An MLP written as a class with its activation as a function (the common `F.relu(self.fc1(x))`)."""

    def __init__(self, mix: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2, self.mix = nn.Linear(6, 5), nn.Linear(5, 3), mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.fc2(h * h.sum(1, keepdim=True) if self.mix else h)  # mix: every unit reaches every column


def test_recovery_damage_set_through_an_activation_written_as_a_function():
    from lesion.geometry.damage_set import parse_delete

    torch.manual_seed(3)
    model = _FunctionalRelu().eval()
    x = torch.randn(4, 6)
    damage = parse_delete(model, "units:fc1:1,3", torch.Generator(), x)
    # by hand: fc1's rows 1 and 3 and their biases, fc2's columns 1 and 3 (named_parameters order)
    flat = torch.zeros(6 * 5 + 5 + 5 * 3 + 3, dtype=torch.bool)
    flat[:30].view(5, 6)[[1, 3]] = True
    flat[30:35][[1, 3]] = True
    flat[35:50].view(3, 5)[:, [1, 3]] = True
    assert torch.equal(damage.indices, torch.nonzero(flat).reshape(-1))
    mixed = _FunctionalRelu(mix=True).eval()
    with pytest.raises(LesionError, match="cannot tell which weights read"):
        parse_delete(mixed, "units:fc1:1", torch.Generator(), x)


def test_transformer_encoder_mlp_units_are_recoverable():
    from lesion.geometry.damage_set import parse_delete
    from lesion.geometry.recovery import RecoveryProblem, recover

    model = zoo.encoder()
    damage = parse_delete(model, "units:encoder.layers.0.linear1:0,5", torch.Generator(), TOKENS)
    assert damage.layer == "encoder.layers.0.linear1"
    layer = model.encoder.layers[0]
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    start = dict(zip(names, [sum(sizes[:i]) for i in range(len(sizes))], strict=True))
    expected = set()
    for unit in (0, 5):
        expected.update(start["encoder.layers.0.linear1.weight"] + unit * 16 + j for j in range(16))
        expected.add(start["encoder.layers.0.linear1.bias"] + unit)
        expected.update(start["encoder.layers.0.linear2.weight"] + i * 32 + unit for i in range(16))
    assert set(damage.indices.tolist()) == expected
    # the naive deletion equals the forward with the units removed by hand
    y = torch.randint(0, 6, (3,), generator=torch.Generator().manual_seed(1))
    problem = RecoveryProblem(model, TOKENS, y, TOKENS, y, damage)
    naive_w = recover(problem, ["naive"])[1]["naive"]
    hand = copy.deepcopy(model)
    with torch.no_grad():
        layer_h = hand.encoder.layers[0]
        layer_h.linear1.weight[[0, 5]] = 0.0
        layer_h.linear1.bias[[0, 5]] = 0.0
        layer_h.linear2.weight[:, [0, 5]] = 0.0
    flat_hand = torch.cat([p.detach().reshape(-1) for p in hand.parameters()])
    torch.testing.assert_close(naive_w, flat_hand)
    assert layer.linear1.weight.abs().sum() > 0  # the user's model untouched


def test_resnet_deletion_configs_at_every_site_match_the_loop():
    """The break-down stage's configurations (no damage beside growing crashes) on every site of resnet18, some
    of which vmap reports as a broadcast error at the in-place residual add."""
    model = zoo.resnet18()
    target = Target(model, example=IMAGES)
    for site in [s for s in target.sites if s.kind == "conv-channel"][::3]:
        configs = [realise(target, [], torch.Generator())] + [
            realise(target, [parse_damage(f"crash:{site.index}:count={k}")], torch.Generator().manual_seed(k))
            for k in (1, site.width // 2)]
        batched = batched_damaged_outputs(model, configs, IMAGES)
        loop = torch.stack([damaged_outputs(model, c, IMAGES) for c in configs])
        torch.testing.assert_close(batched, loop, atol=1e-4, rtol=1e-4, msg=site.name)


def test_trained_char_gpt2_damage_costs_accuracy_as_a_hand_edit_does():
    """A zoo transformer trained briefly on real text: well above the majority character, and a crash of its
    heads or MLP neurons costs what the same units removed by hand cost."""
    from lesion.train import evaluate, evaluate_outputs

    model, x, y = zoo.trained_gpt2()
    clean = evaluate(model, x, y).accuracy
    majority = float(torch.bincount(y.reshape(-1)).max() / y.numel())
    assert clean > majority + 0.1
    target = Target(model, example=x)
    heads = realise(target, [parse_damage("head:transformer.h.0.attn:0,1,2,3")], torch.Generator())
    neurons = realise(target, [parse_damage("crash:transformer.h.0.mlp.act:frac=1.0")], torch.Generator())
    by_heads = evaluate_outputs(damaged_outputs(model, heads, x), y).accuracy
    by_neurons = evaluate_outputs(damaged_outputs(model, neurons, x), y).accuracy
    hand = copy.deepcopy(model)
    with torch.no_grad():
        hand.transformer.h[0].attn.c_proj.weight.zero_()  # Conv1D: rows read the attention output (all heads)
    assert by_heads == pytest.approx(evaluate(hand, x, y).accuracy, abs=1e-12)
    hand = copy.deepcopy(model)
    with torch.no_grad():
        hand.transformer.h[0].mlp.c_proj.weight.zero_()  # every MLP neuron of block 0 silent
    assert by_neurons == pytest.approx(evaluate(hand, x, y).accuracy, abs=1e-12)
    assert clean - by_heads > 0.03 and clean - by_neurons > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name,data", [("resnet18", "mnist5k"), ("vit", "mnist5k"), ("bert", "text-cls"),
                                       ("gpt2", "text"), ("encoder", "text-cls")])
def test_quick_report_on_every_zoo_model(name, data, tmp_path):
    """Every stage of `lesion report --quick` runs on the zoo's real architectures, or says why not; the summary
    is built from what ran."""
    from lesion.cli import main

    path = tmp_path / f"{name}.pt"
    torch.save(getattr(zoo, name)(), path)
    out = tmp_path / "r"
    assert main(["report", "--quick", "--model", str(path), "--data", data, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for stage in ("network", "crash", "geometry", "breakdown", "recovery", "bitflips"):
        result = results[stage]
        assert "skipped" in result and result["skipped"] or len(result) > 2, (stage, result)
    assert results["scorecard"][0]["key"] == "clean_accuracy"
    page = (out / "report.html").read_text()
    assert page.index("<section id='summary'>") < page.index("<section id='network'>")


def test_batched_unit_damage_on_a_model_returning_a_model_output():
    """A transformers model used as it is (its forward returns a SequenceClassifierOutput): the batched engine
    reads its logits like the one-configuration path (it used to fail concatenating the outputs)."""
    from lesion.damage import Explicit, Target, UnitCrash, batched_damaged_outputs, damaged_outputs, realise

    model = zoo.bert()
    ids = torch.randint(0, 97, (6, 64), generator=torch.Generator().manual_seed(0))
    target = Target(model, example=ids[:2])
    site = target.site("bert.encoder.layer.0.intermediate.intermediate_act_fn")
    configs = [realise(target, [UnitCrash(site.name, Explicit(units))], torch.Generator())
               for units in ((0, 5), (7,), tuple(range(30)))]
    batched = batched_damaged_outputs(model, configs, ids)
    for config, out in zip(configs, batched, strict=True):
        assert torch.allclose(out, damaged_outputs(model, config, ids), atol=1e-5)


@pytest.mark.parametrize("build", ["vit", "gpt2"])
def test_every_engine_path_computes_attention_with_the_clean_outputs_kernel(build):
    """The clean outputs and the vmapped engine use the math attention kernel (`traceable`); the per-configuration
    path (hooks, activation faults) must too, or an undamaged configuration shows an error of a few 1e-8."""
    from lesion.damage.realised import Realised
    from lesion.functional import traceable

    model = getattr(zoo, build)()
    x = IMAGES if build == "vit" else TOKENS
    with torch.no_grad(), traceable(model):
        clean = logits(model(x))
    # (the default kernel differs from it by 6e-8 (ViT) and 1e-7 (GPT-2) on the development machine)
    assert torch.equal(damaged_outputs(model, Realised(), x).reshape(clean.shape), clean)


def test_a_campaign_on_a_model_output_says_how_to_read_its_logits():
    from lesion.damage.campaign import Campaign
    from lesion.nets import prepare_model

    model = zoo.gpt2()
    damage = [parse_damage("bitflip:ber=1e-6")]
    with pytest.raises(LesionError, match="returns a CausalLMOutputWithCrossAttentions, not a tensor"):
        Campaign(model, TOKENS, None, damage)
    viewed = prepare_model(model, TOKENS)[0]
    result = Campaign(viewed, TOKENS, None, damage).run(samples=3)
    assert len(result.samples) == 3 and result.inputs == len(TOKENS)
