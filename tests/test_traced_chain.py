"""Chains found by watching a forward (`traced_chain_leaves`), and clean boundaries that in-place leaves keep."""

import pytest
import torch
from torch import nn

import lesion.damage.clean_chain as clean_chain
import zoo
from lesion.damage import Target, parse_damage, realise
from lesion.damage.apply import batched_damaged_outputs, damaged_outputs
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


@pytest.mark.parametrize("cls", [Scales, ScalesInPlace, Twice, OwnParameter])
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
