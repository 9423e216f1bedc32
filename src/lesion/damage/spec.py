"""Damage SPEC strings (issue "Damage engine", item 5): parse `--damage` texts into descriptions."""

from __future__ import annotations

import math

from lesion.damage.bits import parse_bit_list
from lesion.damage.grammar import SPEC_HELP
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

KINDS = ("crash", "head", "filter", "delete", "gauss", "sphere", "direction", "bitflip", "stuck", "act-bitflip",
         "act-stuck")


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
    if kind in ("act-bitflip", "act-stuck"):
        from lesion.damage.activation_kinds import parse_activation_fault

        return parse_activation_fault(kind, parts)
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
        fmt = options.get("fmt")
        if "ber" in options and len(positional) <= 1:
            positions = parse_bit_list(options["bits"]) if "bits" in options else None
            ber = _float(options["ber"], "ber")
            if not math.isfinite(ber):
                raise LesionError("ber must be finite")
            return BitFlip(positional[0] if positional else "all", fmt, ber=ber, positions=positions)
        if "ber" not in options and len(positional) == 3:
            if "bits" in options:
                raise LesionError("bits= restricts random flips (ber=); PARAM:INDEX:BIT flips the one bit it names")
            try:
                bit = int(positional[2])
            except ValueError as err:
                raise LesionError(f"BIT must be an integer, got {positional[2]!r}") from err
            return BitFlip(positional[0], fmt, index=positional[1], bit=bit)
    return None
