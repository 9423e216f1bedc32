"""The sparse-difference engine (issue 16, item 1) against the dense engine and a forward with the weights
written in by hand, on every fault kind, and the campaign's vectorised metrics against float64 references."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lesion.damage import Realised, Target, batched_damaged_outputs, parse_damage, realise
from lesion.damage.campaign import Campaign, batch_metrics
from lesion.damage.clean_chain import CleanChain
from lesion.damage.sparse import SparseChain
from lesion.nets import MLP


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 40), nn.GELU(), nn.Dropout(0.2), nn.Linear(40, 30),
                          nn.Tanh(), nn.Identity(), nn.Linear(30, 5))
    return model.eval()


X = torch.rand(64, 3, 4, generator=seeded(1)) * 2 - 1

KINDS = [
    "bitflip:ber=0.0005",
    "bitflip:ber=0.0005:fmt=float16",
    "bitflip:ber=0.0005:fmt=bfloat16",
    "bitflip:ber=0.001:fmt=int8",
    "bitflip:1.weight:3,5:30",  # the exponent's top bit: a weight of about 1e38
    "bitflip:4.weight:0:31",
    "stuck:1.weight:7:inf",
    "stuck:4.weight:2,9:-inf",
    "stuck:7.weight:1,1:nan",
    "stuck:4.bias:3:2.5",
    "delete:weights:frac=0.01",
    "delete:1.weight:count=3",
    "crash:1:frac=0.3",
    "crash:2:count=4:value=1.5",
    "filter:2:count=1",
]


def hand_forward(model: nn.Module, config: Realised, x: torch.Tensor) -> torch.Tensor:
    """The damaged network built by hand: a copy with the damaged weights written in and a hook that sets
    the overridden units, run on x."""
    copy_ = copy.deepcopy(model)
    base = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in config.changed_params({k: v.detach() for k, v in base.items()}).items():
            dict(copy_.named_parameters())[name].copy_(value)
    modules = dict(copy_.named_modules())
    for override in config.units.values():
        modules[override.site.path].register_forward_hook(
            lambda m, i, out, o=override: out * o.keep + o.value)
    with torch.no_grad():
        return copy_(x)


def assert_same_numbers(sparse: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal up to float32 rounding of the values computed; NaN and ±inf at the same places."""
    assert torch.equal(torch.isnan(sparse), torch.isnan(reference))
    assert torch.equal(torch.isinf(sparse), torch.isinf(reference))
    infinite = torch.isinf(reference)
    assert torch.equal(sparse[infinite], reference[infinite])
    finite = torch.isfinite(reference)
    if finite.any():
        err = (sparse[finite] - reference[finite]).abs()
        assert float(err.max()) <= 1e-5 * max(float(reference[finite].abs().max()), 1.0)


@pytest.mark.parametrize("text", KINDS)
def test_every_fault_kind_equals_the_dense_path_and_the_hand_forward(net, text):
    target = Target(net, example=X[:2])
    configs = [realise(target, [parse_damage(text)], seeded(i)) for i in range(12)]
    chain = CleanChain.of(net, X)
    engine = SparseChain(chain, target.base)
    assert all(engine.plan(c) is not None for c in configs), "the sparse engine must take these"
    sparse = batched_damaged_outputs(net, configs, X, chain=chain)
    dense = batched_damaged_outputs(net, configs, X, sparse=False)
    hand = torch.stack([hand_forward(net, c, X) for c in configs])
    assert_same_numbers(sparse, dense)
    assert_same_numbers(sparse, hand)
    by_class = batched_damaged_outputs(net, configs, X, chain=chain, class_major=True)  # a campaign's layout
    assert by_class.shape == sparse.shape and by_class.permute(2, 0, 1).is_contiguous()
    assert_same_numbers(by_class, hand)


def test_composed_faults_and_chunks(net):
    target = Target(net, example=X[:2])
    damages = [parse_damage(t) for t in ("bitflip:ber=0.001", "crash:2:count=5", "stuck:7.bias:0:-3.0")]
    configs = [realise(target, damages, seeded(i)) for i in range(9)]
    dense = batched_damaged_outputs(net, configs, X, sparse=False)
    for chunk in (1, 4, None):
        assert_same_numbers(batched_damaged_outputs(net, configs, X, chunk_size=chunk), dense)
        assert_same_numbers(batched_damaged_outputs(net, configs, X, chunk_size=chunk, class_major=True), dense)


def test_changes_that_reach_nothing_are_dropped_and_nan_kept():
    # ReLU network, input column 2 always 0: a changed weight reading it changes nothing downstream (dropped
    # before the second layer's product); a NaN there still poisons its unit (0·NaN), and a configuration
    # whose changes all vanish gets the clean outputs
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.rand(50, 6, generator=seeded(4))
    x[:, 2] = 0.0
    target = Target(model, example=x[:2])
    texts = ["stuck:0.weight:5,2:7.0", "stuck:0.weight:5,2:7.0", "stuck:0.weight:1,2:nan",
             "stuck:0.weight:3,1:4.0", "stuck:0.weight:8,2:-3.0"]
    configs = [realise(target, [parse_damage(t)], seeded(0)) for t in texts]
    configs[1] = realise(target, [parse_damage(texts[1]), parse_damage("stuck:0.weight:4,0:2.0")], seeded(0))
    chain = CleanChain.of(model, x)
    assert all(SparseChain(chain, target.base).plan(c) is not None for c in configs)
    hand = torch.stack([hand_forward(model, c, x) for c in configs])
    for chunk in (1, None):
        sparse = batched_damaged_outputs(model, configs, x, chain=chain, chunk_size=chunk)
        assert_same_numbers(sparse, hand)
        assert torch.equal(sparse[0], chain.output) and torch.equal(sparse[4], chain.output)
    assert bool(torch.isnan(hand[2]).any()) and not bool(torch.isnan(hand[3]).any())


def test_sparse_layers_together_and_dense_layers_in_steps(net):
    # weight patches only: the sparse layers run for several chunks at once, the dense ones a chunk at a time
    # (SparseChain.outputs' dense_step); a tiny memory budget makes chunks of 1 or 2 configurations
    target = Target(net, example=X[:2])
    configs = [realise(target, [parse_damage("bitflip:ber=0.0005")], seeded(i)) for i in range(11)]
    configs.append(realise(target, [parse_damage("stuck:4.weight:2,9:-inf")], seeded(0)))
    dense = batched_damaged_outputs(net, configs, X, sparse=False)
    chain = CleanChain.of(net, X)
    per_config = 4 * max(v[0].numel() for v in chain.values[1:])
    for budget in (per_config, 2 * per_config):
        for class_major in (False, True):
            assert_same_numbers(batched_damaged_outputs(net, configs, X, chain=chain, memory_bytes=budget,
                                                        class_major=class_major), dense)
    engine = SparseChain(chain, target.base)
    planned = [(c, p) for c, p in zip(configs, engine.plan_all(configs), strict=True) if p is not None]
    assert len(planned) >= 8
    configs, plans = [c for c, _ in planned], [p for _, p in planned]
    whole = engine.outputs(configs, plans)
    for step in (1, 5):  # the same up to float32 rounding (a part's padding changes the products' blocking)
        assert_same_numbers(engine.outputs(configs, plans, dense_step=step), whole)
        assert_same_numbers(engine.outputs(configs, plans, class_major=True, dense_step=step), whole)


def test_dense_changes_go_the_dense_way(net):
    target = Target(net, example=X[:2])
    engine = SparseChain(CleanChain.of(net, X), target.base)
    assert engine.plan(realise(target, [parse_damage("gauss:0.1")], seeded(0))) is None
    assert engine.plan(realise(target, [parse_damage("delete:weights:frac=0.5")], seeded(0))) is None
    assert engine.plan(realise(target, [parse_damage("bitflip:ber=0.0005")], seeded(0))) is not None
    # a mix of both in one call still equals the dense path, in the order given
    configs = [realise(target, [parse_damage(t)], seeded(i))
               for i, t in enumerate(["gauss:0.1", "bitflip:ber=0.001", "delete:weights:frac=0.5", "crash:1:count=2"])]
    assert_same_numbers(batched_damaged_outputs(net, configs, X),
                        torch.stack([hand_forward(net, c, X) for c in configs]))


def test_planning_a_batch_equals_planning_each_configuration(net):
    """`plan_all` (patched entries of a whole batch gathered and divided at once) gives every configuration the
    plan `plan` gives it alone: the same first leaf, rows, columns, deltas and overrides, or None for both."""
    target = Target(net, example=X[:2])
    engine = SparseChain(CleanChain.of(net, X), target.base, max_fraction=0.02)
    texts = ["bitflip:ber=0.002", "stuck:4.bias:3:2.5", "bitflip:7.weight:1,2:30", "crash:1:count=2",
             "delete:weights:frac=0.5", "bitflip:ber=0.05", "gauss:0.1", "stuck:7.weight:1,1:nan"]
    configs = [realise(target, [parse_damage(t)], seeded(i)) for i in range(24) for t in texts[i % len(texts):][:1]]
    together = engine.plan_all(configs)
    assert sum(p is None for p in together) >= 3 and sum(p is not None for p in together) >= 12
    for config, plan in zip(configs, together, strict=True):
        alone = engine.plan(config)
        assert (plan is None) == (alone is None)
        if plan is None:
            continue
        assert (plan.first, set(plan.changes), plan.inputs.keys(), plan.outputs.keys()) == \
            (alone.first, set(alone.changes), alone.inputs.keys(), alone.outputs.keys())
        for i, entries in plan.changes.items():
            for field in ("rows", "cols", "delta", "bias_rows", "bias_delta"):
                torch.testing.assert_close(getattr(entries, field), getattr(alone.changes[i], field), rtol=0, atol=0,
                                           equal_nan=True)


def test_convolutions_before_the_damage_are_read_from_the_cache():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.ReLU(),
                          nn.Linear(8, 4)).eval()
    x = torch.rand(16, 1, 6, 6, generator=seeded(3))
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage("bitflip:3.weight:ber=0.001")], seeded(i)) for i in range(6)]
    engine = SparseChain(CleanChain.of(model, x), target.base)
    assert all(engine.plan(c) is not None for c in configs)
    conv = realise(target, [parse_damage("bitflip:0.weight:0:30")], seeded(0))
    assert engine.plan(conv) is None  # a conv layer after the damage: dense
    configs.append(conv)
    assert_same_numbers(batched_damaged_outputs(model, configs, x),
                        torch.stack([hand_forward(model, c, x) for c in configs]))


def test_patches_compose_like_whole_tensors(net):
    target = Target(net, example=X[:2])
    stuck_then_flip = realise(target, [parse_damage("stuck:1.weight:3:0.75"), parse_damage("bitflip:1.weight:3:31")],
                              seeded(0))
    assert "1.weight" in stuck_then_flip.patches and not stuck_then_flip.params
    assert float(stuck_then_flip.param("1.weight", target.base).view(-1)[3]) == -0.75
    whole_then_patch = realise(target, [parse_damage("gauss:1.weight:0.5"), parse_damage("stuck:1.weight:4:2.0")],
                               seeded(0))
    assert "1.weight" in whole_then_patch.params and "1.weight" not in whole_then_patch.patches
    assert float(whole_then_patch.param("1.weight", target.base).view(-1)[4]) == 2.0
    assert len(whole_then_patch.faults) == 2


def test_batch_metrics_against_float64_cross_entropy():
    outputs = torch.randn(4, 30, 6, generator=seeded(4)) * 3
    outputs[2, 5, 1] = float("nan")
    clean = torch.randn(30, 6, generator=seeded(5))
    y = torch.randint(0, 6, (30,), generator=seeded(6))
    error, accuracy, loss = batch_metrics(outputs, clean, y)
    for k in range(4):
        ref_error = float((outputs[k].double() - clean.double()).abs().amax(1).mean())
        ref_loss = float(nn.functional.cross_entropy(outputs[k].double(), y))
        finite = torch.isfinite(outputs[k]).all(1)
        ref_acc = float(((outputs[k].argmax(1) == y) & finite).double().mean())
        assert accuracy[k] == ref_acc
        if k == 2:
            assert np.isnan(loss[k]) and np.isnan(error[k])
        else:
            assert abs(error[k] - ref_error) <= 1e-6 * ref_error
            assert abs(loss[k] - ref_loss) <= 1e-6 * ref_loss


def test_batch_metrics_of_half_precision_outputs_do_not_overflow():
    # finite float16 outputs whose difference from the clean ones is beyond float16's range (65,504)
    clean = torch.tensor([[-40.0, 2.0, 1.0], [0.5, 3.0, -1.0]], dtype=torch.float16)
    damaged = torch.tensor([[[65500.0, 2.0, 1.0], [-65000.0, 3.0, 60000.0]]], dtype=torch.float16)
    y = torch.tensor([0, 2])
    for dtype in (torch.float16, torch.bfloat16):
        error, accuracy, loss = batch_metrics(damaged.to(dtype), clean.to(dtype), y)
        d, c = damaged.to(dtype).double()[0], clean.to(dtype).double()
        assert error[0] == pytest.approx(float((d - c).abs().amax(1).mean()), rel=1e-6)
        assert accuracy[0] == 1.0
        assert loss[0] == pytest.approx(float(nn.functional.cross_entropy(d, y)), rel=1e-6, abs=1e-6)


def test_campaign_figures_equal_the_dense_engine():
    torch.manual_seed(1)
    model = MLP(10, [16, 12], 4).eval()
    x = torch.rand(50, 10, generator=seeded(7))
    y = torch.randint(0, 4, (50,), generator=seeded(8))
    damage = [parse_damage("bitflip:ber=0.002")]
    result = Campaign(model, x, y, damage, seed=3).run(samples=20, batch=8)
    target = Target(model)
    from lesion.damage.campaign import sample_seed

    configs = [realise(target, damage, seeded(sample_seed(3, i))) for i in range(20)]
    dense = batched_damaged_outputs(model, configs, x, sparse=False)
    clean = model(x).detach()
    for s, out in zip(result.samples, dense, strict=True):
        ok = torch.isfinite(out).all(1)
        assert s.accuracy == float(((out.argmax(1) == y) & ok).double().mean())
        if np.isfinite(s.output_error):
            ref = float((out.double() - clean.double()).abs().amax(1).mean())
            assert abs(s.output_error - ref) <= 1e-5 * max(ref, 1.0)


def test_a_difference_that_overflows_where_the_damaged_value_does_not_takes_the_dense_path():
    # float16: a bias set to 65,504 from -100 is a finite value but a difference of 65,604, beyond float16's range
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).half().eval()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([-100.0, 0.5, 0.25]))
        model[2].weight.mul_(1e-4)
    x = torch.randn(8, 4).half()
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage(t)], seeded(0)) for t in ("stuck:0.bias:0:65504", "stuck:0.bias:1:2.0")]
    chain = CleanChain.of(model, x)
    engine = SparseChain(chain, target.base)
    assert engine.plan_all(configs)[0] is None and engine.plan(configs[0]) is None
    assert engine.plan_all(configs)[1] is not None
    hand = torch.stack([hand_forward(model, c, x) for c in configs])
    assert bool(torch.isfinite(hand).all())
    torch.testing.assert_close(batched_damaged_outputs(model, configs, x, chain=chain), hand)


def assert_engine_equals_each_network(model: nn.Module, x: torch.Tensor, spec: str, count: int) -> None:
    """`count` configurations of `spec`: the engine's outputs equal each damaged network's own, to the bit."""
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage(spec)], seeded(i)) for i in range(count)]
    outputs = batched_damaged_outputs(model, configs, x)
    hand = torch.stack([hand_forward(model, c, x) for c in configs]).reshape(outputs.shape)
    assert torch.equal(outputs.isnan(), hand.isnan())
    assert torch.equal(outputs.nan_to_num(), hand.nan_to_num())


def test_half_precision_models_give_the_damaged_networks_own_outputs():
    """float16/bfloat16: the sparse engine added differences rounded to the model's few bits to clean values
    rounded alike (3 of 36,000 predictions of a float16 MLP changed); such models take the dense path."""
    torch.manual_seed(0)
    for dtype, fmt in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))
        model = model.to(dtype).eval()
        assert_engine_equals_each_network(model, torch.randn(200, 12).to(dtype), f"bitflip:ber=2e-3:fmt={fmt}", 20)


def test_half_precision_token_models_run_each_configuration_alone_too():
    """The guard looks at the model's dtype, not the inputs': token ids are int64 while every layer is float16."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Embedding(50, 12), nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 5)).half().eval()
    assert_engine_equals_each_network(model, torch.randint(0, 50, (60, 7)), "bitflip:ber=2e-3:fmt=float16", 20)


class _GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.gru, self.head = nn.Embedding(20, 8), nn.GRU(8, 16, batch_first=True), nn.Linear(16, 5)

    def forward(self, x):
        out, _ = self.gru(self.embed(x))
        return self.head(out[:, -1])


def test_a_model_whose_operation_vmap_cannot_batch_runs_configuration_by_configuration():
    """aten::gru has no batching rule: the engine falls back to one forward per configuration (it raised
    "Batching rule not implemented"), giving each damaged network's own outputs."""
    torch.manual_seed(0)
    model = _GRUNet().eval()
    assert_engine_equals_each_network(model, torch.randint(0, 20, (30, 6)), "bitflip:ber=1e-3", 6)
