"""Chains found by watching a forward (`traced_chain_leaves`), and clean boundaries that in-place leaves keep."""

import pytest
import torch
from torch import nn

import lesion.damage.clean_chain as clean_chain
import zoo
from lesion.damage import Realised, Target, parse_damage, realise
from lesion.damage.apply import batched_damaged_outputs, damaged_outputs
from lesion.damage.campaign import Campaign
from lesion.damage.chain import traced_chain_leaves
from lesion.damage.clean_chain import CleanChain

IMAGES = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))


class Passes(nn.Module):
    """A forward of its own that only hands one tensor from child to child."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3)

    def forward(self, x):
        h = self.a(x)
        h = self.act(h)
        return self.b(h)


class Scales(Passes):
    def forward(self, x):
        return self.b(self.act(self.a(x)) * 2)  # a computation between children


class ScalesInPlace(Passes):
    def forward(self, x):
        h = self.act(self.a(x))
        h.mul_(2)  # the same tensor, changed between children
        return self.b(h)


class GuardsInPlace(Passes):
    def forward(self, x):
        h = self.a(x)
        h.clamp_(-1e3, 1e3)  # changes nothing on clean values, everything on a damaged one
        return self.b(self.act(h))


class Tied(nn.Module):
    """A forward that passes one tensor from child to child, two of which share their weight."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b, self.c = nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Linear(6, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.c(self.b(self.act(self.a(x))))


class Twice(Passes):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        return self.b(self.a(self.a(x)))


class OwnParameter(Passes):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.b(self.act(self.a(x)))


@pytest.mark.parametrize("cls", [Scales, ScalesInPlace, GuardsInPlace, Twice, OwnParameter])
def test_a_forward_that_does_more_than_pass_one_tensor_is_one_leaf(cls):
    torch.manual_seed(0)
    model = cls().eval()
    assert traced_chain_leaves(model, torch.randn(4, 5)) == [("", model)]
    chain = CleanChain.of(model, torch.randn(9, 5))
    assert chain is not None and len(chain.leaves) == 1


def test_a_forward_that_passes_one_tensor_is_a_chain_with_exact_boundaries():
    torch.manual_seed(0)
    model = Passes().eval()
    x = torch.randn(9, 5)
    assert [n for n, _ in traced_chain_leaves(model, x[:2])] == ["a", "act", "b"]
    chain = CleanChain.of(model, x)
    with torch.no_grad():
        pre = model.a(x)
        assert bool((pre < 0).any())
        # the in-place ReLU did not overwrite its input's boundary
        assert torch.equal(chain.values[1], pre)
        assert torch.equal(chain.values[2], torch.relu(pre))
        assert torch.equal(chain.output, model(x))


def test_traced_leaves_that_miss_the_models_output_are_dropped(monkeypatch):
    torch.manual_seed(0)
    model = Passes().eval()
    x = torch.randn(9, 5)
    # a wrong split (the ReLU left out) computes another output: the model is then kept as one leaf
    monkeypatch.setattr(clean_chain, "traced_chain_leaves", lambda m, e: [("a", m.a), ("b", m.b)])
    chain = CleanChain.of(model, x)
    assert chain is not None and len(chain.leaves) == 1
    with torch.no_grad():
        assert torch.equal(chain.output, model(x))


def test_resnet_is_a_chain_of_stem_blocks_and_head():
    model = zoo.resnet18()
    names = [n for n, _ in traced_chain_leaves(model.eval(), IMAGES[:2])]
    assert names == ["conv1", "bn1", "act1", "maxpool", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                     "layer3.1", "layer4.0", "layer4.1", "global_pool.pool", "global_pool.flatten", "fc"]
    chain = CleanChain.of(model, IMAGES)
    with torch.no_grad():
        h = model.maxpool(model.act1(model.bn1(model.conv1(IMAGES))))
        h = model.layer3(model.layer2(model.layer1(h)))
        assert torch.equal(chain.values[names.index("layer4.0")], h)
        assert torch.equal(chain.output, model(IMAGES))


def test_an_in_place_activation_keeps_the_sparse_engine_exact():
    """Linear → ReLU(inplace=True) → Linear: the sparse engine reads the clean pre-activations from the
    boundary; an in-place ReLU used to overwrite them, and flips met negative pre-activations wrongly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 3)).eval()
    x = torch.randn(50, 8)
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage("bitflip:0.weight:ber=0.002")], torch.Generator().manual_seed(i))
               for i in range(6)]
    batched = batched_damaged_outputs(model, configs, x)
    loop = torch.stack([damaged_outputs(model, c, x) for c in configs])
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_resnet_bit_flips_and_crashes_from_their_first_damaged_block_match_the_loop():
    model = zoo.resnet18()
    target = Target(model, example=IMAGES)
    damages = [[parse_damage("bitflip:layer4.*:ber=2e-8")], [parse_damage("bitflip:fc.*:ber=1e-5")],
               [parse_damage("crash:layer3.1.act2:count=20")], [parse_damage("bitflip:ber=1e-8")]]
    configs = [realise(target, d, torch.Generator().manual_seed(i)) for i in range(3) for d in damages]
    assert all(c.changed or c.units for c in configs)
    batched = batched_damaged_outputs(model, configs, IMAGES)
    loop = torch.stack([damaged_outputs(model, c, IMAGES) for c in configs])
    torch.testing.assert_close(batched, loop, atol=1e-4, rtol=1e-4, equal_nan=True)
    # and one at a time (a chunk of one runs without vmap)
    alone = batched_damaged_outputs(model, configs, IMAGES, chunk_size=1)
    torch.testing.assert_close(alone, loop, atol=1e-4, rtol=1e-4, equal_nan=True)


def loop_of(model, configs, x):
    return torch.stack([damaged_outputs(model, c, x) for c in configs])


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_an_in_place_guard_between_children_acts_on_damaged_values():
    # clamp_ between children keeps the tensor and its clean values: only its version counter tells
    torch.manual_seed(0)
    model = GuardsInPlace().eval()
    x = torch.randn(20, 5)
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage(t)], seeded(0)) for t in ("stuck:a.weight:1,2:5000.0",
                                                                      "stuck:a.bias:3:-4000.0")]
    loop = loop_of(model, configs, x)
    assert float(loop.abs().max()) < 1e5  # the guard held the damaged values (to ±1e3) in the model's forward
    torch.testing.assert_close(batched_damaged_outputs(model, configs, x), loop)


def tied_sequential() -> nn.Sequential:
    torch.manual_seed(0)
    a, b = nn.Linear(6, 6), nn.Linear(6, 6)
    b.weight = a.weight
    return nn.Sequential(a, nn.Tanh(), b, nn.Linear(6, 3)).eval()


def test_a_parameter_shared_by_two_leaves_is_damaged_in_both():
    sequential = tied_sequential()
    x = torch.randn(20, 6)
    assert CleanChain.of(sequential, x) is None  # each leaf would see the damaged value under its own name only
    target = Target(sequential, example=x[:2])
    configs = [realise(target, [parse_damage(t)], seeded(0))
               for t in ("stuck:0.weight:1,2:3.0", "bitflip:0.weight:7:30")]
    for sparse in (True, False):
        torch.testing.assert_close(batched_damaged_outputs(sequential, configs, x, sparse=sparse),
                                   loop_of(sequential, configs, x), equal_nan=True)
    model = Tied().eval()
    assert len(CleanChain.of(model, x).leaves) == 1
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage("stuck:a.weight:1,2:3.0")], seeded(0))]
    torch.testing.assert_close(batched_damaged_outputs(model, configs, x), loop_of(model, configs, x))


def test_a_module_listed_twice_in_a_sequential_runs_twice():
    torch.manual_seed(0)
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(6, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 3)).eval()
    x = torch.randn(20, 6)
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage(t)], seeded(0)) for t in ("stuck:0.bias:3:-2.0", "stuck:2.bias:1:-3.0")]
    with torch.no_grad():
        assert not torch.equal(model(x), model[4](model[2](model[0](x)).relu()))  # the second ReLU matters
    torch.testing.assert_close(batched_damaged_outputs(model, configs, x), loop_of(model, configs, x))


def test_an_in_place_first_leaf_leaves_the_campaigns_clean_boundary_alone():
    # the dense engine sizes its chunks by running the leaves on one input of the boundary: on a copy
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.1, inplace=True), nn.Flatten(),
                          nn.Linear(64, 3)).eval()
    x = torch.randn(10, 2, 6, 6)
    chain = CleanChain.of(model, x)
    boundary = chain.values[2].clone()
    assert bool((boundary < 0).any())
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage("crash:2#0:count=1")], seeded(i)) for i in range(2)]
    torch.testing.assert_close(batched_damaged_outputs(model, configs, x, chain=chain), loop_of(model, configs, x))
    assert torch.equal(chain.values[2], boundary)


def test_undamaged_configurations_on_the_dense_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 5)).eval()
    x = torch.randn(16, 12)
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage("bitflip:0.weight:3:30")], seeded(0)), Realised(), Realised(),
               realise(target, [parse_damage("stuck:2.bias:1:3.0")], seeded(0))]
    for class_major in (False, True):
        torch.testing.assert_close(batched_damaged_outputs(model, configs, x, sparse=False, class_major=class_major),
                                   loop_of(model, configs, x), equal_nan=True)


def test_an_infinite_batch_norm_weight_gives_what_the_configuration_gives_alone():
    # vmap's batch-norm rule and the plain kernel differ where a weight is inf (finite against inf − inf = NaN)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Tanh(), nn.Linear(3, 2)).eval()
    x = torch.randn(6, 4)
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage(t)], seeded(i)) for i, t in enumerate(
        ["stuck:1.weight:0:inf", "stuck:1.weight:1:inf", "stuck:1.bias:2:0.5", "bitflip:1.weight:2:30"])]
    loop = loop_of(model, configs, x)
    assert bool(torch.isnan(loop[0]).any())
    for chunk in (None, 2):
        torch.testing.assert_close(batched_damaged_outputs(model, configs, x, chunk_size=chunk), loop, equal_nan=True)


class ChangesItsInput(nn.Module):
    """A forward that changes its input in place, and a site called twice (the whole-model path)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.act = nn.LeakyReLU(0.5, inplace=True), nn.Tanh()
        self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.act(self.b(self.act(self.a(self.pre(x))))))


def test_a_model_that_changes_its_input_in_place_sees_the_callers_values_every_time():
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    kept = x.clone()
    for model, texts in ((ChangesItsInput().eval(), ["crash:act#1:count=2", "stuck:b.bias:1:2.0"]),
                         (nn.Sequential(nn.LeakyReLU(0.5, inplace=True), nn.Linear(4, 6), nn.Tanh(),
                                        nn.Linear(6, 3)).eval(), ["act-stuck:2:rate=0.3:value=2:permanent"])):
        target = Target(model, example=x[:2], inputs=x)
        configs = [realise(target, [parse_damage(t)], seeded(i)) for i in range(3) for t in texts]
        reference = torch.stack([damaged_outputs(model, c, kept.clone()) for c in configs])
        for chunk in (None, 1):
            torch.testing.assert_close(batched_damaged_outputs(model, configs, x, chunk_size=chunk), reference)
        assert torch.equal(x, kept)


def test_token_outputs_of_a_chain_take_the_dense_way():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(6, 3, 5)
    target = Target(model, example=x[:2])
    configs = [Realised(), realise(target, [parse_damage("stuck:0.weight:3:2.0")], seeded(0))]
    batched = batched_damaged_outputs(model, configs, x)
    torch.testing.assert_close(batched, loop_of(model, configs, x))
    assert batched.shape == (2, 18, 4)
    y = torch.randint(0, 4, (6, 3), generator=seeded(1))
    result = Campaign(model, x, y, [parse_damage("stuck:0.weight:3:2.0")]).run(samples=2)
    expected = float((loop_of(model, configs[1:], x)[0].argmax(1) == y.reshape(-1)).double().mean())
    assert [s.accuracy for s in result.samples] == [expected, expected]
