"""Bit-level fault models on weights held in a storage format (SPEC §1, bit flip: flip bit b of weight i in its
stored format).

A weight is stored as a word of a given format (float32, float16, bfloat16, or int8 with a symmetric linear scale).
A bit flip XORs one bit of that word; the damaged weight is the decoded value of the flipped word. Bits are numbered
from 0 = least significant bit of the word; the sign bit is the top bit (31, 15, 15, 7).

Everything here is a pure tensor function: no model knowledge, inputs are never modified.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import torch

from lesion.damage import keyed_random
from lesion.errors import LesionError

FORMATS: dict[str, int] = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8}
"""Supported storage formats and their word widths in bits."""

_WORD_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.int32,
    "float16": torch.int16,
    "bfloat16": torch.int16,
    "int8": torch.int8,
}
_FLOAT_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Number of mantissa bits (bits 0..m-1); exponent bits follow up to the sign bit.
_MANTISSA_BITS: dict[str, int] = {"float32": 23, "float16": 10, "bfloat16": 7}


def _width(fmt: str) -> int:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise LesionError(f"unknown storage format {fmt!r}: use one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _check_bit(fmt: str, bit: int) -> int:
    width = _width(fmt)
    if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit < width:
        raise LesionError(f"bit {bit!r} does not exist in {fmt}: use a bit position in 0..{width - 1}")
    return bit


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool):
        raise LesionError(f"int8 scale must be a positive finite number, got {scale!r}")
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise LesionError(f"int8 scale must be a positive finite number, got {scale!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise LesionError(f"int8 scale must be a positive finite number, got {scale!r}")
    return value


def int8_scale(w: torch.Tensor) -> float:
    """Default int8 scale of `w`: max|w| / 127 over the whole tensor, or 1.0 when `w` is all zeros (or empty).

    SPEC §1, bit flip: flip bit b of weight i in its stored format; int8 stores q = clamp(round(w / scale),
    -128, 127) and reads back q·scale.
    """
    if w.numel() == 0:
        return 1.0
    peak = float(w.detach().abs().max().item())
    if not math.isfinite(peak):
        raise LesionError("int8 quantisation needs finite weights: the tensor holds NaN or infinite values")
    return peak / 127.0 if peak > 0.0 else 1.0


def encode(w: torch.Tensor, fmt: str, scale: float | None = None) -> torch.Tensor:
    """The stored words of `w` in format `fmt`, as an integer tensor of the same shape.

    SPEC §1, bit flip: flip bit b of weight i in its stored format. float32 → int32 (the IEEE 754 bit pattern),
    float16 / bfloat16 → int16 (the value rounded to that format, bit pattern), int8 → int8 q = clamp(round(w /
    scale), -128, 127) with `scale` defaulting to `int8_scale(w)`. `scale` is only meaningful for int8.
    """
    _width(fmt)
    if not isinstance(w, torch.Tensor):
        raise LesionError(f"encode needs a torch.Tensor of weights, got {type(w).__name__}")
    w = w.detach()
    if fmt == "float32":
        return w.to(torch.float32).contiguous().clone().view(torch.int32)
    if fmt in _FLOAT_DTYPES:
        return w.to(_FLOAT_DTYPES[fmt]).contiguous().clone().view(torch.int16)
    w32 = w.to(torch.float32)
    if not bool(torch.isfinite(w32).all()):
        raise LesionError("int8 quantisation needs finite weights: the tensor holds NaN or infinite values")
    s = int8_scale(w32) if scale is None else _check_scale(scale)
    # in float64: a float32 tensor times a Python float would round the scale to float32 first, which breaks
    # the int8 grid when the scale is tiny (subnormal weights)
    return torch.clamp(torch.round(w32.double() / s), -128, 127).to(torch.int8)


def decode(words: torch.Tensor, fmt: str, scale: float | None = None) -> torch.Tensor:
    """float32 values of stored words `words` in format `fmt` (the inverse of `encode`).

    SPEC §1, bit flip: flip bit b of weight i in its stored format. `words` must have the dtype `encode` gives
    (int32 for float32, int16 for float16/bfloat16, int8 for int8). For int8 the `scale` used by `encode` is
    required: the value is q·scale.
    """
    _width(fmt)
    expected = _WORD_DTYPES[fmt]
    if not isinstance(words, torch.Tensor) or words.dtype != expected:
        got = words.dtype if isinstance(words, torch.Tensor) else type(words).__name__
        raise LesionError(f"{fmt} words must be a {expected} tensor (as encode returns), got {got}")
    if fmt == "float32":
        return words.contiguous().clone().view(torch.float32)
    if fmt in _FLOAT_DTYPES:
        return words.contiguous().view(_FLOAT_DTYPES[fmt]).to(torch.float32)
    if scale is None:
        raise LesionError("decoding int8 words needs the scale they were encoded with: pass scale=")
    return (words.to(torch.float64) * _check_scale(scale)).to(torch.float32)  # q·scale rounded once


def _as_index_tensor(x: torch.Tensor | Sequence[int], what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise LesionError(f"{what} must be integers, got a {t.dtype} tensor")
    return t.reshape(-1).to(torch.int64).cpu()


def flip_bits(w: torch.Tensor, flat_indices: torch.Tensor, bits: torch.Tensor, fmt: str = "float32",
              scale: float | None = None) -> torch.Tensor:
    """A new float32 tensor like `w` in which bit `bits[k]` of the stored word of element `flat_indices[k]` is
    flipped, for every k (SPEC §1, bit flip: flip bit b of weight i in its stored format).

    Flips are XORs: the same (element, bit) pair listed twice cancels, and several bits of one element all apply.
    Each element with at least one listed flip is replaced by the decoded value of its flipped word (so it also
    carries the format's rounding or quantisation of that element). Elements not listed keep their original
    float32 value exactly: the quantisation error of untouched weights is not part of the fault. For int8 the
    scale defaults to `int8_scale(w)` over the whole of `w`. `w` is never modified.
    """
    touched, values = flipped_entries(w, flat_indices, bits, fmt, scale)
    out = w.detach().to(torch.float32).clone()
    out.view(-1)[touched] = values
    return out


def flipped_entries(w: torch.Tensor, flat_indices: torch.Tensor, bits: torch.Tensor, fmt: str = "float32",
                    scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries `flip_bits` changes, without copying `w`: (sorted distinct flat indices on w's device, their
    float32 values after the flips)."""
    width = _width(fmt)
    if not isinstance(w, torch.Tensor):
        raise LesionError(f"flip_bits needs a torch.Tensor of weights, got {type(w).__name__}")
    if scale is not None:
        scale = _check_scale(scale)
    idx = _as_index_tensor(flat_indices, "flat_indices")
    bit = _as_index_tensor(bits, "bits")
    if idx.numel() != bit.numel():
        raise LesionError(f"flat_indices and bits must pair up: got {idx.numel()} indices and {bit.numel()} bits")
    none = (torch.zeros(0, dtype=torch.int64, device=w.device), torch.zeros(0, dtype=torch.float32, device=w.device))
    if idx.numel() == 0:
        return none
    numel = w.numel()
    if int(idx.min()) < 0 or int(idx.max()) >= numel:
        raise LesionError(f"flat indices must lie in 0..{numel - 1} for a tensor of {numel} elements")
    if int(bit.min()) < 0 or int(bit.max()) >= width:
        raise LesionError(f"bit positions must lie in 0..{width - 1} for {fmt}")
    flat = w.detach().reshape(-1).to(torch.float32)
    if fmt == "int8" and scale is None:
        scale = int8_scale(flat)

    # XOR semantics: a pair flipped an even number of times is a no-op; the remaining bits of an element are
    # distinct, so their XOR is their sum.
    pairs, counts = torch.unique(idx * width + bit, return_counts=True)
    pairs = pairs[counts % 2 == 1]
    elements, inverse = torch.unique(pairs // width, return_inverse=True)
    masks = torch.zeros(elements.numel(), dtype=torch.int64)
    masks.index_add_(0, inverse, torch.ones_like(pairs) << (pairs % width))
    touched = elements[masks != 0]
    masks = masks[masks != 0]
    if touched.numel() == 0:
        return none
    # Re-express the unsigned mask as the signed word of the same bits (e.g. bit 31 alone is -2**31 in int32).
    masks = torch.where(masks >= (1 << (width - 1)), masks - (1 << width), masks).to(_WORD_DTYPES[fmt])

    touched = touched.to(flat.device)
    words = encode(flat[touched], fmt, scale)
    return touched, decode(torch.bitwise_xor(words, masks.to(words.device)), fmt, scale)


def flip_words(w: torch.Tensor, flat_indices: torch.Tensor, masks: torch.Tensor, fmt: str) -> torch.Tensor:
    """float32 values of the entries `flat_indices` of `w` after XOR of their stored words with `masks` (int64,
    the unsigned bit patterns to flip; SPEC §1, bit flip), on the CPU; for int8 with the scale of the whole `w`."""
    flat = w.detach().reshape(-1).to(torch.float32).cpu()
    return xor_words(flat[flat_indices], masks, fmt, int8_scale(flat) if fmt == "int8" else None)


def xor_words(values: torch.Tensor, masks: torch.Tensor, fmt: str, scale: float | None = None) -> torch.Tensor:
    """float32 values read back after XOR of the stored words of `values` with `masks` (int64, the unsigned bit
    patterns to flip; SPEC §1, bit flip); int8 words with `scale` (required), on the device of `values`."""
    width = _width(fmt)
    masks = masks.to(values.device)
    signed = torch.where(masks >= (1 << (width - 1)), masks - (1 << width), masks).to(_WORD_DTYPES[fmt])
    return decode(torch.bitwise_xor(encode(values, fmt, scale), signed), fmt, scale)


def parse_bit_list(text: str) -> tuple[int, ...]:
    """The bit positions of a SPEC's `bits=B1,B2` option (checked against a format later)."""
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError as err:
        raise LesionError(f"bits must be integers, got {text!r}") from err


def _bit_positions(fmt: str, bits: Sequence[int] | None) -> list[int]:
    width = _width(fmt)
    if bits is None:
        return list(range(width))
    positions = [_check_bit(fmt, b) for b in bits]
    if not positions:
        raise LesionError("give at least one bit position to flip, or bits=None for all bits of the format")
    if len(set(positions)) != len(positions):
        raise LesionError(f"bit positions must be listed once each, got {list(bits)}")
    return sorted(positions)


@functools.lru_cache(maxsize=64)
def _position_lookup(positions: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(positions, dtype=torch.int64)


def _check_rate(numel: int, ber: float) -> None:
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise LesionError(f"numel must be a non-negative integer, got {numel!r}")
    if isinstance(ber, bool) or not isinstance(ber, numbers.Real) or not 0.0 <= float(ber) <= 1.0:
        raise LesionError(f"bit-error rate must be a number in [0, 1], got {ber!r}")


def random_bit_positions(numel: int, ber: float, fmt: str, generator: torch.Generator,
                         bits: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random bit flips at bit-error rate `ber` among the stored bits of `numel` weights in format `fmt`.

    SPEC §1, bit flip: flip bit b of weight i in its stored format. The candidate bits are `numel × B` where B
    is every bit of the format, or only the positions in `bits`. One key is drawn from `generator`
    (`keyed_random.key_of`); from it, the number of flips is Binomial(numel·B, ber) and that many distinct
    (element, bit) positions are drawn uniformly without replacement, so the result is reproducible from the
    generator's seed and equals this key's share of `random_bit_positions_batch`. Returns (flat_indices, bits),
    both int64, sorted by element then bit, ready for `flip_bits`.
    """
    if not isinstance(generator, torch.Generator):
        raise LesionError("random_bit_positions needs a torch.Generator (e.g. torch.Generator().manual_seed(0))")
    _, element, bit = random_bit_positions_batch(numel, ber, fmt, [keyed_random.key_of(generator)], bits)
    return element, bit


def random_bit_positions_batch(numel: int, ber: float, fmt: str, keys: Sequence[int],
                               bits: Sequence[int] | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`random_bit_positions` for many keys at once (a campaign's batch of configurations, one key each):
    (key index, flat index, bit), int64, sorted by key index, element, bit."""
    _width(fmt)
    _check_rate(numel, ber)
    positions = _bit_positions(fmt, bits)
    per_element = len(positions)
    total = numel * per_element
    owner, chosen = keyed_random.at_rate(keys, total, float(ber))
    owner, chosen = torch.from_numpy(owner), torch.from_numpy(chosen)
    if per_element == 32 and bits is None:  # every bit of a float32 word: shifts instead of a division
        return owner, chosen >> 5, chosen & 31
    return owner, chosen // per_element, _position_lookup(tuple(positions))[chosen % per_element]


def format_of(dtype: torch.dtype | str) -> str | None:
    """The storage format a tensor of `dtype` is held in (SPEC §1, bit flip: "in its stored format"): float32,
    float16 or bfloat16, int8 for quantised integers; None for a dtype with no format here (float64, say)."""
    name = str(dtype).removeprefix("torch.")
    return {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "qint8": "int8", "quint8": "int8",
            "int8": "int8"}.get(name)


_HOLDS = {"float64": {"float32", "float16", "bfloat16", "int8"}, "float32": {"float32", "float16", "bfloat16", "int8"},
          "float16": {"float16", "int8"}, "bfloat16": {"bfloat16", "int8"}}


def check_format_fits(fmt: str, dtype: torch.dtype, what: str) -> None:
    """Refuse flipping the bits of `fmt` words in values held as `dtype` when `dtype` cannot hold every such word
    (fmt=float32 on float16 weights: a flip of a low mantissa bit vanishes on the cast back, while the record and
    the rate count it; float16 in bfloat16 loses mantissa, bfloat16 in float16 range)."""
    held = str(dtype).removeprefix("torch.")
    if held in _HOLDS and fmt not in _HOLDS[held]:
        raise LesionError(f"{what} are held as {held}, which cannot hold every {fmt} word exactly (flips would vanish "
                          f"or overflow on the way back): use fmt={held}")


def format_for(dtype: torch.dtype | str, what: str) -> str:
    """`format_of(dtype)`, or a LesionError saying that `what` (values of that dtype) needs an explicit fmt=."""
    fmt = format_of(dtype)
    if fmt is None:
        raise LesionError(f"{what} stored as {str(dtype).removeprefix('torch.')} have no bit-flip format here: "
                          "give fmt=float32 (or float16, bfloat16, int8) to flip the bits of that rounding")
    return fmt


def bit_name(fmt: str, bit: int) -> str:
    """What bit `bit` of a `fmt` word encodes: "sign", "exponent[k]", "mantissa[k]" or, for int8, "magnitude[k]".

    SPEC §1, bit flip: flip bit b of weight i in its stored format. Field indices count from the field's least
    significant bit (float32: mantissa 0–22, exponent 23–30, sign 31; float16: 0–9, 10–14, 15; bfloat16: 0–6,
    7–14, 15; int8 two's complement: magnitude 0–6, sign 7).
    """
    width = _width(fmt)
    _check_bit(fmt, bit)
    if bit == width - 1:
        return "sign"
    if fmt == "int8":
        return f"magnitude[{bit}]"
    mantissa = _MANTISSA_BITS[fmt]
    if bit < mantissa:
        return f"mantissa[{bit}]"
    return f"exponent[{bit - mantissa}]"
