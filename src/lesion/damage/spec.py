"""Damage SPEC strings (issue "Damage engine", item 5): parse `--damage` texts into descriptions."""

from __future__ import annotations

import math

from lesion.damage.kinds import (
    BitFlip,
    Damage,
    Direction,
    FilterDeletion,
    HeadCrash,
    Perturbation,
    StuckAt,
    UnitCrash,
    WeightDeletion,
)
from lesion.damage.selectors import parse_selector
from lesion.errors import LesionError

SPEC_HELP = """\
crash:SITE:UNITS[:value=V]    units of a site output 0 (or V) after their activation, for every input and
                              position; SITE = index or name from `lesion sites` (path, path#CALL, path@in);
                              UNITS = 3,5,7 | frac=0.3 | count=4 (random, from --seed)
head:SITE:HEADS               attention heads of an attention site output 0 (HEADS as UNITS)
filter:SITE:UNITS             delete units/filters: silent downstream (incoming weights, bias and the BN/LN
                              scale and shift between layer and site set to 0, the unit's value forced to 0)
delete:PARAM:frac=F           delete (zero) a random fraction F of the weights of PARAM
delete:PARAM:smallest=F       delete the fraction F of smallest-magnitude weights of PARAM
delete:PARAM:idx=I,J,...      delete these flat indices of PARAM
gauss:SIGMA | gauss:PARAM:SIGMA     w + du, du_i ~ N(0, SIGMA²/n): E|du|² = SIGMA²
sphere:SIGMA | sphere:PARAM:SIGMA   w + SIGMA·u, u uniform on the unit sphere
direction:FILE[:SIGMA]        w + du for du read from FILE (.npy vector or .pt), scaled to norm SIGMA if given
bitflip:[PARAM:]ber=R[:fmt=F][:bits=B1,B2]  random bit flips at bit-error rate R in the stored format F
                              (float32 default, float16, bfloat16, int8), optionally only at bit positions B
bitflip:PARAM:INDEX:BIT[:fmt=F]     flip bit BIT (0 = least significant, top = sign) of one weight
stuck:PARAM:INDEX:VALUE       one weight stuck at VALUE (a number, inf, -inf, nan)
PARAM is a parameter name (fc1.weight), a glob (*.weight), all, weights or biases; INDEX a flat index or i,j."""

KINDS = ("crash", "head", "filter", "delete", "gauss", "sphere", "direction", "bitflip", "stuck")


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError as err:
        raise LesionError(f"{what} must be a number, got {text!r}") from err


def _options(parts: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split trailing key=value parts from positional ones."""
    positional = [p for p in parts if "=" not in p]
    options = dict(p.split("=", 1) for p in parts if "=" in p)
    return positional, options


def parse_damage(text: str) -> Damage:
    """One SPEC string → a damage description (see SPEC_HELP); a bad SPEC is a LesionError."""
    kind, _, rest = text.partition(":")
    parts = rest.split(":") if rest else []
    try:
        damage = _parse(kind, parts)
    except LesionError as err:
        raise LesionError(f"bad damage {text!r}: {err}") from err
    if damage is None and kind in KINDS:
        forms = [line.split()[0] for line in SPEC_HELP.splitlines() if line.startswith(kind)]
        raise LesionError(f"bad damage {text!r}: the forms of {kind} are {' or '.join(forms)}")
    if damage is None:
        raise LesionError(f"unknown damage kind {kind!r} in {text!r}; kinds are {', '.join(KINDS)} (see --help)")
    return damage


def _parse(kind: str, parts: list[str]) -> Damage | None:
    if kind == "crash" and len(parts) in (2, 3):
        value = 0.0
        if len(parts) == 3:
            key, _, raw = parts[2].partition("=")
            if key != "value":
                return None
            value = _float(raw, "value")
        return UnitCrash(parts[0], parse_selector(parts[1], allow_smallest=False), value)
    if kind == "head" and len(parts) == 2:
        return HeadCrash(parts[0], parse_selector(parts[1], allow_smallest=False))
    if kind == "filter" and len(parts) == 2:
        return FilterDeletion(parts[0], parse_selector(parts[1], allow_smallest=False))
    if kind == "delete" and len(parts) == 2:
        return WeightDeletion(parts[0], parse_selector(parts[1]))
    if kind in ("gauss", "sphere") and len(parts) in (1, 2):
        return Perturbation(kind, _float(parts[-1], "σ"), parts[0] if len(parts) == 2 else "all")
    if kind == "direction" and len(parts) in (1, 2):
        return Direction(parts[0], _float(parts[1], "σ") if len(parts) == 2 else None)
    if kind == "stuck" and len(parts) == 3:
        return StuckAt(parts[0], parts[1], _float(parts[2], "value"))
    if kind == "bitflip":
        positional, options = _options(parts)
        unknown = set(options) - {"ber", "fmt", "bits"}
        if unknown:
            raise LesionError(f"unknown option(s) {', '.join(sorted(unknown))}; use ber=, fmt=, bits=")
        fmt = options.get("fmt", "float32")
        if "ber" in options and len(positional) <= 1:
            positions = None
            if "bits" in options:
                try:
                    positions = tuple(int(b) for b in options["bits"].split(","))
                except ValueError as err:
                    raise LesionError(f"bits must be integers, got {options['bits']!r}") from err
            ber = _float(options["ber"], "ber")
            if not math.isfinite(ber):
                raise LesionError("ber must be finite")
            return BitFlip(positional[0] if positional else "all", fmt, ber=ber, positions=positions)
        if "ber" not in options and len(positional) == 3:
            try:
                bit = int(positional[2])
            except ValueError as err:
                raise LesionError(f"BIT must be an integer, got {positional[2]!r}") from err
            return BitFlip(positional[0], fmt, index=positional[1], bit=bit)
    return None
