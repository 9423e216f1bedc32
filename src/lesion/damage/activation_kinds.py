"""Activation fault descriptions (issue 17, item 1): `act-bitflip` and `act-stuck`, realised per input.

`act-bitflip:SITE:ber=R[:fmt=F][:bits=B1,B2][:permanent]`: every bit of every value of the site (in format F,
by default the site's own dtype; only bit positions B when given), for every evaluation input, flips
independently with probability R; the
number of flips is Binomial(inputs × values × bits, R), their (input, position, bit) drawn uniformly without
replacement (as weight bit flips, `bits.random_bit_positions`). With `permanent` the positions are drawn once
over one input's values and hit every input.

`act-stuck:SITE:rate=R[:value=V][:permanent]`: every value of the site, per input, is stuck at V (default 0)
with probability R (transient), or the same positions on every input (permanent).

What the faults do to the values: `lesion.damage.activation_faults`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lesion.damage import bits as bitlib
from lesion.damage import keyed_random
from lesion.damage.activation_faults import ActivationFaults
from lesion.damage.realised import Realised
from lesion.damage.target import Target
from lesion.errors import LesionError
from lesion.sites import Site

RECORD_LIMIT = 1000  # faults listed one by one up to this many, else a count and a digest


def _site(target: Target, address: str) -> tuple[Site, int]:
    site = target.site(address, None)
    per_input = math.prod(site.shape) if site.shape else 0
    if not per_input:
        raise LesionError(f"site {site.name} does not output a tensor of values per input: no activation faults")
    return site, per_input


def _on_device(device: torch.device, *columns: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Equal-length int64 columns drawn on the host, on `device` in one copy (a copy per column per
    configuration dominated a GPU campaign's drawing)."""
    if device.type == "cpu":
        return columns
    return torch.stack(columns).to(device).unbind(0)


def _record(kind: str, site: Site, options: dict[str, Any], inputs: torch.Tensor | None, positions: torch.Tensor,
            extra: torch.Tensor | None = None) -> dict[str, Any]:
    """The fault record: (input, position[, bit mask]) per faulty value when few, else a count and a digest."""
    from lesion.damage.kinds import index_record

    columns = [c for c in (inputs, positions, extra) if c is not None]
    record: dict[str, Any] = {"kind": kind, "site": site.name, **options, "values": int(positions.numel())}
    if positions.numel() <= RECORD_LIMIT:
        record["entries"] = torch.stack([c.cpu() for c in columns], dim=1).tolist() if columns else []
        return record
    keys = columns[0].cpu().to(torch.int64)
    for c in columns[1:]:
        keys = keys * (int(c.max()) + 1 if c.numel() else 1) + c.cpu().to(torch.int64)
    return {**record, **index_record(keys)}


@dataclass(frozen=True)
class ActivationBitFlip:
    """Random bit flips in a site's values, per input (transient) or at the same positions on every input."""

    site: str
    ber: float
    fmt: str | None = None
    positions: tuple[int, ...] | None = None
    permanent: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.ber <= 1.0:
            raise LesionError(f"bit-error rate must be in [0, 1], got {self.ber}")
        if self.fmt is not None and self.fmt not in bitlib.FORMATS:
            raise LesionError(f"unknown format {self.fmt!r}; formats are {', '.join(bitlib.FORMATS)}")
        if self.fmt is not None:
            self._check_bits(self.fmt)

    def _check_bits(self, fmt: str) -> None:
        for bit in self.positions or ():
            bitlib.bit_name(fmt, bit)  # refuses a bit the format does not have

    def value_format(self, site: Site) -> str:
        """The format the bits are flipped in: `fmt` when given, else the one the site's values are held in
        (float16 in a half-precision model); float32 where the site's dtype is not recorded."""
        if self.fmt is not None:
            if site.dtype in ("quint8", "qint8") and self.fmt != "int8":  # its words are the stored bytes
                raise LesionError(f"site {site.name} holds int8-quantised values: their bits are those of a byte, "
                                  f"not of {self.fmt} words; use fmt=int8")
            return self.fmt
        fmt = bitlib.format_for(site.dtype, f"values of site {site.name}") if site.dtype else "float32"
        self._check_bits(fmt)
        return fmt

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Draw the flipped (input, position, bit) triples and add them as faults at the site."""
        site, per_input = _site(target, self.site)
        fmt = self.value_format(site)
        inputs = 1 if self.permanent else target.input_count
        element, bit = bitlib.random_bit_positions(inputs * per_input, self.ber, fmt, generator, self.positions)
        # several bits of one value flip together: one XOR mask per value
        keys, inverse = torch.unique(element, return_inverse=True)
        masks = torch.zeros(keys.numel(), dtype=torch.int64).index_add_(0, inverse, torch.ones_like(bit) << bit)
        scale = target.activation_scale(site) if fmt == "int8" and keys.numel() else None
        if self.permanent:
            positions, masks_there = _on_device(target.device, keys % per_input, masks)
            which = None
        else:
            positions, which, masks_there = _on_device(target.device, keys % per_input, keys // per_input, masks)
        faults = ActivationFaults(site, positions, which, masks_there, None, fmt, scale)
        options = {"fmt": fmt, "ber": self.ber, "permanent": self.permanent}
        if scale is not None:
            options["scale"] = scale
        record = _record("act-bitflip", site, options, None if self.permanent else keys // per_input,
                         keys % per_input, masks)
        return state.with_activation_faults(faults, record)

    def spec(self) -> str:
        """SPEC string."""
        fmt = f":fmt={self.fmt}" if self.fmt is not None else ""
        bits = f":bits={','.join(map(str, self.positions))}" if self.positions else ""
        return f"act-bitflip:{self.site}:ber={self.ber}{fmt}{bits}{':permanent' if self.permanent else ''}"


@dataclass(frozen=True)
class ActivationStuck:
    """A site's values stuck at `value` with probability `rate` each, per input or at the same positions on every
    input."""

    site: str
    rate: float
    value: float = 0.0
    permanent: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise LesionError(f"rate must be in [0, 1], got {self.rate}")

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Draw the stuck (input, position) pairs and add them as faults at the site."""
        site, per_input = _site(target, self.site)
        total = (1 if self.permanent else target.input_count) * per_input
        _, chosen = keyed_random.at_rate(np.array([keyed_random.key_of(generator)]), total, float(self.rate))
        chosen = torch.from_numpy(chosen)
        count = chosen.numel()
        if self.permanent:
            (positions,), which = _on_device(target.device, chosen % per_input), None
        else:
            positions, which = _on_device(target.device, chosen % per_input, chosen // per_input)
        values = torch.full((count,), self.value, dtype=torch.float32, device=target.device)
        faults = ActivationFaults(site, positions, which, None, values)
        record = _record("act-stuck", site, {"rate": self.rate, "value": self.value, "permanent": self.permanent},
                         None if self.permanent else chosen // per_input, chosen % per_input)
        return state.with_activation_faults(faults, record)

    def spec(self) -> str:
        """SPEC string."""
        value = f":value={self.value}" if self.value != 0 else ""
        return f"act-stuck:{self.site}:rate={self.rate}{value}{':permanent' if self.permanent else ''}"


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise LesionError(f"{what} must be a number, got {text!r}") from err
    if math.isnan(value):
        raise LesionError(f"{what} must be a number, got {text!r}")
    return value


def parse_activation_fault(kind: str, parts: Sequence[str]) -> ActivationBitFlip | ActivationStuck:
    """`act-bitflip` / `act-stuck` from the parts after the kind: SITE, `key=value` options, `permanent`
    (SPEC_HELP)."""
    if not parts or "=" in parts[0]:
        raise LesionError(f"{kind} needs a SITE first (an index or name from `lesion sites`)")
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    flags = {p for p in parts[1:] if "=" not in p}
    allowed = {"act-bitflip": {"ber", "fmt", "bits"}, "act-stuck": {"rate", "value"}}[kind]
    unknown = set(options) - allowed
    if unknown or flags - {"permanent"}:
        bad = sorted(unknown | (flags - {"permanent"}))
        raise LesionError(f"unknown option(s) {', '.join(bad)}; use {', '.join(f'{k}=' for k in sorted(allowed))}"
                          " and permanent")
    permanent = "permanent" in flags
    if kind == "act-bitflip":
        if "ber" not in options:
            raise LesionError("act-bitflip needs ber=RATE")
        positions = bitlib.parse_bit_list(options["bits"]) if "bits" in options else None
        return ActivationBitFlip(parts[0], _number(options["ber"], "ber"), options.get("fmt"), positions,
                                 permanent)
    if "rate" not in options:
        raise LesionError("act-stuck needs rate=R")
    return ActivationStuck(parts[0], _number(options["rate"], "rate"), _number(options.get("value", "0"), "value"),
                           permanent)
