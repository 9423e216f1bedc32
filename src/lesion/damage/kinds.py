"""What faults do (SPEC §1): damage descriptions, pure and composable, realised against a `Target`.

Every description is a frozen dataclass with `realise(target, state, generator) -> Realised`, which returns
a new state (the trained network is `Realised()`), and `spec()`, the SPEC string that parses back to it.
Descriptions compose by realising them in order, each seeing the damage of the ones before.
Records of the concrete faults list indices when there are at most `RECORD_LIMIT` of them, else a count and
a sha256 digest of the indices (replays re-realise from the seed and compare).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lesion.damage import bits as bitlib
from lesion.damage import keyed_random
from lesion.damage.activation_kinds import ActivationBitFlip, ActivationStuck
from lesion.damage.realised import Realised, UnitOverride
from lesion.damage.selectors import Selector
from lesion.damage.target import Target
from lesion.errors import LesionError
from lesion.sites import Site
from lesion.sites.modules import unit_rows

RECORD_LIMIT = 1000
PATCH_FRACTION = 0.05  # a deletion of at most this share of the weights is kept as a patch (entries)


def index_record(indices: torch.Tensor) -> dict[str, Any]:
    """Indices themselves when few, else their count and digest."""
    flat = indices.to(torch.int64).flatten().cpu()
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


def _patched(target: Target, state: Realised, patches: list[tuple[str, torch.Tensor, torch.Tensor]],
             record: dict[str, Any]) -> Realised:
    """`state` with every (parameter, flat indices, values) patch applied and `record` as one fault."""
    if not patches:
        return state.with_params({}, record)
    for k, (name, indices, values) in enumerate(patches):
        state = state.with_patch(target.tensors, name, indices, values, record)
        if k:  # one fault, however many parameters it touches
            state = replace(state, faults=state.faults[:-1])
    return state


def _check_sigma(sigma: float) -> None:
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise LesionError(f"σ must be a finite number ≥ 0, got {sigma}")


@dataclass(frozen=True)
class UnitCrash:
    """Units of a site (SPEC §6.1: features of a Linear layer, channels of a conv layer, features of a token
    output, after their activation) output `value` for every input and position: a crash when value = 0
    ([R] Def. 2), stuck-at otherwise."""

    layer: str
    units: Selector
    value: float = 0.0

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Override the chosen units' values at the site."""
        site = target.site(self.layer, "unit")
        chosen = self.units.select(site.width, None, generator)
        current = state.units.get(site.name) or UnitOverride.identity(site)  # on the host: one copy below
        record = {"kind": "crash", "site": site.name, "width": site.width, **index_record(chosen),
                  "value": self.value}
        return state.with_units(current.force(chosen, self.value).to(target.device), record)

    def spec(self) -> str:
        """SPEC string."""
        tail = f":value={self.value}" if self.value != 0 else ""
        return f"crash:{self.layer}:{self.units.describe()}{tail}"


@dataclass(frozen=True)
class HeadCrash:
    """Attention heads of a site output 0 (SPEC §6.1: the head's slice of the attention output before the output
    projection is zeroed), applied as zeros in the projection's weight entries that read that slice."""

    site: str
    heads: Selector

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Zero the projection columns (rows for GPT-2's Conv1D) of the chosen heads."""
        site = target.site(self.site, "head")
        layout = site.heads
        assert layout is not None
        chosen = self.heads.select(layout.heads, None, generator)
        weight = state.param(layout.param, target.base)
        columns = (chosen.unsqueeze(1) * layout.head_dim + torch.arange(layout.head_dim)).reshape(-1)
        zeros = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
        zeros.index_fill_(layout.axis, columns.to(weight.device), True)
        state = state.with_pinned(layout.param, zeros)  # later weight damage leaves the crashed heads silent
        return state.with_params({layout.param: weight}, {"kind": "head", "site": site.name, "heads": layout.heads,
                                                          **index_record(chosen)})

    def spec(self) -> str:
        """SPEC string."""
        return f"head:{self.site}:{self.heads.describe()}"


ACROSS_UNITS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm)


def unit_parameters(target: Target, site: Site) -> list[tuple[str, int]]:
    """(parameter, axis) of every per-unit parameter from the site's layer to the site: the layer's weight
    rows (columns for Conv1D) and bias, and the scale and shift of the norms in between (SPEC §6.1: with
    BatchNorm, a deletion includes the BN shift). Where a norm over the units (LayerNorm, GroupNorm, RMSNorm)
    comes between, the layer's rows feed every unit through its statistics: only the per-unit scale and shift
    from that norm on belong to the unit."""
    if site.layer is None:
        if site.dtype in ("quint8", "qint8"):
            raise LesionError(f"{site.name} follows a quantised layer, whose stored integers a deletion cannot "
                              f"edit; crash:{site.name}:UNITS silences the same units after the activation")
        raise LesionError(f"{site.name} has no layer of its own (it follows a residual add or is a module's "
                          "input): delete units at the site of a Linear or conv layer")
    modules = dict(target.model.named_modules())
    layer = modules[site.layer]
    weight_name, axis = unit_rows(layer)
    owned = [(f"{site.layer}.{weight_name}", axis)]
    if f"{site.layer}.bias" in target.base:
        owned.append((f"{site.layer}.bias", 0))
    chain = list(site.chain)
    across = [i for i, path in enumerate(chain) if isinstance(modules.get(path), ACROSS_UNITS)]
    if across:  # a norm over the units: the layer's rows (and what precedes the norm) feed every unit's value
        owned, chain = [], chain[across[-1]:]
    for path in chain:
        for name in ("weight", "bias"):
            full = f"{path}.{name}"
            if full in target.base and target.base[full].dim() == 1 and target.base[full].numel() == site.width:
                owned.append((full, 0))
    return owned


@dataclass(frozen=True)
class FilterDeletion:
    """Units (filters, conv output channels, neurons) of a site deleted ([G] filter / node deletion; SPEC §6.1):
    the unit is silent downstream. Its incoming weights and bias, and the scale and shift of a norm between
    the layer and the site, are set to 0, and the unit's value at the site is forced to 0 (so that it is 0
    after the activation too, whatever φ(0) is)."""

    module: str
    units: Selector

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Zero the units' parameters and force their value to 0 at the site."""
        site = target.site(self.module, None)
        if site.kind == "attention-head":
            raise LesionError(f"{site.name} is an attention module: delete its heads with head:{site.name}:HEADS")
        chosen = self.units.select(site.width, None, generator)
        changed = {}
        for name, axis in unit_parameters(target, site):
            tensor = state.param(name, target.base).clone()
            tensor.index_fill_(axis, chosen.to(tensor.device), 0.0)
            changed[name] = tensor
        record = {"kind": "filter", "site": site.name, "layer": site.layer, **index_record(chosen)}
        state = state.with_params(changed, record)
        if site.refused:
            return state
        current = state.units.get(site.name) or UnitOverride.identity(site)  # on the host: one copy below
        return state.with_units(current.force(chosen, 0.0).to(target.device), None)

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
        sizes = [target.base[n].numel() for n in names]
        current = _flat(target, state, names) if self.selector.reads_values else None
        chosen = self.selector.select(sum(sizes), current, generator)
        record = {"kind": "delete", "params": names, **index_record(chosen)}
        if chosen.numel() > PATCH_FRACTION * sum(sizes):
            flat = current.clone() if current is not None else _flat(target, state, names).clone()
            flat[chosen.to(flat.device)] = 0.0
            return state.with_params(_unflat(target, names, flat), record)
        chosen = torch.unique(chosen.to(target.device))
        patches, offset = [], 0
        for name, size in zip(names, sizes, strict=True):
            mine = chosen[(chosen >= offset) & (chosen < offset + size)] - offset
            if mine.numel():
                patches.append((name, mine, torch.zeros(mine.numel(), device=target.device)))
            offset += size
        return _patched(target, state, patches, record)

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
        name = self.param if self.param in target.base else single_match(target, self.param)
        flat_index = target.flat_index(name, self.index)
        index = torch.tensor([flat_index], device=target.device)
        value = torch.tensor([self.value], dtype=target.base[name].dtype, device=target.device)
        record = {"kind": "stuck", "param": name, "index": flat_index, "value": float(value[0])}
        if float(value[0]) != self.value and not math.isnan(self.value):
            record["asked"] = self.value  # the value the weight's dtype holds differs (1e6 in float16 is inf)
        return state.with_patch(target.base, name, index, value, record)

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
        noise = torch.randn(flat.numel(), generator=generator, dtype=torch.float64).to(flat.device)
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
        du = load_direction(self.path, names, target).double().to(flat.device)
        bad = int((~torch.isfinite(du)).sum())
        if bad:
            raise LesionError(f"direction {self.path} holds {bad} non-finite values (NaN/inf) of {du.numel()}; "
                              "a direction must be finite")
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


def single_match(target: Target, pattern: str, stored: bool = False) -> str:
    """The one parameter a single-weight damage names: a pattern that selects several is refused."""
    names = target.match(pattern, stored=stored)
    if len(names) > 1:
        shown = ", ".join(names[:4]) + (" …" if len(names) > 4 else "")
        raise LesionError(f"{pattern!r} selects {len(names)} parameters ({shown}): a single weight needs one name")
    return names[0]


@dataclass(frozen=True)
class BitFlip:
    """Bit flips in the stored format of weights (SPEC §1, beyond the papers): either one chosen bit of one
    weight (`param`, `index`, `bit`), or random flips at bit-error rate `ber` over all stored bits of the
    parameters `params` (optionally only at bit positions `positions`). int8 uses a per-tensor scale
    max|w|/127. Without `fmt`, the format is the one the weights are stored in (`stored_format`): float16 for a
    half-precision model, int8 for a quantised model's integers."""

    params: str = "all"
    fmt: str | None = None
    ber: float | None = None
    positions: tuple[int, ...] | None = None
    index: str | None = None
    bit: int | None = None

    def __post_init__(self) -> None:
        if self.fmt is not None and self.fmt not in bitlib.FORMATS:
            raise LesionError(f"unknown storage format {self.fmt!r}; choose one of {', '.join(bitlib.FORMATS)}")
        if (self.ber is None) == (self.bit is None):
            raise LesionError("a bit flip needs either ber=RATE or PARAM:INDEX:BIT")
        if self.ber is not None and not 0.0 <= self.ber <= 1.0:
            raise LesionError(f"a bit-error rate must lie in [0, 1], got {self.ber}")
        if self.fmt is not None:
            self._check_bits(self.fmt)

    def _check_bits(self, fmt: str) -> None:
        width = bitlib.FORMATS[fmt]
        if self.bit is not None and not 0 <= self.bit < width:
            raise LesionError(f"bit {self.bit} does not exist in {fmt} (0..{width - 1})")
        for bit in self.positions or ():
            bitlib.bit_name(fmt, bit)  # refuses a bit the format does not have

    def stored_format(self, target: Target, names: Sequence[str]) -> str:
        """The format the bits are flipped in: `fmt` when given, else the one the weights `names` are stored in
        (int8 when any is a quantised layer's integers, whose float biases then take int8 words as with
        fmt=int8). Weights of several float formats, or of float64, need `fmt`: refused with a one-line reason."""
        if self.fmt is not None:
            for name in names:
                if name not in target.stored:
                    bitlib.check_format_fits(self.fmt, target.base[name].dtype, f"the weights of {name}")
            return self.fmt
        if any(n in target.stored for n in names):
            fmt = "int8"
        else:
            found = {bitlib.format_for(target.base[n].dtype, "weights") for n in names}
            if len(found) > 1:
                raise LesionError(f"the weights {self.params!r} selects are stored in {' and '.join(sorted(found))}"
                                  ": flip each group in its own damage, or give one fmt= for all")
            fmt = found.pop()
        self._check_bits(fmt)
        return fmt

    def realise(self, target: Target, state: Realised, generator: torch.Generator) -> Realised:
        """Flip the bits and decode the damaged weights."""
        tensors = target.tensors
        if self.bit is not None:
            name = self.params if self.params in tensors else single_match(target, self.params, stored=True)
            fmt = self.stored_format(target, [name])
            flat_index = target.flat_index(name, self.index or "0")
            weight = state.param(name, tensors)
            touched, values = self._flipped(target, name, weight, torch.tensor([flat_index]), torch.tensor([self.bit]),
                                            fmt)
            after = float(values[0].to(weight.dtype)) if touched.numel() else float(weight.flatten()[flat_index])
            record = {"kind": "bitflip", "format": fmt, "param": name, "index": flat_index, "bit": self.bit,
                      "bit_name": bitlib.bit_name(fmt, self.bit),
                      "before": float(weight.flatten()[flat_index]), "after": after}
            return state.with_patch(tensors, name, touched, values, record)
        names = target.match(self.params, stored=True)
        fmt = self.stored_format(target, names)
        sizes = [tensors[n].numel() for n in names]
        flat_idx, flat_bits, record = self._draw(target, names, sizes, generator, fmt)
        patches, offset = [], 0
        for name, size in zip(names, sizes, strict=True):
            mine = (flat_idx >= offset) & (flat_idx < offset + size)
            if bool(mine.any()):
                weight = state.param(name, tensors)
                patches.append((name, *self._flipped(target, name, weight, flat_idx[mine] - offset,
                                                     flat_bits[mine], fmt)))
            offset += size
        return _patched(target, state, patches, record)

    def _draw(self, target: Target, names: list[str], sizes: list[int], generator: torch.Generator, fmt: str
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Random (flat index, bit) pairs over the concatenated `names` at the rate and the fault record, from
        one key drawn from `generator` (`_draw_each` of that key)."""
        _, flat_idx, flat_bits, records = self._draw_each(target, names, sizes, [keyed_random.key_of(generator)],
                                                          fmt)
        return flat_idx, flat_bits, records[0]

    def _draw_each(self, target: Target, names: list[str], sizes: list[int], keys: Sequence[int], fmt: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        """(key index, flat index, bit) of the random flips over the concatenated `names` at the rate, for every
        key at once (`bits.random_bit_positions_batch`), less those a protected bit (`Target.protected`:
        corrected by ECC, say) would have taken, and each key's fault record. The draw itself does not depend on
        the protection, so a protected campaign has the same configurations less those flips."""
        owner, flat_idx, flat_bits = bitlib.random_bit_positions_batch(sum(sizes), float(self.ber), fmt, keys,
                                                                       self.positions)
        protected = None
        if target.protected:
            table = torch.zeros(len(names), 64, dtype=torch.bool)
            width = bitlib.FORMATS[fmt]
            for p, name in enumerate(names):
                beyond = sorted(b for b in target.protected.get(name, ()) if b >= width)
                if beyond:  # bit 31 of a float16 weight protects nothing: say so rather than run unprotected
                    raise LesionError(f"protected bit {beyond[0]} of {name} does not exist in {fmt} (0..{width - 1})")
                table[p, list(target.protected.get(name, ()))] = True
            offsets = torch.tensor(np.cumsum(sizes), dtype=torch.int64)
            hit = table[torch.searchsorted(offsets, flat_idx, right=True), flat_bits]
            protected = torch.bincount(owner[hit], minlength=len(keys)).tolist()
            owner, flat_idx, flat_bits = owner[~hit], flat_idx[~hit], flat_bits[~hit]
        counts = torch.bincount(owner, minlength=len(keys)).tolist()
        records = []
        for k, words in enumerate(torch.split(flat_idx * 64 + flat_bits, counts)):
            extra = {} if protected is None else {"protected": protected[k]}
            records.append({"kind": "bitflip", "format": fmt, "params": names, "ber": self.ber, "flips": counts[k],
                            **extra, **index_record(words)})
        return owner, flat_idx, flat_bits, records

    def _flipped(self, target: Target, name: str, weight: torch.Tensor, indices: torch.Tensor, bits: torch.Tensor,
                 fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(distinct flat indices, new values) of the flipped entries: decoded from the format for a parameter,
        the new integer words for the stored weights of a quantised layer."""
        if name in target.stored:
            from lesion.damage.quantised import check_stored_format, flipped_integers

            check_stored_format(name, fmt)
            return flipped_integers(weight, indices, bits)
        return bitlib.flipped_entries(weight, indices, bits, fmt)

    def realise_each(self, target: Target, seeds: Sequence[int]) -> list[Realised]:
        """`realise(target, [self], Generator(seed))` for every seed, the same numbers and records, with the
        decoding of the flipped words done once for all seeds (random flips at a rate, on the trained network)."""
        if self.ber is None:
            raise LesionError("realise_each draws random flips: it needs ber=RATE")
        names = target.match(self.params, stored=True)
        if any(n in target.stored for n in names):  # integer words of a quantised model: one seed at a time
            generator = torch.Generator()
            return [self.realise(target, Realised(), generator.manual_seed(s)) for s in seeds]
        fmt = self.stored_format(target, names)
        sizes = [target.base[n].numel() for n in names]
        offsets = torch.tensor([0, *np.cumsum(sizes)], dtype=torch.int64)
        total = int(offsets[-1])
        generator = torch.Generator()
        keys = [keyed_random.key_of(generator.manual_seed(s)) for s in seeds]
        sample, element, bits, records = self._draw_each(target, names, sizes, keys, fmt)
        if not element.numel():
            return [Realised().with_params({}, r) for r in records]
        # the (element, bit) pairs of one sample are distinct, so the bits flipped in one word combine by a sum
        keys, inverse = torch.unique(sample * total + element, return_inverse=True)
        masks = torch.zeros(keys.numel(), dtype=torch.int64).index_add_(0, inverse, torch.ones_like(bits) << bits)
        element = keys % total
        param = torch.searchsorted(offsets, element, right=True) - 1
        values = torch.empty(keys.numel(), dtype=torch.float32)
        for p, name in enumerate(names):
            (chosen,) = torch.nonzero(param == p, as_tuple=True)
            if chosen.numel():
                local = element[chosen] - offsets[p]
                values[chosen] = bitlib.flip_words(target.base[name], local, masks[chosen], fmt)
        # runs of one (sample, parameter): the keys are sorted, so each is contiguous
        groups, sizes_ = torch.unique_consecutive((keys // total) * len(names) + param, return_counts=True)
        locals_, values = (element - offsets[param]).to(target.device), values.to(target.device)
        patches: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in seeds]
        for group, start, stop in zip(groups.tolist(), (torch.cumsum(sizes_, 0) - sizes_).tolist(),
                                      torch.cumsum(sizes_, 0).tolist(), strict=True):
            name = names[group % len(names)]
            patches[group // len(names)][name] = (locals_[start:stop], values[start:stop].to(target.base[name].dtype))
        out = [Realised({}, {}, (record,), patch) for record, patch in zip(records, patches, strict=True)]
        return out

    def spec(self) -> str:
        """SPEC string."""
        fmt = f":fmt={self.fmt}" if self.fmt is not None else ""
        if self.bit is not None:
            return f"bitflip:{self.params}:{self.index}:{self.bit}{fmt}"
        positions = f":bits={','.join(map(str, self.positions))}" if self.positions else ""
        scope = f"{self.params}:" if self.params != "all" else ""
        return f"bitflip:{scope}ber={self.ber}{fmt}{positions}"


Damage = (UnitCrash | HeadCrash | FilterDeletion | WeightDeletion | StuckAt | Perturbation | Direction | BitFlip
          | ActivationBitFlip | ActivationStuck)


def realise_each(target: Target, damages: Sequence[Damage], seeds: Sequence[int]) -> list[Realised]:
    """`realise(target, damages, torch.Generator().manual_seed(seed))` for every seed (a campaign's batch); a lone
    random bit flip is realised for all seeds at once (`BitFlip.realise_each`)."""
    if len(damages) == 1 and isinstance(damages[0], BitFlip) and damages[0].ber is not None:
        with _naming(damages[0]):
            return damages[0].realise_each(target, seeds)
    generator = torch.Generator()
    return [realise(target, list(damages), generator.manual_seed(s)) for s in seeds]


def realise(target: Target, damages: list[Damage] | tuple[Damage, ...], generator: torch.Generator) -> Realised:
    """Realise several descriptions in order, each on the network the previous ones left (composition)."""
    state = Realised()
    for damage in damages:
        with _naming(damage):
            state = damage.realise(target, state, generator)
    return state


@contextlib.contextmanager
def _naming(damage: Damage) -> Iterator[None]:
    """A description that cannot be realised on this model (more units than the site has, an index out of range,
    a bit the format lacks) is refused as the spec parser refuses a malformed one: naming the spec."""
    try:
        yield
    except LesionError as err:
        if str(err).startswith("bad damage"):
            raise
        raise LesionError(f"bad damage {damage.spec()!r}: {err}") from err
