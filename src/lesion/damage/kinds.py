"""What faults do (SPEC §1): damage descriptions, pure and composable, realised against a `Target`.

Every description is a frozen dataclass with `realise(target, state, generator) -> Realised`, which returns
a new state (the trained network is `Realised()`), and `spec()`, the SPEC string that parses back to it.
Descriptions compose by realising them in order, each seeing the damage of the ones before.
Records of the concrete faults list indices when there are at most `RECORD_LIMIT` of them, else a count and
a sha256 digest of the indices (replays re-realise from the seed and compare).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesion.damage import bits as bitlib
from lesion.damage.realised import Realised, UnitOverride
from lesion.damage.selectors import Selector
from lesion.damage.target import Target
from lesion.errors import LesionError

RECORD_LIMIT = 1000


def index_record(indices: torch.Tensor) -> dict[str, Any]:
    """Indices themselves when few, else their count and digest."""
    flat = indices.to(torch.int64).flatten()
    if flat.numel() <= RECORD_LIMIT:
        return {"indices": flat.tolist()}
    return {"count": int(flat.numel()), "sha256": hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16]}


def _flat(target: Target, state: Realised, names: list[str]) -> torch.Tensor:
    return torch.cat([state.param(n, target.base).flatten() for n in names])


def _unflat(target: Target, names: list[str], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for n in names:
        shape = target.base[n].shape
        size = target.base[n].numel()
        out[n] = flat[offset:offset + size].reshape(shape).to(target.base[n].dtype)
        offset += size
    return out


def _check_sigma(sigma: float) -> None:
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise LesionError(f"σ must be a finite number ≥ 0, got {sigma}")


@dataclass(frozen=True)
class UnitCrash:
    """Units of a hidden layer (features of a Linear layer, channels of a conv layer) output `value`
    for every input: a crash when value = 0 ([R] Def. 2), stuck-at otherwise."""

    layer: str
    units: Selector
    value: float = 0.0

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Override the chosen units' outputs at the layer's site."""
        site = target.site(self.layer)
        chosen = self.units.select(site.width, None, generator)
        current = state.units.get(site.module) or UnitOverride.identity(site.width)
        record = {"kind": "crash", "site": site.module, "width": site.width, **index_record(chosen),
                  "value": self.value}
        return state.with_units(site.module, current.force(chosen, self.value), record)

    def spec(self) -> str:
        """SPEC string."""
        tail = f":value={self.value}" if self.value != 0 else ""
        return f"crash:{self.layer}:{self.units.describe()}{tail}"


@dataclass(frozen=True)
class FilterDeletion:
    """Filters (conv output channels) or units of a layer deleted: their incoming weights and bias set to 0
    ([G] filter / node deletion)."""

    module: str
    units: Selector

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Zero the chosen rows of the layer's weight and bias."""
        weight_name = f"{self.module}.weight"
        if weight_name not in target.base:
            raise LesionError(f"{self.module!r} is not a layer with weights; layers are "
                              f"{', '.join(n[:-7] for n in target.base if n.endswith('.weight'))}")
        weight = state.param(weight_name, target.base).clone()
        chosen = self.units.select(weight.shape[0], None, generator)
        weight[chosen] = 0.0
        changed = {weight_name: weight}
        bias_name = f"{self.module}.bias"
        if bias_name in target.base:
            bias = state.param(bias_name, target.base).clone()
            bias[chosen] = 0.0
            changed[bias_name] = bias
        return state.with_params(changed, {"kind": "filter", "module": self.module, **index_record(chosen)})

    def spec(self) -> str:
        """SPEC string."""
        return f"filter:{self.module}:{self.units.describe()}"


@dataclass(frozen=True)
class WeightDeletion:
    """Synapses deleted: weights forced to 0, chosen among the parameters `params` (a name or pattern)."""

    params: str
    selector: Selector

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Zero the chosen entries of the concatenated matched parameters."""
        names = target.match(self.params)
        flat = _flat(target, state, names).clone()
        chosen = self.selector.select(flat.numel(), flat, generator)
        flat[chosen] = 0.0
        return state.with_params(_unflat(target, names, flat),
                                 {"kind": "delete", "params": names, **index_record(chosen)})

    def spec(self) -> str:
        """SPEC string."""
        return f"delete:{self.params}:{self.selector.describe()}"


@dataclass(frozen=True)
class StuckAt:
    """One weight stuck at a value (0, a number, ±inf, nan)."""

    param: str
    index: str
    value: float

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Set the weight to the value."""
        name = target.match(self.param)[0] if self.param not in target.base else self.param
        flat_index = target.flat_index(name, self.index)
        weight = state.param(name, target.base).clone()
        weight.view(-1)[flat_index] = self.value
        return state.with_params({name: weight}, {"kind": "stuck", "param": name, "index": flat_index,
                                                  "value": self.value})

    def spec(self) -> str:
        """SPEC string."""
        return f"stuck:{self.param}:{self.index}:{self.value}"


@dataclass(frozen=True)
class Perturbation:
    """w + du on the parameters `params` ([G] §3.3): `gauss` draws du_i ~ N(0, σ²/n) so E‖du‖² = σ² ([G] Eq. 9);
    `sphere` takes du = σ·u with u uniform on the unit sphere of R^n."""

    law: str  # "gauss" or "sphere"
    sigma: float
    params: str = "all"

    def __post_init__(self) -> None:
        _check_sigma(self.sigma)
        if self.law not in ("gauss", "sphere"):
            raise LesionError(f"unknown perturbation law {self.law!r}")

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Add the random perturbation."""
        names = target.match(self.params)
        flat = _flat(target, state, names)
        noise = torch.randn(flat.numel(), generator=generator, dtype=torch.float64)
        if self.law == "gauss":
            du = noise * (self.sigma / math.sqrt(flat.numel()))
        else:
            du = noise * (self.sigma / float(noise.norm()))
        record = {"kind": self.law, "params": names, "sigma": self.sigma, "norm": float(du.norm())}
        return state.with_params(_unflat(target, names, flat.double() + du), record)

    def spec(self) -> str:
        """SPEC string."""
        return f"{self.law}:{self.params}:{self.sigma}" if self.params != "all" else f"{self.law}:{self.sigma}"


@dataclass(frozen=True)
class Direction:
    """w + du for an explicit direction du (a .npy/.pt flat vector over the parameters `params`, in
    named_parameters order, or a .pt dict name → tensor), rescaled to norm σ when σ is given."""

    path: str
    sigma: float | None = None
    params: str = "all"

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Add the direction."""
        names = target.match(self.params)
        flat = _flat(target, state, names)
        du = load_direction(self.path, names, target).double()
        if du.numel() != flat.numel():
            raise LesionError(f"direction {self.path} has {du.numel()} values; the parameters {self.params} "
                              f"have {flat.numel()}")
        if self.sigma is not None:
            _check_sigma(self.sigma)
            norm = float(du.norm())
            if norm == 0:
                raise LesionError(f"direction {self.path} is zero: it cannot be scaled to σ")
            du = du * (self.sigma / norm)
        record = {"kind": "direction", "path": self.path, "norm": float(du.norm())}
        return state.with_params(_unflat(target, names, flat.double() + du), record)

    def spec(self) -> str:
        """SPEC string."""
        return f"direction:{self.path}" + (f":{self.sigma}" if self.sigma is not None else "")


def load_direction(path: str, names: list[str], target: Target) -> torch.Tensor:
    """A flat direction from .npy (a vector) or .pt (a tensor, or a dict of parameter name → tensor)."""
    file = Path(path).expanduser()
    if not file.exists():
        raise LesionError(f"direction file not found: {file}")
    try:
        if file.suffix == ".npy":
            return torch.from_numpy(np.load(file, allow_pickle=False)).flatten()
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - numpy and torch raise many kinds on a bad file
        raise LesionError(f"cannot read direction file {file}: {err}") from err
    if isinstance(payload, dict):
        missing = [n for n in names if n not in payload]
        if missing:
            raise LesionError(f"direction {file} lacks {', '.join(missing[:4])}")
        return torch.cat([payload[n].flatten() for n in names])
    if isinstance(payload, torch.Tensor):
        return payload.flatten()
    raise LesionError(f"direction {file} holds a {type(payload).__name__}, not a tensor")


@dataclass(frozen=True)
class BitFlip:
    """Bit flips in the stored format of weights (SPEC §1, beyond the papers): either one chosen bit of one
    weight (`param`, `index`, `bit`), or random flips at bit-error rate `ber` over all stored bits of the
    parameters `params` (optionally only at bit positions `positions`). int8 uses a per-tensor scale
    max|w|/127."""

    params: str = "all"
    fmt: str = "float32"
    ber: float | None = None
    positions: tuple[int, ...] | None = None
    index: str | None = None
    bit: int | None = None

    def __post_init__(self) -> None:
        if self.fmt not in bitlib.FORMATS:
            raise LesionError(f"unknown storage format {self.fmt!r}; choose one of {', '.join(bitlib.FORMATS)}")
        if (self.ber is None) == (self.bit is None):
            raise LesionError("a bit flip needs either ber=RATE or PARAM:INDEX:BIT")
        if self.ber is not None and not 0.0 <= self.ber <= 1.0:
            raise LesionError(f"a bit-error rate must lie in [0, 1], got {self.ber}")
        if self.bit is not None and not 0 <= self.bit < bitlib.FORMATS[self.fmt]:
            raise LesionError(f"bit {self.bit} does not exist in {self.fmt} (0..{bitlib.FORMATS[self.fmt] - 1})")

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Flip the bits and decode the damaged weights."""
        if self.bit is not None:
            name = self.params if self.params in target.base else target.match(self.params)[0]
            flat_index = target.flat_index(name, self.index or "0")
            weight = state.param(name, target.base)
            flipped = bitlib.flip_bits(weight, torch.tensor([flat_index]), torch.tensor([self.bit]),
                                       self.fmt).to(weight.dtype)
            record = {"kind": "bitflip", "format": self.fmt, "param": name, "index": flat_index, "bit": self.bit,
                      "bit_name": bitlib.bit_name(self.fmt, self.bit),
                      "before": float(weight.flatten()[flat_index]), "after": float(flipped.flatten()[flat_index])}
            return state.with_params({name: flipped}, record)
        names = target.match(self.params)
        sizes = [target.base[n].numel() for n in names]
        flat_idx, flat_bits = bitlib.random_bit_positions(sum(sizes), float(self.ber), self.fmt, generator,
                                                          self.positions)
        changed, offset = {}, 0
        for name, size in zip(names, sizes, strict=True):
            mine = (flat_idx >= offset) & (flat_idx < offset + size)
            if bool(mine.any()):
                weight = state.param(name, target.base)
                changed[name] = bitlib.flip_bits(weight, flat_idx[mine] - offset, flat_bits[mine],
                                                 self.fmt).to(weight.dtype)
            offset += size
        record = {"kind": "bitflip", "format": self.fmt, "params": names, "ber": self.ber,
                  "flips": int(flat_idx.numel()), **index_record(flat_idx * 64 + flat_bits)}
        return state.with_params(changed, record)

    def spec(self) -> str:
        """SPEC string."""
        fmt = f":fmt={self.fmt}" if self.fmt != "float32" else ""
        if self.bit is not None:
            return f"bitflip:{self.params}:{self.index}:{self.bit}{fmt}"
        positions = f":bits={','.join(map(str, self.positions))}" if self.positions else ""
        scope = f"{self.params}:" if self.params != "all" else ""
        return f"bitflip:{scope}ber={self.ber}{fmt}{positions}"


Damage = UnitCrash | FilterDeletion | WeightDeletion | StuckAt | Perturbation | Direction | BitFlip


def realise(target: Target, damages: list[Damage] | tuple[Damage, ...], generator: torch.Generator) -> Realised:
    """Realise several descriptions in order, each on the network the previous ones left (composition)."""
    state = Realised()
    for damage in damages:
        state = damage.realise(target, state, generator)
    return state
