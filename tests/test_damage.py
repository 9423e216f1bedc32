"""Damage engine: every kind against a hand-edited copy of the model; batched against the loop; bad SPECs."""

import copy
import math
import struct

import numpy as np
import pytest
import torch
from torch import nn

from lesion.damage import (
    Realised,
    Target,
    batched_damaged_outputs,
    damaged_outputs,
    parse_damage,
    realise,
)
from lesion.errors import LesionError
from lesion.nets import MLP, ConvNet

ATOL = 1e-6


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP(6, [5, 4], 3, activation="sigmoid", k=2.0).eval()  # φ(0) = 0.5: a crash is not φ of zero input


@pytest.fixture
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return ConvNet(1, 8, 3, (4, "M", 6), (7,)).eval()


X_MLP = torch.rand(9, 6, generator=seeded(1))
X_CNN = torch.rand(5, 1, 8, 8, generator=seeded(2))


def outputs_of(model: nn.Module, text: str, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, Realised]:
    realised = realise(Target(model), [parse_damage(text)], seeded(seed))
    return damaged_outputs(model, realised, x), realised


def untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    same = all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    no_hooks = all(not m._forward_hooks for m in model.modules())
    return same and no_hooks


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_unit_sites_of_reference_nets(mlp, cnn):
    assert [(s.name, s.width) for s in Target(mlp).sites] == [("act1", 5), ("act2", 4)]
    assert [(s.name, s.layer, s.width, s.kind, s.axis) for s in Target(cnn).sites] == [
        ("features.act1", "features.conv1", 4, "conv-channel", 1), ("features.act2", "features.conv2", 6,
                                                                     "conv-channel", 1),
        ("classifier.act1", "classifier.fc1", 7, "linear", 1)]


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_crash_equals_editing_the_next_layer(mlp, value):
    before = snapshot(mlp)
    out, realised = outputs_of(mlp, f"crash:1:1,3:value={value}", X_MLP)
    hand = copy.deepcopy(mlp)
    with torch.no_grad():  # unit u outputs `value`: its column in fc2 contributes value·W[:, u] through the bias
        for u in (1, 3):
            hand.fc2.bias += value * hand.fc2.weight[:, u]
            hand.fc2.weight[:, u] = 0.0
    torch.testing.assert_close(out, hand(X_MLP), atol=ATOL, rtol=0)
    assert realised.faults[0]["indices"] == [1, 3]
    assert untouched(mlp, before)


def test_crash_by_module_name_and_fraction(mlp):
    out, realised = outputs_of(mlp, "crash:act2:frac=0.5", X_MLP, seed=4)
    units = realised.faults[0]["indices"]
    assert len(units) == 2
    hand = copy.deepcopy(mlp)
    with torch.no_grad():
        hand.out.weight[:, units] = 0.0
    torch.testing.assert_close(out, hand(X_MLP), atol=ATOL, rtol=0)


def test_conv_channel_crash_equals_zeroing_the_next_conv_inputs(cnn):
    out, _ = outputs_of(cnn, "crash:1:0,2", X_CNN)
    hand = copy.deepcopy(cnn)
    with torch.no_grad():  # ReLU then max-pool keep a zero channel zero: conv2 reads nothing from it
        hand.features.conv2.weight[:, [0, 2]] = 0.0
    torch.testing.assert_close(out, hand(X_CNN), atol=ATOL, rtol=0)


def test_filter_deletion(cnn):
    before = snapshot(cnn)
    out, _ = outputs_of(cnn, "filter:features.conv2:1,5", X_CNN)
    hand = copy.deepcopy(cnn)
    with torch.no_grad():
        hand.features.conv2.weight[[1, 5]] = 0.0
        hand.features.conv2.bias[[1, 5]] = 0.0
    torch.testing.assert_close(out, hand(X_CNN), atol=ATOL, rtol=0)
    assert untouched(cnn, before)


def test_random_weight_deletion(mlp):
    out, realised = outputs_of(mlp, "delete:fc1.weight:frac=0.4", X_MLP, seed=3)
    chosen = realised.faults[0]["indices"]
    assert len(chosen) == round(0.4 * 30) == len(set(chosen))
    hand = copy.deepcopy(mlp)
    with torch.no_grad():
        hand.fc1.weight.view(-1)[chosen] = 0.0
    torch.testing.assert_close(out, hand(X_MLP), atol=ATOL, rtol=0)


def test_smallest_magnitude_deletion_across_parameters(mlp):
    out, _ = outputs_of(mlp, "delete:*.weight:smallest=0.25", X_MLP)
    hand = copy.deepcopy(mlp)
    weights = [hand.fc1.weight, hand.fc2.weight, hand.out.weight]
    flat = np.concatenate([w.detach().numpy().ravel() for w in weights])
    drop = set(np.argsort(np.abs(flat), kind="stable")[: round(0.25 * flat.size)].tolist())
    offset = 0
    with torch.no_grad():
        for w in weights:
            for i in range(w.numel()):
                if offset + i in drop:
                    w.view(-1)[i] = 0.0
            offset += w.numel()
    torch.testing.assert_close(out, hand(X_MLP), atol=ATOL, rtol=0)


def test_sphere_and_gauss_perturbations(mlp):
    target = Target(mlp)
    n = sum(p.numel() for p in mlp.parameters())
    for sigma in (0.1, 2.0):
        realised = realise(target, [parse_damage(f"sphere:{sigma}")], seeded(5))
        du = torch.cat([(realised.params[k] - target.base[k]).flatten().double() for k in target.base])
        assert float(du.norm()) == pytest.approx(sigma, rel=1e-5)
        hand = copy.deepcopy(mlp)
        hand.load_state_dict({k: v.float() for k, v in realised.params.items()})
        torch.testing.assert_close(damaged_outputs(mlp, realised, X_MLP), hand(X_MLP), atol=ATOL, rtol=0)
    # gauss: E|du|² = σ² (SPEC §1, [G] Eq. 9); 2,000 draws, |du|²/σ² ~ χ²_n/n with variance 2/n
    squares = []
    gen = seeded(6)
    for _ in range(2000):
        realised = realise(target, [parse_damage("gauss:0.5")], gen)
        squares.append(sum(float(((realised.params[k] - target.base[k]).double() ** 2).sum()) for k in target.base))
    mean = np.mean(squares) / 0.25
    assert abs(mean - 1.0) < 4 * math.sqrt(2 / n) / math.sqrt(2000)


def test_perturbation_of_one_parameter_leaves_the_others(mlp):
    realised = realise(Target(mlp), [parse_damage("gauss:out.bias:1.0")], seeded(0))
    assert list(realised.params) == ["out.bias"]


def test_explicit_direction(mlp, tmp_path):
    n = sum(p.numel() for p in mlp.parameters())
    du = np.random.default_rng(0).standard_normal(n)
    np.save(tmp_path / "du.npy", du)
    out, _ = outputs_of(mlp, f"direction:{tmp_path / 'du.npy'}:0.3", X_MLP)
    hand = copy.deepcopy(mlp)
    offset = 0
    with torch.no_grad():
        for p in hand.parameters():
            p += torch.from_numpy(du[offset:offset + p.numel()] * 0.3 / np.linalg.norm(du)).reshape(p.shape).float()
            offset += p.numel()
    torch.testing.assert_close(out, hand(X_MLP), atol=ATOL, rtol=0)


def struct_flip(value: float, bit: int) -> float:
    word = struct.unpack("<I", struct.pack("<f", value))[0] ^ (1 << bit)
    return struct.unpack("<f", struct.pack("<I", word))[0]


@pytest.mark.parametrize("bit", [31, 30, 22, 0])
def test_single_bit_flip(mlp, bit):
    out, realised = outputs_of(mlp, f"bitflip:fc2.weight:1,3:{bit}", X_MLP)
    hand = copy.deepcopy(mlp)
    with torch.no_grad():
        hand.fc2.weight[1, 3] = struct_flip(float(mlp.fc2.weight[1, 3]), bit)
    assert realised.faults[0]["index"] == 1 * 5 + 3
    if bit == 31:
        assert realised.faults[0]["after"] == -realised.faults[0]["before"]
    torch.testing.assert_close(out, hand(X_MLP), atol=ATOL, rtol=0, equal_nan=True)


def test_random_bit_flips_at_a_rate(mlp):
    out, realised = outputs_of(mlp, "bitflip:weights:ber=0.01:bits=20,21,22", X_MLP, seed=2)
    codes = realised.faults[0]["indices"]
    assert realised.faults[0]["flips"] == len(codes) > 0
    hand = copy.deepcopy(mlp)
    weights = [hand.fc1.weight, hand.fc2.weight, hand.out.weight]
    sizes = np.cumsum([0] + [w.numel() for w in weights])
    with torch.no_grad():
        for code in codes:
            index, bit = divmod(code, 64)
            assert bit in (20, 21, 22)
            which = int(np.searchsorted(sizes, index, side="right") - 1)
            w = weights[which].view(-1)
            w[index - sizes[which]] = struct_flip(float(w[index - sizes[which]]), bit)
    torch.testing.assert_close(out, hand(X_MLP), atol=ATOL, rtol=0)


def test_stuck_at(mlp):
    out, _ = outputs_of(mlp, "stuck:fc1.bias:2:-3.5", X_MLP)
    hand = copy.deepcopy(mlp)
    with torch.no_grad():
        hand.fc1.bias[2] = -3.5
    torch.testing.assert_close(out, hand(X_MLP), atol=ATOL, rtol=0)
    inf_out, _ = outputs_of(mlp, "stuck:out.bias:0:inf", X_MLP)
    assert torch.isinf(inf_out[:, 0]).all()


def test_damages_compose_in_order(mlp):
    target = Target(mlp)
    realised = realise(target, [parse_damage("stuck:fc1.weight:0:5.0"), parse_damage("delete:fc1.weight:idx=0")],
                       seeded(0))
    assert float(realised.param("fc1.weight", target.base).view(-1)[0]) == 0.0
    assert len(realised.faults) == 2


def mixed_configs(model: nn.Module, count: int) -> list[Realised]:
    target = Target(model)
    gen = seeded(11)
    specs = ["crash:1:frac=0.4", "delete:weights:frac=0.3", "gauss:0.5", "crash:2:count=2",
             "bitflip:ber=0.002:fmt=float32"]  # float64 weights have no format of their own here
    return [realise(target, [parse_damage(specs[i % len(specs)])], gen) for i in range(count)]


@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_batched_evaluation_agrees_with_the_loop(mlp, chunk):
    model = copy.deepcopy(mlp).double()
    x = X_MLP.double()
    configs = mixed_configs(model, 13)
    before = snapshot(model)
    batched = batched_damaged_outputs(model, configs, x, chunk_size=chunk, input_batch=4)
    loop = torch.stack([damaged_outputs(model, c, x) for c in configs])
    torch.testing.assert_close(batched, loop, atol=1e-12, rtol=1e-12)
    assert untouched(model, before)


def test_batched_float32_predictions_match_the_loop(cnn):
    configs = mixed_configs(cnn, 10)
    batched = batched_damaged_outputs(cnn, configs, X_CNN)
    loop = torch.stack([damaged_outputs(cnn, c, X_CNN) for c in configs])
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=1e-5)
    assert torch.equal(batched.argmax(-1), loop.argmax(-1))


class Residual(nn.Module):
    """Not a chain: the engine must run the whole model per configuration."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(x + self.act(self.fc1(x)))


def test_non_chain_models_and_late_damage_prefix_sharing(mlp):
    torch.manual_seed(3)
    residual = Residual().double()
    x = X_MLP.double()
    configs = [realise(Target(residual), [parse_damage("crash:1:count=2")], seeded(i)) for i in range(4)]
    batched = batched_damaged_outputs(residual, configs, x)
    loop = torch.stack([damaged_outputs(residual, c, x) for c in configs])
    torch.testing.assert_close(batched, loop, atol=1e-12, rtol=1e-12)
    # damage confined to the output layer: the first layers run once; same numbers as the loop
    model = copy.deepcopy(mlp).double()
    late = [realise(Target(model), [parse_damage("delete:out.weight:frac=0.5")], seeded(i)) for i in range(5)]
    torch.testing.assert_close(batched_damaged_outputs(model, late, x),
                               torch.stack([damaged_outputs(model, c, x) for c in late]), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("melt:1", "unknown damage kind"),
        ("crash:7:1", "site 7 does not exist"),
        ("crash:1:frac=1.5", "fraction must lie in [0, 1]"),
        ("delete:fc1.weight:frac=-0.1", "fraction must lie in [0, 1]"),
        ("gauss:-1", "σ must be a finite number ≥ 0"),
        ("sphere:nan", "σ must be a finite number ≥ 0"),
        ("bitflip:ber=2", "bit-error rate must lie in [0, 1]"),
        ("bitflip:fc1.weight:0:32", "bit 32 does not exist"),
        ("bitflip:ber=0.1:fmt=float8", "unknown storage format"),
        ("stuck:fc1.weight:999:0", "out of range"),
        ("delete:nosuch:frac=0.1", "no parameter matches"),
        ("crash:1:9", "indices must lie in 0..4"),
        ("crash:1", "the forms of crash are"),
    ],
)
def test_bad_specs_are_clear_errors(mlp, text, message):
    with pytest.raises(LesionError) as info:
        realise(Target(mlp), [parse_damage(text)], seeded(0))
    assert message in str(info.value)


def test_int8_and_float16_flips_through_the_engine(mlp):
    w = float(mlp.fc1.weight[0, 2].detach())
    scale = float(mlp.fc1.weight.detach().abs().max()) / 127
    q = max(-128, min(127, round(w / scale)))
    flipped_q = ((q & 0xFF) ^ (1 << 7))
    flipped_q = flipped_q - 256 if flipped_q >= 128 else flipped_q
    out, realised = outputs_of(mlp, "bitflip:fc1.weight:0,2:7:fmt=int8", X_MLP)
    assert realised.faults[0]["after"] == pytest.approx(flipped_q * scale, rel=1e-6)
    assert -128 * scale - 1e-9 <= realised.faults[0]["after"] <= 127 * scale + 1e-9
    hand = copy.deepcopy(mlp)
    with torch.no_grad():
        hand.fc1.weight[0, 2] = flipped_q * scale
    torch.testing.assert_close(out, hand(X_MLP), atol=ATOL, rtol=0)
    half = np.float16(float(mlp.fc2.weight[0, 0].detach()))
    expected = (np.array([half]).view(np.uint16) ^ np.uint16(1 << 14)).view(np.float16)[0]
    _, realised = outputs_of(mlp, "bitflip:fc2.weight:0:14:fmt=float16", X_MLP)
    assert realised.faults[0]["after"] == pytest.approx(float(expected), rel=1e-6)


def test_bit_flips_default_to_the_format_the_weights_and_values_are_held_in(mlp):
    """Without fmt=, a float16 model's weights flip as float16 words (bit 14, the exponent's top bit, flipped by
    hand in numpy), random flips draw over its 16-bit words (the same faults as fmt=float16, not float32's),
    and activation flips take the site's dtype; float64 weights and mixed formats are refused with the reason."""
    half = copy.deepcopy(mlp).half()
    x = X_MLP.half()
    w = half.fc2.weight[0, 0].detach().numpy()
    expected = (np.array([w]).view(np.uint16) ^ np.uint16(1 << 14)).view(np.float16)[0]
    out, realised = outputs_of(half, "bitflip:fc2.weight:0:14", x)
    assert realised.faults[0]["format"] == "float16" and realised.faults[0]["after"] == float(expected)
    hand = copy.deepcopy(half)
    with torch.no_grad():
        hand.fc2.weight[0, 0] = float(expected)
        torch.testing.assert_close(out, hand(x), rtol=0, atol=0)
    target = Target(half)
    default = realise(target, [parse_damage("bitflip:ber=0.02")], seeded(3))
    explicit = realise(target, [parse_damage("bitflip:ber=0.02:fmt=float16")], seeded(3))
    assert default.faults == explicit.faults and default.faults[0]["format"] == "float16"
    assert max(i % 64 for i in default.faults[0]["indices"]) < 16  # 16 candidate bits a weight, not 32
    with pytest.raises(LesionError, match="cannot hold every float32 word"):  # most float32 flips would vanish
        realise(target, [parse_damage("bitflip:ber=0.02:fmt=float32")], seeded(3))
    torch.testing.assert_close(damaged_outputs(half, default, x), damaged_outputs(half, explicit, x), rtol=0, atol=0)
    assert parse_damage("bitflip:ber=0.02").spec() == "bitflip:ber=0.02"  # no format written unless given
    sites = Target(half, example=x[:2], inputs=x)
    config = realise(sites, [parse_damage("act-bitflip:1:ber=0.05")], seeded(4))
    assert config.faults[0]["fmt"] == "float16"
    assert realise(Target(mlp, example=X_MLP[:2], inputs=X_MLP), [parse_damage("act-bitflip:1:ber=0.05")],
                   seeded(4)).faults[0]["fmt"] == "float32"
    with pytest.raises(LesionError, match="stored as float64 have no bit-flip format"):
        realise(Target(copy.deepcopy(mlp).double()), [parse_damage("bitflip:ber=0.01")], seeded(0))
    mixed = copy.deepcopy(mlp)
    mixed.fc1.half()
    with pytest.raises(LesionError, match="stored in float16 and float32"):
        realise(Target(mixed), [parse_damage("bitflip:ber=0.01")], seeded(0))
    realise(Target(mixed), [parse_damage("bitflip:fc1.*:ber=0.01")], seeded(0))  # one format: fine


def test_chunk_sizing_counts_what_functions_compute_between_modules():
    """Attention-like scores made by a function (no module sees them) are counted when chunks are sized: one
    input's (tokens, tokens) scores, 16× what the modules output here; and the outputs stay exact."""
    from lesion.damage.apply import _activation_numel

    class Scores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = torch.nn.Linear(8, 8)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = self.q(x)
            scores = torch.softmax(q @ q.transpose(1, 2), dim=-1)  # (batch, 64, 64), from functions only
            return self.out((scores @ q).mean(1))

    torch.manual_seed(0)
    model = Scores().eval()
    x = torch.randn(5, 64, 8)
    counted = _activation_numel(model, None, x)
    assert counted >= 2 * 64 * 64  # the product and its softmax
    leaves_only = 64 * 8 + 3  # what forward hooks on q and out see for one input
    assert counted > 8 * leaves_only
    target = Target(model, example=x[:2])
    configs = [realise(target, [parse_damage("crash:q:count=3")], torch.Generator().manual_seed(i)) for i in range(4)]
    outputs = batched_damaged_outputs(model, configs, x)
    for config, out in zip(configs, outputs, strict=True):
        keep = config.units["q"].keep
        with torch.no_grad():
            q = model.q(x) * keep
            expected = model.out((torch.softmax(q @ q.transpose(1, 2), dim=-1) @ q).mean(1))
        torch.testing.assert_close(out, expected)


def test_options_that_would_do_less_than_they_say_are_refused_or_recorded_as_done():
    half = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).half()
    target = Target(half)
    with pytest.raises(LesionError, match="bits= restricts random flips"):
        parse_damage("bitflip:0.weight:3:5:bits=30")
    for text in ("bitflip:*.weight:3:5", "stuck:*.weight:3:5.0"):  # the first match alone, before
        with pytest.raises(LesionError, match="selects 2 parameters"):
            realise(target, [parse_damage(text)], seeded(0))
    record = realise(target, [parse_damage("stuck:0.weight:0:1e6")], seeded(0)).faults[0]
    assert record["value"] == float("inf") and record["asked"] == 1e6  # what float16 holds, and what was asked
    from lesion.damage.protection import parse_protection

    protected = Target(half, protected=parse_protection(["weights@31"], target))
    with pytest.raises(LesionError, match="bit 31 of 0.weight does not exist in float16"):
        realise(protected, [parse_damage("bitflip:weights:ber=0.05")], seeded(0))
    bfloat = Target(nn.Sequential(nn.Linear(4, 6)).to(torch.bfloat16))
    with pytest.raises(LesionError, match="cannot hold every float16 word"):
        realise(bfloat, [parse_damage("bitflip:ber=0.05:fmt=float16")], seeded(0))
    wide = Target(nn.Sequential(nn.Linear(4, 6)).double())  # float64 holds float32 words exactly: allowed
    assert realise(wide, [parse_damage("bitflip:ber=0.05:fmt=float32")], seeded(0)).faults[0]["format"] == "float32"
