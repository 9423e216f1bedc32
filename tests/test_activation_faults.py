"""Activation faults (issue 17, item 1) against forwards with hand-written hooks that flip or set the values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lesion.damage import Target, batched_damaged_outputs, damaged_outputs, parse_damage, realise
from lesion.damage.campaign import Campaign
from lesion.errors import LesionError
from lesion.nets import build_net


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 15), nn.Tanh(),
                          nn.Linear(15, 4)).eval()
    return model, torch.randn(40, 3, 4)


class _Tokens(nn.Module):
    """A per-token model: (N, T) token ids → (N, T, 5) logits, a site of shape (T, 8) per input."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc, self.act, self.out = nn.Embedding(20, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(self.emb(x))))


def _flip_float32(value: float, mask: int) -> float:
    word = np.array([value], dtype=np.float32).view(np.uint32) ^ np.uint32(mask)
    return float(word.view(np.float32)[0])


def _by_hand(model: nn.Module, module: nn.Module, x: torch.Tensor, change) -> torch.Tensor:
    """The model's outputs with `change(values)` (values: (N, per-input) float64 numpy, edited in place) applied
    to `module`'s output by a hook."""

    def hook(m, args, output):
        values = output.detach().double().numpy().reshape(len(output), -1).copy()
        change(values)
        return torch.from_numpy(values).reshape(output.shape).to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        handle.remove()
    return out.reshape(-1, out.shape[-1])


def _entries(config) -> list[list[int]]:
    (fault,) = config.faults
    return fault["entries"]


def test_transient_bit_flips_equal_a_hook_flipping_those_bits():
    model, x = _mlp()
    target = Target(model, example=x[:2], inputs=x)
    config = realise(target, [parse_damage("act-bitflip:2#0:ber=1e-3")], torch.Generator().manual_seed(3))
    entries = _entries(config)
    assert 5 < len(entries) < 60 and {e[0] for e in entries} != set(range(len(x)))  # some inputs untouched

    def change(values):
        for i, p, mask in entries:
            values[i, p] = _flip_float32(np.float32(values[i, p]), mask)

    expected = _by_hand(model, model[2], x, change)
    torch.testing.assert_close(damaged_outputs(model, config, x), expected, equal_nan=True, rtol=0, atol=0)
    # the batched path runs only the hit inputs (another batch size: float32 rounding), clean rows elsewhere
    torch.testing.assert_close(batched_damaged_outputs(model, [config], x)[0], expected, equal_nan=True)


def test_batched_transient_configurations_equal_one_by_one_on_a_conv_net():
    model, _ = build_net("cnn", (1, 28, 28), 10, seed=0)
    model.eval()
    x = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    target = Target(model, example=x[:2], inputs=x)
    site = target.sites[0]
    configs = [realise(target, [parse_damage(f"act-bitflip:{site.name}:ber=2e-5"),
                                parse_damage(f"act-stuck:{site.name}:rate=0.001:value=50")],
                       torch.Generator().manual_seed(s)) for s in range(12)]
    assert all(c.transient_only for c in configs)
    reference = torch.stack([damaged_outputs(model, c, x) for c in configs])
    batched = batched_damaged_outputs(model, configs, x)
    torch.testing.assert_close(batched, reference, equal_nan=True)
    assert (batched != damaged_outputs(model, configs[0].__class__(), x)).any()


def test_per_token_faults_on_a_sequence_model():
    torch.manual_seed(1)
    model = _Tokens().eval()
    x = torch.randint(0, 20, (30, 6))
    target = Target(model, example=x[:2], inputs=x)
    config = realise(target, [parse_damage("act-bitflip:act:ber=0.002:bits=30,31")],
                     torch.Generator().manual_seed(0))
    entries = _entries(config)
    assert entries and all(mask in (1 << 30, 1 << 31, 3 << 30) for _, _, mask in entries)

    def change(values):
        for i, p, mask in entries:
            values[i, p] = _flip_float32(np.float32(values[i, p]), mask)

    expected = _by_hand(model, model.act, x, change)
    torch.testing.assert_close(batched_damaged_outputs(model, [config], x)[0], expected, equal_nan=True)


def test_batched_per_token_faults_at_two_sites_equal_one_by_one():
    """Several configurations, faults at two sites (one of them twice, in order), some configurations hitting no
    input at all, on a per-token model: the batched evaluation over the hit inputs equals each configuration's
    full forward."""
    torch.manual_seed(2)
    model = _Tokens().eval()
    x = torch.randint(0, 20, (40, 6))
    target = Target(model, example=x[:2], inputs=x)
    damages = [parse_damage(s) for s in ("act-bitflip:act:ber=5e-6", "act-stuck:act@in:rate=0.0002:value=9",
                                         "act-stuck:act:rate=0.0002:value=-4")]
    configs = [realise(target, damages, torch.Generator().manual_seed(s)) for s in range(16)]
    hits = [sum(len(f["entries"]) for f in c.faults) for c in configs]
    assert 0 in hits and max(hits) >= 2
    reference = torch.stack([damaged_outputs(model, c, x) for c in configs])
    torch.testing.assert_close(batched_damaged_outputs(model, configs, x), reference, equal_nan=True)


def test_permanent_faults_hit_the_same_positions_on_every_input():
    model, x = _mlp()
    target = Target(model, example=x[:2], inputs=x)
    config = realise(target, [parse_damage("act-stuck:4#0:rate=0.2:value=-3:permanent")],
                     torch.Generator().manual_seed(1))
    (fault,) = config.faults
    positions = [p for p, in fault["entries"]]
    assert positions and not config.transient_only

    def change(values):
        values[:, positions] = -3.0

    torch.testing.assert_close(batched_damaged_outputs(model, [config], x)[0], _by_hand(model, model[4], x, change))


def test_int8_flips_the_stored_integer_with_the_sites_scale():
    model, x = _mlp()
    target = Target(model, example=x[:2], inputs=x)
    config = realise(target, [parse_damage("act-bitflip:2#0:ber=2e-3:fmt=int8")], torch.Generator().manual_seed(5))
    (fault,) = config.faults
    with torch.no_grad():
        scale = float(model[:3](x).abs().max()) / 127.0
    assert fault["scale"] == pytest.approx(scale, rel=1e-12)

    def change(values):
        for i, p, mask in fault["entries"]:
            q = int(np.clip(np.round(np.float32(values[i, p]) / scale), -128, 127))
            flipped = np.array([q], dtype=np.int8).view(np.uint8) ^ np.uint8(mask)
            values[i, p] = np.float32(float(flipped.view(np.int8)[0]) * scale)

    torch.testing.assert_close(damaged_outputs(model, config, x), _by_hand(model, model[2], x, change))


def test_mixed_configuration_equals_its_parts_applied_by_hand():
    model, x = _mlp()
    target = Target(model, example=x[:2], inputs=x)
    damages = [parse_damage("bitflip:3.weight:4:30"), parse_damage("crash:4#0:3,7"),
               parse_damage("act-bitflip:2#0:ber=1e-3"), parse_damage("act-bitflip:2#0:ber=0.01:bits=31")]
    config = realise(target, damages, torch.Generator().manual_seed(2))
    flips = [e for f in config.faults if f["kind"] == "act-bitflip" for e in f["entries"]]
    by_hand = __import__("copy").deepcopy(model)
    with torch.no_grad():
        w = by_hand[3].weight.view(-1)
        w[4] = _flip_float32(float(w[4]), 1 << 30)

    def crash(m, args, output):
        output = output.clone()
        output[:, [3, 7]] = 0.0
        return output

    handle = by_hand[4].register_forward_hook(crash)

    def change(values):  # the two act-bitflip faults one after the other: a bit flipped twice is restored
        for i, p, mask in flips:
            values[i, p] = _flip_float32(np.float32(values[i, p]), mask)

    try:
        expected = _by_hand(by_hand, by_hand[2], x, change)
    finally:
        handle.remove()
    assert not config.transient_only
    torch.testing.assert_close(batched_damaged_outputs(model, [config], x)[0], expected, equal_nan=True)


def test_campaign_with_transient_faults_is_reproducible_and_replays():
    from lesion.damage.campaign import replay

    model, x = _mlp()
    y = torch.randint(0, 4, (len(x),))
    first = Campaign(model, x, y, [parse_damage("act-bitflip:2#0:ber=1e-3")], seed=4).run(samples=20)
    second = Campaign(model, x, y, [parse_damage("act-bitflip:2#0:ber=1e-3")], seed=4).run(samples=20)
    assert [s.accuracy for s in first.samples] == [s.accuracy for s in second.samples]
    fault_list = {"damage": list(first.damage), "seed": first.seed, "model_digest": first.model_digest,
                  "samples": [{"index": s.index, "seed": s.seed, "faults": list(s.faults)} for s in first.samples]}
    replayed = replay(model, x, y, __import__("json").loads(__import__("json").dumps(fault_list)))
    np.testing.assert_array_equal([s.output_error for s in replayed.samples], [s.output_error for s in first.samples])
    # on fewer inputs the faults are drawn otherwise: the refusal says so and how to replay
    with pytest.raises(LesionError, match="on 20 inputs than on the 40 it was drawn on: replay it with --inputs 40"):
        replay(model, x[:20], y[:20], {**fault_list, "inputs": len(x)})


def test_bad_activation_faults_are_refused_with_one_line():
    model, x = _mlp()
    drawn = realise(Target(model, example=x[:2], inputs=x), [parse_damage("act-stuck:2#0:rate=0.2")],
                    torch.Generator().manual_seed(0))
    with pytest.raises(LesionError, match="drawn for more inputs"):
        damaged_outputs(model, drawn, x[:10])
    with pytest.raises(LesionError, match="drawn for more inputs"):
        batched_damaged_outputs(model, [drawn], x[:10])
    with pytest.raises(LesionError, match="evaluation inputs"):
        realise(Target(model, example=x[:2]), [parse_damage("act-bitflip:2:ber=0.1")], torch.Generator())
    with pytest.raises(LesionError, match="needs ber"):
        parse_damage("act-bitflip:2")
    with pytest.raises(LesionError, match="bit 9"):
        parse_damage("act-bitflip:2:ber=0.1:fmt=int8:bits=9")
    with pytest.raises(LesionError, match="rate must be"):
        parse_damage("act-stuck:2:rate=1.5")
