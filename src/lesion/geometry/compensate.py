"""Closed-form compensation of deleted units, without labels or gradients (issue 15, items 1 and 2; SPEC §3.6
damage sets): ridge regression of the deleted units on the kept ones (`compensate`), or layer-wise OBS (`obs`).

For the deleted units S of a site, with kept units K, each removed unit's value is modelled as an affine function
of the kept units of the same site, fitted by ridge regression on unlabelled calibration inputs,

    h_S(x) ≈ Mᵀ h_K(x) + c,    (M, c) = argmin Σ_x ‖h_S(x) − Mᵀ h_K(x) − c‖² + λ‖M‖²,

and folded into the layer that reads the site: W'[:, K] = W[:, K] + W[:, S] Mᵀ, b' = b + W[:, S] c, W'[:, S] = 0.
The targets h_S are the undamaged network's values; the regressors h_K those of the network as compensated so far,
so several damaged sites are taken in forward order, each on the already-compensated network. There the kept
values have drifted from their clean ones too (an earlier site's damage reaches them): the drift h_K^clean − h_K
is fitted alongside, by the same map, and folded as W_K M_Kᵀ, so the reader's output is fitted to the clean one.
The values are those the reader's weights multiply: the reader's own input (after any pooling, flatten or function
between the site and the reader). A 1-d or 2-d convolution (groups 1) is fitted over its im2col patches, every
kernel offset of every channel one column (zero padding included), so the fold is the layer-wise least-squares
optimum (OBC); other convolutions per channel over positions (a 1×1 map); token features over every token;
channels flattened into a dense layer one row per position (one map shared by the positions). Without a bias in
the reader, c is 0 and the fit has no intercept. λ = `ridge` · tr(C_KK)/|K| (C_KK the covariance of the kept
columns), so `ridge` is scale-free. The fits use the first and second moments of the columns, accumulated batch by
batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lesion.errors import LesionError
from lesion.sites.site import Site


@dataclass(frozen=True)
class DeletedUnits:
    """The deleted units of one site, and the unit layer that reads the site."""

    site: Site
    reader: str
    units: tuple[int, ...]

    @property
    def kept(self) -> tuple[int, ...]:
        """The units that stay."""
        gone = set(self.units)
        return tuple(u for u in range(self.site.width) if u not in gone)


def deleted_units(model: nn.Module, damage: Any, example: torch.Tensor) -> list[DeletedUnits]:
    """The sites of a `DamageSet` (each of its parts), in forward order, with their readers."""
    from lesion.damage.target import Target
    from lesion.sites.table import reader_of

    target = Target(model, example=example)
    parts = damage.parts or (damage,)
    out = []
    for part in parts:
        site = target.site(part.layer, None)
        if site.kind == "attention-head":
            out.append(_head_units(target, site, part.units))
            continue
        reader = reader_of(target.table, site)
        if reader is None:
            raise LesionError(f"cannot compensate {site.name}: no layer reads its units directly")
        out.append(DeletedUnits(site, reader, tuple(sorted(part.units))))
    return sorted(out, key=lambda d: d.site.index)


def _head_units(target: Any, site: Site, heads: tuple[int, ...]) -> DeletedUnits:
    """Deleted heads as deleted units of the output projection's input (SPEC §6.1: a head is its slice of the
    attention output), read by the projection."""
    from dataclasses import replace

    layout = site.heads
    reader = layout.param[: -len(".weight")]
    calls = [c for c in target.table.recording.calls if c.path == reader]
    if not calls or calls[0].input is None:
        raise LesionError(f"cannot compensate the heads of {site.name}: its output projection {reader} is not called "
                          "as a module (nn.MultiheadAttention applies it inside a function)")
    x = calls[0].input
    width = layout.heads * layout.head_dim
    unit_site = replace(site, path=reader, call=0, calls=len(calls), kind="token-feature", axis=x.dim() - 1,
                        width=width, hook="input", shape=tuple(x.shape[1:]), heads=None, read_through=None)
    dims = tuple(h * layout.head_dim + d for h in sorted(heads) for d in range(layout.head_dim))
    return DeletedUnits(unit_site, reader, dims)


@dataclass(frozen=True)
class ReaderColumns:
    """How the reader's input becomes rows of columns: im2col patches of a convolution (`im2col`, `patch` kernel
    offsets per unit, the padded border and the stride as the convolution sees them, a 1×1 kernel included), or
    one column per unit (`patch` 1, rows over positions and tokens)."""

    reader: nn.Module
    width: int
    patch: int
    im2col: bool = False

    @staticmethod
    def of(reader: nn.Module, width: int) -> ReaderColumns:
        """Patches for a 1-d or 2-d convolution with groups 1 that reads the units as its channels."""
        if isinstance(reader, (nn.Conv1d, nn.Conv2d)) and reader.groups == 1 and reader.in_channels == width:
            return ReaderColumns(reader, width, int(torch.tensor(reader.kernel_size).prod()), im2col=True)
        return ReaderColumns(reader, width, 1)

    def rows(self, value: torch.Tensor) -> torch.Tensor:
        """(rows, width · patch) float64 from one batch of the reader's input; a unit's columns are contiguous."""
        import torch.nn.functional as F

        reader = self.reader
        if self.im2col or isinstance(reader, nn.modules.conv._ConvNd):
            if self.im2col:
                mode = "constant" if reader.padding_mode == "zeros" else reader.padding_mode
                padded = F.pad(value, reader._reversed_padding_repeated_twice, mode=mode)
                if isinstance(reader, nn.Conv1d):
                    padded = padded.unsqueeze(2)
                two = (lambda t: (1, *t)) if isinstance(reader, nn.Conv1d) else (lambda t: tuple(t))
                cols = F.unfold(padded, two(reader.kernel_size), dilation=two(reader.dilation),
                                stride=two(reader.stride))
                return cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()
            value = value.movedim(1, -1)  # channels last
        features = value.shape[-1]
        if features == self.width:
            return value.reshape(-1, features).double()
        if features % self.width == 0:  # channels × positions flattened into a dense layer
            block = features // self.width
            return value.reshape(-1, self.width, block).transpose(1, 2).reshape(-1, self.width).double()
        raise LesionError(f"the reader's input has {features} features, not a multiple of the {self.width} units")

    def columns(self, units: tuple[int, ...]) -> list[int]:
        """The columns of `units`."""
        return [u * self.patch + j for u in units for j in range(self.patch)]


def reader_input(flat: Any, w: torch.Tensor, path: str, call: int, x: torch.Tensor) -> torch.Tensor:
    """The input of call `call` of module `path` in the forward of `flat` on x at weights w."""
    module = dict(flat.model.named_modules())[path]
    seen: list[torch.Tensor] = []
    calls = [0]

    def before(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if calls[0] == call and args and isinstance(args[0], torch.Tensor):
            seen.append(args[0].detach())
        calls[0] += 1

    handle = module.register_forward_pre_hook(before)
    try:
        with torch.no_grad():
            flat(x, w)
    finally:
        handle.remove()
    if not seen:
        raise LesionError(f"{path} did not run in the forward pass")
    return seen[0]


@dataclass(frozen=True)
class Moments:
    """Mean and covariance of the rows z = [z_K, z_S] of the kept and deleted columns (the first `kept` of z)."""

    kept: int
    mean: torch.Tensor
    second: torch.Tensor  # the covariance
    rows: int

    @staticmethod
    def accumulate(batches: Any) -> Moments:
        """From an iterator of (z_K, z_S) row batches (float64), about the first batch's mean (for accuracy)."""
        total, outer, rows, shift, kept = None, None, 0, None, 0
        for z_kept, z_deleted in batches:
            z = torch.cat([z_kept, z_deleted], dim=1)
            if shift is None:
                shift, kept = z.mean(0), z_kept.shape[1]
                total, outer = torch.zeros_like(shift), torch.zeros(len(shift), len(shift), dtype=z.dtype,
                                                                     device=z.device)
            centred = z - shift
            total += centred.sum(0)
            outer += centred.T @ centred
            rows += len(z)
        if shift is None:
            raise LesionError("no calibration inputs to compensate with")
        mean = total / rows
        return Moments(kept, mean + shift, outer / rows - torch.outer(mean, mean), rows)

    def raw(self) -> torch.Tensor:
        """E[zzᵀ] (about 0)."""
        return self.second + torch.outer(self.mean, self.mean)

    def drifted(self, kept: int) -> bool:
        """Whether columns kept … 2·kept (the kept values' drift from their clean values) are not all 0."""
        block = slice(kept, 2 * kept)
        return bool(self.mean[block].any() or self.second[block].any())

    def without(self, columns: range) -> Moments:
        """The moments with `columns` (after the kept ones) left out."""
        left_out = set(columns)
        keep = [i for i in range(len(self.mean)) if i not in left_out]
        index = torch.tensor(keep, device=self.mean.device)
        return Moments(self.kept, self.mean[index], self.second[index][:, index], self.rows)


def ridge_fit(moments: Moments, ridge: float, intercept: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, c) with z_S ≈ z_K M + c (float64): ridge regression, λ = ridge · tr(C_KK)/|K|; without an intercept
    about 0 instead of the means."""
    K = moments.kept
    cov = moments.second if intercept else moments.raw()
    mean = moments.mean if intercept else torch.zeros_like(moments.mean)
    if K == 0:
        return cov.new_zeros(0, len(cov)), mean
    gram, cross = cov[:K, :K], cov[:K, K:]
    lam = ridge * float(torch.trace(gram)) / K + 1e-12
    M = torch.linalg.solve(gram + lam * torch.eye(K, dtype=gram.dtype, device=gram.device), cross)
    return M, mean[K:] - mean[:K] @ M


def obs_fit(moments: Moments, damping: float, intercept: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, c) of layer-wise OBS (OBC, issue 15 item 2) for removing the reader's input columns S: with the rows
    z = [z_K, z_S, 1] (the 1 when the reader has a bias) and H = E[zzᵀ] + λI (λ = damping · mean diagonal), the
    update that zeroes W[:, S] and least changes W z on the calibration inputs is δW = −W_S (H⁻¹_SS)⁻¹ H⁻¹_S·,
    i.e. M = −H⁻¹_KS (H⁻¹_SS)⁻¹ and c = −(H⁻¹_SS)⁻¹ H⁻¹_S1 (float64)."""
    kept = moments.kept
    n = len(moments.mean)
    H = moments.raw()
    if intercept:
        H = torch.cat([torch.cat([H, moments.mean[:, None]], 1),
                       torch.cat([moments.mean, moments.mean.new_ones(1)])[None]], 0)
    H = H + damping * float(torch.diagonal(H).mean()) * torch.eye(len(H), dtype=H.dtype, device=H.device)
    inverse = torch.linalg.inv(H)
    S = slice(kept, n)
    block = torch.linalg.inv(inverse[S, S])  # (H⁻¹_SS)⁻¹
    M = -inverse[:kept, S] @ block
    c = -(block @ inverse[S, n]) if intercept else torch.zeros(n - kept, dtype=H.dtype, device=H.device)
    return M, c


def fold(params: dict[str, torch.Tensor], original: dict[str, torch.Tensor], reader: nn.Module, reader_path: str,
         deleted: DeletedUnits, M: torch.Tensor, c: torch.Tensor, columns: ReaderColumns | None = None,
         drift: bool = False) -> dict[str, torch.Tensor]:
    """New reader weight and bias with the fitted map folded in (module docstring), the deleted inputs zeroed:
    W[:, S] from the `original` (undamaged) weights, W[:, K] and b from `params`. With im2col `columns`, M maps
    the kept units' patch columns to the deleted ones'. With `drift`, M and c map to [K, S]: the kept values'
    drift from their clean values first (W'_K = W_K + W_K M_Kᵀ + W_S M_Sᵀ)."""
    from lesion.sites.modules import reader_columns

    if columns is not None and columns.im2col:
        return _fold_patches(params, original, reader_path, deleted, M, c, columns, drift)

    axis = reader_columns(reader)
    weight = params[f"{reader_path}.weight"]
    width = deleted.site.width

    def units_first(tensor: torch.Tensor) -> torch.Tensor:  # (out, units, ..., block)
        t = tensor.double().movedim(axis, 1)
        if t.shape[1] % width:
            raise LesionError(f"cannot tell which weights of {reader_path} read the units of {deleted.site.name}")
        return t.reshape(t.shape[0], width, t.shape[1] // width, *t.shape[2:]).movedim(2, -1)

    shape = weight.movedim(axis, 1).shape
    w = units_first(weight)
    S = torch.tensor(deleted.units, dtype=torch.long, device=w.device)
    K = torch.tensor(deleted.kept, dtype=torch.long, device=w.device)  # empty where every unit is deleted
    w_s = units_first(original[f"{reader_path}.weight"]).index_select(1, S)
    if drift:
        w_s = torch.cat([w.index_select(1, K), w_s], dim=1)
    new = w.clone()
    new[:, K] += torch.einsum("os...,ks->ok...", w_s, M.to(w.device))
    new[:, S] = 0.0
    out = {f"{reader_path}.weight": new.movedim(-1, 2).reshape(shape).movedim(1, axis).to(weight.dtype)}
    bias = params.get(f"{reader_path}.bias")
    if bias is not None:
        shift = torch.einsum("os...,s->o", w_s, c.to(w.device))
        out[f"{reader_path}.bias"] = (bias.double() + shift).to(bias.dtype)
    return out


def _fold_patches(params: dict[str, torch.Tensor], original: dict[str, torch.Tensor], reader_path: str,
                  deleted: DeletedUnits, M: torch.Tensor, c: torch.Tensor, columns: ReaderColumns,
                  drift: bool = False) -> dict[str, torch.Tensor]:
    """`fold` for a convolution fitted on its patches: the weight (out, C, *kernel) as (out, C·k), whose column
    order (channel, then kernel offsets) is im2col's."""
    weight = params[f"{reader_path}.weight"]
    w = weight.double().reshape(len(weight), -1)
    w_s = original[f"{reader_path}.weight"].double().reshape(len(weight), -1)[:, columns.columns(deleted.units)]
    kept, gone = columns.columns(deleted.kept), columns.columns(deleted.units)
    if drift:
        w_s = torch.cat([w[:, kept], w_s], dim=1)
    new = w.clone()
    new[:, kept] += w_s @ M.T.to(w.device)
    new[:, gone] = 0.0
    out = {f"{reader_path}.weight": new.reshape(weight.shape).to(weight.dtype)}
    bias = params.get(f"{reader_path}.bias")
    if bias is not None:
        out[f"{reader_path}.bias"] = (bias.double() + w_s @ c.to(w.device)).to(bias.dtype)
    return out


def compensate(problem: Any, calibration: int = 256, ridge: float = 1e-3, fit: str = "regression"
               ) -> tuple[Any, torch.Tensor]:
    """Delete D and compensate every damaged site in forward order (module docstring); returns the method's
    result and the weights (w_D = 0 exactly). `fit`: "regression" (`ridge_fit`, the method `compensate`) or
    "obs" (`obs_fit`, layer-wise OBS with `ridge` as its damping, the method `obs`). Compute: two forwards over
    the calibration inputs per site, a forward counted as 1/3 of a forward and backward pass."""
    from lesion.geometry.recovery import MethodResult

    started = time.perf_counter()
    flat = problem.flat
    x = problem.x_train[:calibration]
    w = problem.w0 * problem.mask
    modules = dict(flat.model.named_modules())
    parts = deleted_units(flat.model, problem.damage, problem.x_eval[:2])
    original = flat.unflatten(problem.w0)
    fits = []
    for part in parts:
        reader = modules[part.reader]
        columns = ReaderColumns.of(reader, part.site.width)
        path, call = part.site.read_through or (part.reader, part.site.call if part.site.path == part.reader else 0)
        kept, gone = columns.columns(part.kept), columns.columns(part.units)
        batch = 32 if columns.im2col else 512

        def rows(now: torch.Tensor = w, path: str = path, call: int = call, columns: ReaderColumns = columns,
                 kept: list[int] = kept, gone: list[int] = gone, batch: int = batch) -> Any:
            for i in range(0, len(x), batch):
                chunk = x[i:i + batch]
                values = columns.rows(reader_input(flat, now, path, call, chunk))
                clean = columns.rows(reader_input(flat, problem.w0, path, call, chunk))
                yield values[:, kept], torch.cat([clean[:, kept] - values[:, kept], clean[:, gone]], dim=1)

        moments = Moments.accumulate(rows())
        drift = moments.drifted(len(kept))
        if not drift:  # the kept values are the clean ones (the first damaged site): the deleted ones alone
            moments = moments.without(range(len(kept), 2 * len(kept)))
        intercept = f"{part.reader}.bias" in flat.layout.names
        fitter = obs_fit if fit == "obs" else ridge_fit
        M, c = fitter(moments, ridge, intercept)
        params = flat.unflatten(w.clone())
        params.update(fold(params, original, reader, part.reader, part, M, c, columns, drift))
        w = flat.layout.flatten(params) * problem.mask
        fits.append({"site": part.site.name, "reader": part.reader, "deleted": len(part.units),
                     "kept": len(part.kept), "rows": moments.rows, **({"patch": columns.patch}
                                                                       if columns.im2col else {})})
    acc, loss = problem.evaluate(w)
    examples = 2 * len(parts) * len(x) / 3
    name = "obs" if fit == "obs" else "compensate"
    return MethodResult(name, acc, loss, problem.epochs(examples), time.perf_counter() - started,
                        details={"calibration": len(x), "damping" if fit == "obs" else "ridge": ridge, "fit": fit,
                                 "sites": fits}), w
