"""Closed-form compensation of deleted units, without labels or gradients (issue 15, items 1 and 2; SPEC §3.6
damage sets): ridge regression of the deleted units on the kept ones (`compensate`), or layer-wise OBS (`obs`).

For the deleted units S of a site, with kept units K, each removed unit's value is modelled as an affine function
of the kept units of the same site, fitted by ridge regression on unlabelled calibration inputs,

    h_S(x) ≈ Mᵀ h_K(x) + c,    (M, c) = argmin Σ_x ‖h_S(x) − Mᵀ h_K(x) − c‖² + λ‖M‖²,

and folded into the layer that reads the site: W'[:, K] = W[:, K] + W[:, S] Mᵀ, b' = b + W[:, S] c, W'[:, S] = 0.
The targets h_S are the undamaged network's values; the regressors h_K those of the network as compensated so
far, so several damaged sites are taken in forward order, each on the already-compensated network. Units of a
convolution are channels, fitted over every position (a 1×1 map, shared by all positions and kernel offsets);
token features over every token; channels flattened into a dense layer read one column per position. Without a
bias in the reader, c is 0 and the fit has no intercept. λ = `ridge` · tr(C_KK)/|K| (C_KK the covariance of the
kept units), so `ridge` is scale-free.
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


def site_values(flat: Any, w: torch.Tensor, site: Site, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The values of the site's units as the layer reading them sees them, on inputs x at weights w: (rows,
    width) in float64, one row per input and position (conv) or token (sequences). Where the units are read
    through an elementwise function written as code (`Site.read_through`), the values after it."""
    path, call, hook = site.path, site.call, site.hook
    if site.read_through is not None:
        (path, call), hook = site.read_through, "input"
    module = dict(flat.model.named_modules())[path]
    seen: list[torch.Tensor] = []
    calls = [0]

    def keep(value: Any) -> None:
        if calls[0] == call and isinstance(value, torch.Tensor):
            seen.append(value.detach())

    def before(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if hook == "input":
            if args:
                keep(args[0])
            calls[0] += 1

    def after(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        if hook == "output":
            keep(output)
            calls[0] += 1

    rows = []
    handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                seen.clear()
                calls[0] = 0
                flat(x[i:i + batch], w)
                if not seen:
                    raise LesionError(f"{site.name} did not run in the forward pass")
                value = seen[0]
                if tuple(value.shape[1:]) != site.shape:  # read through a flatten: the site's shape again
                    value = value.reshape(len(value), *site.shape)
                value = value.movedim(site.axis, -1)
                rows.append(value.reshape(-1, value.shape[-1]).double())
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(rows)


def ridge_fit(h_kept: torch.Tensor, h_deleted: torch.Tensor, ridge: float, intercept: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, c) with h_deleted ≈ h_kept M + c (float64): ridge regression, λ = ridge · tr(C_KK)/|K|."""
    rows, kept = h_kept.shape
    mean_k = h_kept.mean(0) if intercept else torch.zeros(kept, dtype=h_kept.dtype, device=h_kept.device)
    mean_s = h_deleted.mean(0) if intercept else torch.zeros(h_deleted.shape[1], dtype=h_kept.dtype,
                                                                 device=h_kept.device)
    if kept == 0:
        return h_kept.new_zeros(0, h_deleted.shape[1]), mean_s
    a, b = h_kept - mean_k, h_deleted - mean_s
    gram = a.T @ a / rows
    lam = ridge * float(torch.trace(gram)) / kept + 1e-12
    M = torch.linalg.solve(gram + lam * torch.eye(kept, dtype=gram.dtype, device=gram.device), a.T @ b / rows)
    return M, mean_s - mean_k @ M


def obs_fit(h_kept: torch.Tensor, h_deleted: torch.Tensor, damping: float, intercept: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, c) of layer-wise OBS (OBC, issue 15 item 2) for removing the reader's inputs S: with the reader's
    inputs z = [h_K, h_S, 1] (the 1 when it has a bias) and H = E[zzᵀ] + λI (λ = damping · mean diagonal), the
    update that zeroes W[:, S] and least changes W z on the calibration inputs is δW = −W_S (H⁻¹_SS)⁻¹ H⁻¹_S·,
    i.e. M = −H⁻¹_KS (H⁻¹_SS)⁻¹ and c = −(H⁻¹_SS)⁻¹ H⁻¹_S1 (float64)."""
    rows, kept = h_kept.shape
    deleted = h_deleted.shape[1]
    parts = [h_kept, h_deleted] + ([torch.ones(rows, 1, dtype=h_kept.dtype, device=h_kept.device)] if intercept
                                   else [])
    z = torch.cat(parts, dim=1)
    H = z.T @ z / rows
    H += damping * float(torch.diagonal(H).mean()) * torch.eye(len(H), dtype=H.dtype, device=H.device)
    inverse = torch.linalg.inv(H)
    S = slice(kept, kept + deleted)
    block = torch.linalg.inv(inverse[S, S])  # (H⁻¹_SS)⁻¹
    M = -inverse[:kept, S] @ block
    c = -(block @ inverse[S, kept + deleted]) if intercept else torch.zeros(deleted, dtype=H.dtype,
                                                                           device=H.device)
    return M, c


def fold(params: dict[str, torch.Tensor], original: dict[str, torch.Tensor], reader: nn.Module, reader_path: str,
         deleted: DeletedUnits, M: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
    """New reader weight and bias with the fitted map folded in (module docstring), the deleted inputs zeroed:
    W[:, S] from the `original` (undamaged) weights, W[:, K] and b from `params`."""
    from lesion.sites.modules import reader_columns

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
    new = w.clone()
    new[:, K] += torch.einsum("os...,ks->ok...", w_s, M.to(w.device))
    new[:, S] = 0.0
    out = {f"{reader_path}.weight": new.movedim(-1, 2).reshape(shape).movedim(1, axis).to(weight.dtype)}
    bias = params.get(f"{reader_path}.bias")
    if bias is not None:
        shift = torch.einsum("os...,s->o", w_s, c.to(w.device))
        out[f"{reader_path}.bias"] = (bias.double() + shift).to(bias.dtype)
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
        clean = site_values(flat, problem.w0, part.site, x)
        now = site_values(flat, w, part.site, x)
        reader = modules[part.reader]
        intercept = f"{part.reader}.bias" in flat.layout.names
        fitter = obs_fit if fit == "obs" else ridge_fit
        M, c = fitter(now[:, list(part.kept)], clean[:, list(part.units)], ridge, intercept)
        params = flat.unflatten(w.clone())
        params.update(fold(params, original, reader, part.reader, part, M, c))
        w = flat.layout.flatten(params) * problem.mask
        fits.append({"site": part.site.name, "reader": part.reader, "deleted": len(part.units),
                     "kept": len(part.kept), "rows": len(now)})
    acc, loss = problem.evaluate(w)
    examples = 2 * len(parts) * len(x) / 3
    name = "obs" if fit == "obs" else "compensate"
    return MethodResult(name, acc, loss, problem.epochs(examples), time.perf_counter() - started,
                        details={"calibration": len(x), "damping" if fit == "obs" else "ridge": ridge, "fit": fit,
                                 "sites": fits}), w
