"""Bit-flip fault models (SPEC §1, bit flip): every expectation comes from struct / numpy / Python ints."""

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lesion.damage.bits import (
    FORMATS,
    bit_name,
    decode,
    encode,
    flip_bits,
    int8_scale,
    random_bit_positions,
)
from lesion.errors import LesionError

# ---------------------------------------------------------------- independent references


def f32_word(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f32_from_word(u: int) -> float:
    return struct.unpack("<f", struct.pack("<I", u & 0xFFFFFFFF))[0]


def ref_flip_f32(x: float, *bits: int) -> float:
    u = f32_word(x)
    for b in bits:
        u ^= 1 << b
    return f32_from_word(u)


def ref_flip_f16(x: float, bit: int) -> float:
    u = np.array([x], dtype=np.float16).view(np.uint16)
    u ^= np.uint16(1 << bit)
    return float(u.view(np.float16)[0])


def ref_flip_bf16(x: float, bit: int) -> float:
    """bfloat16 word = top 16 bits of the float32 word (x must be exactly representable in bfloat16)."""
    u = f32_word(x)
    assert u & 0xFFFF == 0
    return f32_from_word(((u >> 16) ^ (1 << bit)) << 16)


def ref_flip_int8(q: int, bit: int) -> int:
    """Two's complement on Python ints: flip bit `bit` of the 8-bit pattern of q, read it back signed."""
    u = (q & 0xFF) ^ (1 << bit)
    return u - 256 if u >= 128 else u


def assert_same_floats(a, b):
    np.testing.assert_array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


FLOAT_VALUES = [0.5, -1.75, 3.0e-3, 1234.5, -0.0, 0.0, 65504.0, 6.1035156e-05, -2.5e-7, 1.0e30]


def bf16_exact(values):
    return [f32_from_word(f32_word(v) & 0xFFFF0000) for v in values]


# ---------------------------------------------------------------- formats and round trips


def test_formats_and_widths():
    assert FORMATS == {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8}


def test_encode_dtypes_and_float32_words_match_struct():
    w = torch.tensor([0.5, -1.75, 1.0e-3])
    assert encode(w, "float32").dtype == torch.int32
    assert encode(w, "float16").dtype == torch.int16
    assert encode(w, "bfloat16").dtype == torch.int16
    assert encode(w, "int8").dtype == torch.int8
    words = [int(x) & 0xFFFFFFFF for x in encode(w, "float32")]
    assert words == [f32_word(float(v)) for v in w]
    f16 = [int(x) & 0xFFFF for x in encode(w, "float16")]
    assert f16 == [int(v) for v in np.array(w.numpy(), dtype=np.float16).view(np.uint16)]


def test_round_trips(rng):
    w = torch.randn(7, 5, generator=rng) * 10
    w[0, 0] = float("inf")
    w[0, 1] = -0.0
    f32 = decode(encode(w, "float32"), "float32")
    assert f32.dtype == torch.float32 and f32.shape == w.shape
    assert torch.equal(f32.view(torch.int32), w.view(torch.int32))
    assert torch.equal(decode(encode(w, "float16"), "float16"), w.half().float())
    assert torch.equal(decode(encode(w, "bfloat16"), "bfloat16"), w.bfloat16().float())


def test_int8_round_trip_matches_numpy_quantisation(rng):
    w = torch.randn(50, generator=rng)
    scale = int8_scale(w)
    assert scale == pytest.approx(float(w.abs().max()) / 127)
    wn = w.numpy().astype(np.float32)
    q = np.clip(np.round(wn / np.float32(scale)), -128, 127).astype(np.int8)
    assert np.array_equal(encode(w, "int8").numpy(), q)
    expected = q.astype(np.float32) * np.float32(scale)
    np.testing.assert_allclose(decode(encode(w, "int8"), "int8", scale).numpy(), expected, rtol=1e-6, atol=0)
    # the extreme weight maps to ±127
    assert int(encode(w, "int8").abs().max()) == 127


def test_int8_scale_of_zero_tensor_is_one():
    z = torch.zeros(4)
    assert int8_scale(z) == 1.0
    assert torch.equal(encode(z, "int8"), torch.zeros(4, dtype=torch.int8))
    # flipping bit b of a zero word gives 2**b (bit 7: -128) times scale 1.0, no division by zero
    for b in range(8):
        out = flip_bits(z, torch.tensor([2]), torch.tensor([b]), "int8")
        assert float(out[2]) == float(ref_flip_int8(0, b))
        assert torch.isfinite(out).all()


# ---------------------------------------------------------------- sign bit


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16"])
def test_sign_bit_negates_float_formats(fmt, rng):
    w = torch.randn(20, generator=rng)
    if fmt == "float16":
        w = w.half().float()
    if fmt == "bfloat16":
        w = w.bfloat16().float()
    top = FORMATS[fmt] - 1
    out = flip_bits(w, torch.arange(20), torch.full((20,), top), fmt)
    assert torch.equal(out, -w)


def test_sign_bit_int8_two_complement():
    scale = 0.25  # power of two: every q·scale is exact
    qs = [-128, -127, -5, -1, 0, 1, 5, 64, 127]
    w = torch.tensor([q * scale for q in qs])
    out = flip_bits(w, torch.arange(len(qs)), torch.full((len(qs),), 7), "int8", scale=scale)
    for q, v in zip(qs, out.tolist(), strict=True):
        expected = q - 128 if q >= 0 else q + 128
        assert expected == ref_flip_int8(q, 7)
        assert v == expected * scale


# ---------------------------------------------------------------- exponent and mantissa bits against references


def test_float32_exponent_bits_of_half():
    w = torch.tensor([0.5])
    assert f32_word(0.5) == 0x3F000000
    out30 = float(flip_bits(w, torch.tensor([0]), torch.tensor([30]))[0])
    assert out30 == f32_from_word(0x7F000000) == 2.0**127
    assert out30 == pytest.approx(1.7014118e38, rel=1e-7)
    out23 = float(flip_bits(w, torch.tensor([0]), torch.tensor([23]))[0])
    assert out23 == f32_from_word(0x3F800000) == 1.0


@pytest.mark.parametrize("bit", range(32))
def test_float32_every_bit_matches_struct(bit):
    n = len(FLOAT_VALUES)
    out = flip_bits(torch.tensor(FLOAT_VALUES), torch.arange(n), torch.full((n,), bit), "float32")
    assert_same_floats(out.numpy(), [ref_flip_f32(np.float32(v).item(), bit) for v in FLOAT_VALUES])


@pytest.mark.parametrize("bit", range(16))
def test_float16_every_bit_matches_numpy(bit):
    values = torch.tensor(FLOAT_VALUES).half().float().tolist()  # inputs only; 1e30 becomes inf
    n = len(values)
    out = flip_bits(torch.tensor(values), torch.arange(n), torch.full((n,), bit), "float16")
    assert_same_floats(out.numpy(), [ref_flip_f16(v, bit) for v in values])


@pytest.mark.parametrize("bit", range(16))
def test_bfloat16_every_bit_matches_top_half_of_float32(bit):
    values = bf16_exact(FLOAT_VALUES)
    n = len(values)
    out = flip_bits(torch.tensor(values), torch.arange(n), torch.full((n,), bit), "bfloat16")
    assert_same_floats(out.numpy(), [ref_flip_bf16(v, bit) for v in values])


@pytest.mark.parametrize("bit", range(8))
def test_int8_every_bit_matches_python_ints(bit):
    scale = 0.125
    qs = list(range(-128, 128))
    w = torch.tensor([q * scale for q in qs])
    out = flip_bits(w, torch.arange(len(qs)), torch.full((len(qs),), bit), "int8", scale=scale)
    assert out.tolist() == [ref_flip_int8(q, bit) * scale for q in qs]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=30),
    bit=st.integers(0, 7),
    data=st.data(),
)
def test_int8_flips_stay_in_range(values, bit, data):
    check_int8_flip(values, bit, data.draw(st.integers(0, len(values) - 1)))


@pytest.mark.parametrize("bit", range(8))
def test_int8_flips_of_subnormal_weights(bit):
    # found by hypothesis: float32 subnormals, where one float32 step is 1.4e-45
    check_int8_flip([2.059908742557481e-43], bit, 0)


def check_int8_flip(values, bit, i):
    w = torch.tensor(values, dtype=torch.float32)
    scale = int8_scale(w)
    q = int(encode(w, "int8")[i])
    out = flip_bits(w, torch.tensor([i]), torch.tensor([bit]), "int8")
    v = float(out[i])
    assert -128 * scale * (1 + 1e-6) <= v <= 127 * scale * (1 + 1e-6)
    q_new = round(v / scale)
    assert -128 <= q_new <= 127
    # the stored value is float32: exact up to one float32 step at its magnitude (relative 6e-8 for normal
    # numbers, absolute 1.4e-45 for subnormal ones)
    step = float(np.spacing(np.float32(abs(q_new * scale))))
    assert math.isclose(v, q_new * scale, rel_tol=1e-6, abs_tol=step)
    assert q_new == ref_flip_int8(q, bit)


# ---------------------------------------------------------------- XOR semantics and untouched elements


def test_duplicate_flips_cancel():
    w = torch.tensor([0.5, -3.25, 7.0])
    assert torch.equal(flip_bits(w, torch.tensor([1, 1]), torch.tensor([30, 30])), w)
    # three times = once; a cancelled pair next to a real flip of another element
    out = flip_bits(w, torch.tensor([1, 1, 1, 2, 0, 0]), torch.tensor([5, 5, 5, 31, 23, 23]))
    assert out.tolist() == [0.5, ref_flip_f32(-3.25, 5), -7.0]


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "int8"])
def test_duplicate_flips_cancel_leave_exact_float32(fmt, rng):
    w = torch.randn(6, generator=rng)  # not representable in the 16/8-bit formats
    out = flip_bits(w, torch.tensor([3, 3]), torch.tensor([2, 2]), fmt)
    assert torch.equal(out, w)


def test_two_bits_of_one_element_both_apply():
    w = torch.tensor([0.5, 2.0])
    out = flip_bits(w, torch.tensor([0, 1, 0]), torch.tensor([23, 31, 30]))
    assert out.tolist() == [ref_flip_f32(0.5, 23, 30), -2.0]
    assert out[0].item() == f32_from_word(0x3F000000 ^ (1 << 23) ^ (1 << 30))
    # float16: compare with the numpy reference of both flips in sequence
    h = flip_bits(torch.tensor([1.5]), torch.tensor([0, 0]), torch.tensor([3, 12]), "float16")
    assert h.item() == ref_flip_f16(ref_flip_f16(1.5, 3), 12)
    assert math.isfinite(h.item()) and h.item() not in (1.5, ref_flip_f16(1.5, 3), ref_flip_f16(1.5, 12))
    # int8: bits 0 and 7 of q = 5 (scale 1): 5 ^ 1 ^ 128 as a signed byte
    q = flip_bits(torch.tensor([5.0, 127.0]), torch.tensor([0, 0]), torch.tensor([0, 7]), "int8", scale=1.0)
    assert q.tolist() == [ref_flip_int8(ref_flip_int8(5, 0), 7), 127.0]


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16", "int8"])
def test_untouched_elements_exact_and_input_unchanged(fmt, rng):
    w = torch.randn(4, 5, generator=rng)
    before = w.clone()
    out = flip_bits(w, torch.tensor([7, 13]), torch.tensor([FORMATS[fmt] - 1, 1]), fmt)
    assert torch.equal(w, before)
    assert out is not w and out.shape == w.shape and out.dtype == torch.float32
    keep = torch.ones(20, dtype=torch.bool)
    keep[[7, 13]] = False
    assert torch.equal(out.view(-1)[keep], w.view(-1)[keep])
    assert not torch.equal(out.view(-1)[7], w.view(-1)[7])


def test_int8_default_scale_is_whole_tensor():
    w = torch.tensor([127.0, 0.25, -3.0])  # scale 1.0 from the whole tensor
    out = flip_bits(w, torch.tensor([2]), torch.tensor([0]), "int8")
    assert out.tolist() == [127.0, 0.25, float(ref_flip_int8(-3, 0))]


def test_no_flips_returns_copy():
    w = torch.tensor([1.0, 2.0])
    out = flip_bits(w, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert torch.equal(out, w)
    out[0] = 9.0
    assert w[0] == 1.0


# ---------------------------------------------------------------- random positions


def test_random_positions_reproducible_and_distinct():
    a = random_bit_positions(5000, 1e-3, "float32", torch.Generator().manual_seed(7))
    b = random_bit_positions(5000, 1e-3, "float32", torch.Generator().manual_seed(7))
    c = random_bit_positions(5000, 1e-3, "float32", torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (a[0].shape == c[0].shape and torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))
    for idx, bits in (a, c):
        assert idx.dtype == torch.int64 and bits.dtype == torch.int64
        assert idx.numel() > 0
        pairs = set(zip(idx.tolist(), bits.tolist(), strict=True))
        assert len(pairs) == idx.numel()
        assert all(0 <= i < 5000 and 0 <= b < 32 for i, b in pairs)


@pytest.mark.parametrize(("numel", "ber"), [(20, 0.3), (50, 0.9), (3000, 0.02)])
def test_random_positions_distinct_small_and_dense(numel, ber):
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        idx, bits = random_bit_positions(numel, ber, "int8", g)
        assert len(set(zip(idx.tolist(), bits.tolist(), strict=True))) == idx.numel()
        assert int(idx.max()) < numel and int(bits.max()) < 8


def test_random_positions_restricted_bits():
    g = torch.Generator().manual_seed(0)
    idx, bits = random_bit_positions(10000, 0.01, "float32", g, bits=[30, 31])
    assert idx.numel() > 0
    assert set(bits.tolist()) == {30, 31}
    idx, bits = random_bit_positions(100, 1.0, "bfloat16", g, bits=[14])
    assert idx.tolist() == list(range(100)) and bits.tolist() == [14] * 100


@pytest.mark.parametrize(("numel", "fmt", "ber"), [(10000, "float32", 1e-3), (200, "int8", 0.05)])
def test_random_positions_mean_count(numel, fmt, ber):
    g = torch.Generator().manual_seed(11)
    total = numel * FORMATS[fmt]
    draws = 300
    counts = [random_bit_positions(numel, ber, fmt, g)[0].numel() for _ in range(draws)]
    se = math.sqrt(total * ber * (1 - ber) / draws)
    assert abs(np.mean(counts) - total * ber) < 4 * se
    # the spread is binomial too (loose check: a fixed count would fail this)
    assert 0.5 < np.var(counts) / (total * ber * (1 - ber)) < 2.0


def test_random_positions_uniform_over_elements_and_bits():
    g = torch.Generator().manual_seed(5)
    numel, fmt = 100000, "float32"  # sparse path: 3.2M candidate bits
    idx = []
    bits = []
    for _ in range(30):
        i, b = random_bit_positions(numel, 1e-4, fmt, g)
        idx.append(i)
        bits.append(b)
    i = torch.cat(idx).double()
    b = torch.cat(bits)
    n = i.numel()
    assert abs(i.mean().item() - (numel - 1) / 2) < 4 * (numel / math.sqrt(12)) / math.sqrt(n)
    freq = torch.bincount(b, minlength=32).double()
    expected = n / 32
    chi2 = float(((freq - expected) ** 2 / expected).sum())
    assert chi2 < 80  # 31 degrees of freedom: p ≈ 3e-6


def test_random_positions_ber_zero_and_one():
    g = torch.Generator().manual_seed(1)
    idx, bits = random_bit_positions(1000, 0.0, "float32", g)
    assert idx.numel() == 0 and bits.numel() == 0
    idx, bits = random_bit_positions(30, 1.0, "float16", g)
    assert sorted(zip(idx.tolist(), bits.tolist(), strict=True)) == [(i, b) for i in range(30) for b in range(16)]
    # flipping every bit of an int8 word is bitwise NOT: q -> -q - 1
    w = torch.tensor([3.0, -7.0, 0.0])
    idx, bits = random_bit_positions(3, 1.0, "int8", g)
    assert flip_bits(w, idx, bits, "int8", scale=1.0).tolist() == [-4.0, 6.0, -1.0]
    idx, bits = random_bit_positions(0, 0.5, "int8", g)
    assert idx.numel() == 0


# ---------------------------------------------------------------- names


def test_bit_names():
    assert bit_name("float32", 31) == "sign"
    assert bit_name("float32", 22) == "mantissa[22]"
    assert bit_name("float32", 23) == "exponent[0]"
    assert bit_name("float32", 30) == "exponent[7]"
    assert bit_name("float16", 9) == "mantissa[9]"
    assert bit_name("float16", 10) == "exponent[0]"
    assert bit_name("float16", 15) == "sign"
    assert bit_name("bfloat16", 6) == "mantissa[6]"
    assert bit_name("bfloat16", 14) == "exponent[7]"
    assert bit_name("int8", 0) == "magnitude[0]"
    assert bit_name("int8", 6) == "magnitude[6]"
    assert bit_name("int8", 7) == "sign"
    names = [bit_name("float32", b) for b in range(32)]
    assert sum(n.startswith("mantissa") for n in names) == 23
    assert sum(n.startswith("exponent") for n in names) == 8
    fp16 = [bit_name("float16", b) for b in range(16)]
    assert sum(n.startswith("exponent") for n in fp16) == 5
    bf16 = [bit_name("bfloat16", b) for b in range(16)]
    assert sum(n.startswith("exponent") for n in bf16) == 8


# ---------------------------------------------------------------- errors


def test_errors():
    w = torch.ones(3)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(LesionError, match="unknown storage format"):
        encode(w, "float64")
    with pytest.raises(LesionError, match="unknown storage format"):
        flip_bits(w, torch.tensor([0]), torch.tensor([0]), "fp8")
    with pytest.raises(LesionError, match="unknown storage format"):
        random_bit_positions(3, 0.1, "int4", g)
    with pytest.raises(LesionError, match="unknown storage format"):
        bit_name("half", 0)
    with pytest.raises(LesionError, match="0..31"):
        flip_bits(w, torch.tensor([0]), torch.tensor([32]))
    with pytest.raises(LesionError, match="0..15"):
        flip_bits(w, torch.tensor([0]), torch.tensor([16]), "float16")
    with pytest.raises(LesionError, match="0..31"):
        flip_bits(w, torch.tensor([0]), torch.tensor([-1]))
    with pytest.raises(LesionError):
        bit_name("float32", 32)
    with pytest.raises(LesionError):
        bit_name("int8", 8)
    with pytest.raises(LesionError, match="0..2"):
        flip_bits(w, torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(LesionError, match="0..2"):
        flip_bits(w, torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(LesionError, match="pair up"):
        flip_bits(w, torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(LesionError, match=r"\[0, 1\]"):
        random_bit_positions(3, 1.5, "float32", g)
    with pytest.raises(LesionError, match=r"\[0, 1\]"):
        random_bit_positions(3, -0.1, "float32", g)
    with pytest.raises(LesionError, match=r"\[0, 1\]"):
        random_bit_positions(3, float("nan"), "float32", g)
    with pytest.raises(LesionError, match="0..31"):
        random_bit_positions(3, 0.1, "float32", g, bits=[32])
    with pytest.raises(LesionError, match="0..7"):
        random_bit_positions(3, 0.1, "int8", g, bits=[3, 8])
    with pytest.raises(LesionError, match="scale"):
        decode(encode(w, "int8"), "int8")
    with pytest.raises(LesionError, match="scale"):
        flip_bits(w, torch.tensor([0]), torch.tensor([0]), "int8", scale=0.0)
    with pytest.raises(LesionError, match="int32"):
        decode(torch.zeros(2, dtype=torch.int16), "float32")
    with pytest.raises(LesionError, match="finite"):
        encode(torch.tensor([1.0, float("nan")]), "int8")
