"""Faults in the values a site outputs, per input (issue 17, item 1), as data, and how a forward applies them.

A soft error in a register or an accelerator's buffer hits one inference: a *transient* fault changes the value
at one (input, position) of a site and leaves the other inputs alone; a *permanent* one changes the same
positions on every input. A position is the flat index within one input's values at the site (unit ×
spatial position × token, row-major over the site's per-input shape, `Site.shape`).

A bit flip acts on the value's stored format, as for weights (SPEC §1, bit flip): the float32, float16 or
bfloat16 bit pattern of the value, or the int8 word q = clamp(round(v / scale), −128, 127) with the site's
scale (max |clean value| at the site over the evaluation inputs / 127, `site_scale`); the faulty value is read
back from the flipped word, the other values stay as the network computed them. A stuck-at fault sets the
value. Faults are applied by `SiteHooks` (`lesion.damage.apply`) after any unit override of the same site.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lesion.damage import bits as bitlib
from lesion.errors import LesionError
from lesion.sites import Site


@dataclass(frozen=True)
class ActivationFaults:
    """Faults at one site: at `positions` (k,) of input `inputs` (k,) — or of every input when `inputs` is None
    (permanent) — XOR the stored word with `masks` (k,) (bit flips, format `fmt`, int8 `scale`) or set
    `values` (k,) (stuck-at). Positions of one `ActivationFaults` are distinct per input."""

    site: Site
    positions: torch.Tensor
    inputs: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    values: torch.Tensor | None = None
    fmt: str = "float32"
    scale: float | None = None

    @property
    def count(self) -> int:
        """Number of faulty values per configuration (per input when permanent)."""
        return int(self.positions.numel())

    def apply(self, t: torch.Tensor, start: int) -> torch.Tensor:
        """`t` (the site's values for inputs start, start+1, …, shape (B, …)) with the faults of those inputs
        applied; a new tensor, `t` is left as it is."""
        rows, per_input = len(t), t[0].numel() if len(t) else 0
        device = t.device
        positions = self.positions.to(device)
        if self.inputs is None:
            local = torch.arange(rows, device=device).repeat_interleave(len(positions))
            chosen = torch.arange(len(positions), device=device).repeat(rows)
        else:
            inputs = self.inputs.to(device)
            (chosen,) = torch.nonzero((inputs >= start) & (inputs < start + rows), as_tuple=True)
            local = inputs[chosen] - start
        if not chosen.numel():
            return t
        where = local * per_input + positions[chosen]  # flat positions in the batch's values
        if t.is_quantized:
            return self._apply_to_words(t, where, chosen)
        out = t.contiguous().clone()
        flat = out.view(-1)
        if self.values is not None:
            flat[where] = self.values.to(device=device, dtype=out.dtype)[chosen]
            return out
        assert self.masks is not None
        current = flat[where].to(torch.float32)
        masks = self.masks.to(device)[chosen]
        if self.fmt == "int8":  # a non-finite value (from other damage upstream) has no int8 word: left as it is
            finite = torch.isfinite(current)
            flipped = current.clone()
            flipped[finite] = bitlib.xor_words(current[finite], masks[finite], "int8", self.scale)
        else:
            flipped = bitlib.xor_words(current, masks, self.fmt)
        flat[where] = flipped.to(out.dtype)
        return out

    def _apply_to_words(self, t: torch.Tensor, where: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """The faults on a quantised tensor (an int8 model's activations): bits of its stored bytes flipped
        whatever `fmt` says (the word is the byte), or the stuck value quantised with the tensor's own scale."""
        from lesion.damage.quantised import with_integers  # noqa: PLC0415 (quantised imports this module)

        words = t.int_repr().contiguous().clone()
        flat = words.view(-1)
        if self.values is not None:
            info = torch.iinfo(words.dtype)
            stuck = torch.round(self.values.to(t.device)[chosen].double() / t.q_scale()) + t.q_zero_point()
            flat[where] = stuck.clamp(info.min, info.max).to(words.dtype)
        else:
            assert self.masks is not None
            masks = self.masks.to(t.device)[chosen] & 0xFF
            if words.dtype == torch.int8:
                masks = torch.where(masks >= 128, masks - 256, masks)
            flat[where] = torch.bitwise_xor(flat[where], masks.to(words.dtype))
        return with_integers(t, words)


def check_inputs(activations: dict[str, tuple[ActivationFaults, ...]], count: int) -> None:
    """Transient faults name inputs by index: evaluating them on fewer inputs than they were drawn for would drop
    some silently, so it is refused."""
    for faults in activations.values():
        for f in faults:
            if f.inputs is not None and f.inputs.numel() and int(f.inputs.max()) >= count:
                raise LesionError(f"activation faults at {f.site.name} were drawn for more inputs than the "
                                  f"{count} evaluated (input {int(f.inputs.max())}); evaluate them on the inputs the "
                                  "Target was given")


def site_values(model: nn.Module, site: Site, x: torch.Tensor, batch_size: int = 4096) -> list[torch.Tensor]:
    """The clean values of `site` (its call `site.call`, at its output or input) on `x`, batch by batch."""
    from lesion.functional import eval_mode  # noqa: PLC0415 (the hook helpers import this module)

    module = model.get_submodule(site.path)
    seen: list[torch.Tensor] = []
    calls = [0]

    def record(value: torch.Tensor) -> None:
        if calls[0] == site.call:
            seen.append(value.detach())
        calls[0] += 1

    if site.hook == "input":
        handle = module.register_forward_pre_hook(lambda m, args: record(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: record(out))
    try:
        with torch.no_grad(), eval_mode(model):
            for i in range(0, len(x), batch_size):
                calls[0] = 0
                model(x[i:i + batch_size].clone())  # a copy: the model may change its input in place
    finally:
        handle.remove()
    return seen


def site_scale(model: nn.Module, site: Site, x: torch.Tensor) -> float:
    """The int8 scale of a site's values: max |clean value| over the inputs `x` / 127 (1.0 when all are 0)."""
    values = [v.dequantize() if v.is_quantized else v for v in site_values(model, site, x)]
    largest = max((float(v.abs().max()) for v in values if v.numel()), default=0.0)
    if not largest < float("inf"):
        raise LesionError(f"site {site.name} outputs non-finite values on the clean network: no int8 scale")
    return largest / 127.0 if largest > 0 else 1.0
