"""Finding the sites of a model by a recording forward pass (SPEC §6.1; ARCHITECTURE.md: "A `Site` type").

One forward on a small batch records every module call in execution order: the module, its call index, its
first input and its output (with their in-place version counters). From the record:
- every call of a unit layer (Linear, ConvNd, GPT-2 Conv1D) opens a *chain* that extends over the norms,
  activations and pass-through modules that read the previous call's output directly (the same tensor,
  unmodified); the chain's last norm or activation is the site (the unit after its activation, SPEC §6.1).
  The chain of the last unit-layer call is the output layer and opens no site;
- an activation module that no chain reaches (after a residual add, or a module run twice) is a site of its own;
- a chain that ends at the layer's raw output, read by code that is not a module, is probed: one more forward
  with its output zeroed tells whether the next module then sees zeros (a crash there silences the unit:
  ReLU/GELU written as functions, or q/k/v read by attention), the same change (a residual add: the layer's
  output is the unit), or something else (an activation written as a function with φ(0) ≠ 0): then the unit is
  the next module's input when it has the same shape, or crash damage is refused at that site with the reason;
- every attention module that a provider of `lesion.sites.heads` knows gives a head site.
Sites are numbered from 1 in execution order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from lesion.errors import LesionError
from lesion.sites.heads import head_layout
from lesion.sites.modules import is_activation, is_conv, is_norm, is_pass_through, is_unit_layer
from lesion.sites.site import Site


@dataclass
class Call:
    """One recorded module call."""

    order: int
    path: str
    module: nn.Module
    call: int
    leaf: bool
    input: torch.Tensor | None = None
    input_version: int = -1
    input_copy: torch.Tensor | None = None
    output: torch.Tensor | None = None
    output_version: int = -1
    output_copy: torch.Tensor | None = None


@dataclass
class Recording:
    """Every module call of one forward, in execution order (pre-hook order), and the call counts."""

    calls: list[Call] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    output: Any = None

    @property
    def leaves(self) -> list[Call]:
        """The calls of modules without children."""
        return [c for c in self.calls if c.leaf]


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def record(model: nn.Module, example: torch.Tensor) -> Recording:
    """Run `model` once on `example` (eval mode, no grad) and record its module calls."""
    from lesion.functional import eval_mode

    if isinstance(model, torch.jit.ScriptModule):
        raise LesionError("sites need a Python nn.Module: a TorchScript model supports weight damage only "
                          "(save the model with torch.save or give package.module:factory)")
    rec = Recording()
    paths = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
    open_calls: dict[int, list[Call]] = {}
    tick = [0]

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        path = paths[id(module)]
        count = rec.counts.get(path, 0)
        rec.counts[path] = count + 1
        x = _first_tensor(args, kwargs)
        call = Call(tick[0], path, module, count, not list(module.children()))
        tick[0] += 1
        if x is not None:
            call.input, call.input_version = x, x._version
            call.input_copy = x.detach().clone()
        rec.calls.append(call)
        open_calls.setdefault(id(module), []).append(call)

    def after(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        call = open_calls[id(module)].pop()
        if isinstance(output, torch.Tensor):
            call.output, call.output_version = output, output._version
            call.output_copy = output.detach().clone()

    handles = []
    for name, module in model.named_modules():
        if name == "":
            continue
        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad():
            rec.output = model(example.clone())  # a copy: the model may change its input in place
    except Exception as err:  # noqa: BLE001 - the user's forward
        raise LesionError(f"the model does not run on an example batch of shape {tuple(example.shape)} "
                          f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''})"
                          ) from err
    finally:
        for handle in handles:
            handle.remove()
    return rec


def dtype_name(tensor: torch.Tensor) -> str:
    """The name of a tensor's dtype without the module (`float16`), as `Site.dtype` records it."""
    return str(tensor.dtype).removeprefix("torch.")


def _reads_directly(reader: Call, producer: Call) -> bool:
    """`reader`'s first input is `producer`'s output, unmodified (not changed in place since)."""
    return (reader.input is not None and producer.output is not None and reader.input is producer.output
            and reader.input_version == producer.output_version)


def _axis(layer: nn.Module | None, output: torch.Tensor, conv_context: bool) -> tuple[int, str]:
    if output.dim() <= 2:
        return 1, "linear"
    if (layer is not None and is_conv(layer)) or (layer is None and conv_context and output.dim() >= 3):
        return 1, "conv-channel"
    return output.dim() - 1, "token-feature"


def _reader_input_with_zeroed(model: nn.Module, example: torch.Tensor, site: Call, reader: Call,
                              unit: tuple[int, int] | None = None) -> torch.Tensor | None:
    """`reader`'s input in one more forward where `site`'s output is zeroed (only unit `unit` = (axis, index)
    of it, when given)."""
    from lesion.functional import eval_mode

    seen: dict[str, torch.Tensor] = {}
    counts = {"site": 0, "reader": 0}

    def zero(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        counts["site"] += 1
        if counts["site"] - 1 != site.call:
            return None
        if unit is None:
            return torch.zeros_like(output)
        return output.index_fill(unit[0], torch.tensor([unit[1]], device=output.device), 0.0)

    def look(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        counts["reader"] += 1
        x = _first_tensor(args, kwargs)
        if counts["reader"] - 1 == reader.call and x is not None:
            seen["x"] = x.detach().clone()

    handles = [site.module.register_forward_hook(zero), reader.module.register_forward_pre_hook(look, with_kwargs=True)]
    try:
        with eval_mode(model), torch.no_grad():
            model(example.clone())
    finally:
        for handle in handles:
            handle.remove()
    return seen.get("x")


def _tolerance(x: torch.Tensor) -> float:
    return 1e-5 * float(x.abs().max().clamp(min=1.0))


def _probe(model: nn.Module, example: torch.Tensor, site: Call, reader: Call) -> str:
    """How `reader`'s input responds when `site`'s output is zeroed: "same", "zero", "additive" or "other"."""
    before, after = reader.input_copy, _reader_input_with_zeroed(model, example, site, reader)
    if before is None or after is None or before.shape != after.shape:
        return "other"
    tol = _tolerance(before)
    if torch.allclose(after, before, rtol=0, atol=tol):
        return "same"
    if not bool(after.abs().gt(tol).any()):
        return "zero"
    output = site.output_copy
    if output is not None and output.shape == before.shape and torch.allclose(after, before - output, rtol=1e-4,
                                                                              atol=tol):
        return "additive"
    return "other"


def discover_sites(model: nn.Module, example: torch.Tensor, rec: Recording | None = None) -> list[Site]:
    """The unit and head sites of `model` on inputs like `example` (see module docstring); `rec`, a recording
    of the same forward when the caller has one."""
    rec = rec or record(model, example[:2])
    leaves = [c for c in rec.leaves if c.output is not None]
    unit_positions = [i for i, c in enumerate(leaves) if is_unit_layer(c.module)]
    found: list[tuple[int, Site]] = []
    in_chain: set[int] = set()
    last_unit = unit_positions[-1] if unit_positions else -1
    for position in unit_positions:
        layer_call = leaves[position]
        chain = [position]
        j = position + 1
        while (j < len(leaves) and _reads_directly(leaves[j], leaves[chain[-1]])
               and (is_norm(leaves[j].module) or is_activation(leaves[j].module)
                    or is_pass_through(leaves[j].module))):
            chain.append(j)
            j += 1
        in_chain.update(chain)
        if position == last_unit:
            continue
        end = chain[-1]
        while end > position and is_pass_through(leaves[end].module):
            end -= 1
        site_call = leaves[end]
        output = site_call.output
        axis, kind = _axis(layer_call.module, output, False)
        site = Site(0, site_call.path, site_call.call, rec.counts[site_call.path], kind, axis,
                    int(output.shape[axis]), layer=layer_call.path,
                    chain=tuple(leaves[k].path for k in chain[1:end - position + 1]),
                    shape=tuple(output.shape[1:]), dtype=dtype_name(output))
        raw = end == position or all(is_pass_through(leaves[k].module) for k in chain[1:end - position + 1])
        reader_index = chain[-1] + 1
        if reader_index < len(leaves) and not _reads_directly(leaves[reader_index], leaves[chain[-1]]):
            reader = leaves[reader_index]
            if raw:
                site = _placed_by_probe(model, example[:2], site, leaves[chain[-1]], reader, rec.counts[reader.path])
            elif (is_norm(site_call.module) and _probe(model, example[:2], leaves[chain[-1]], reader) == "zero"
                  and _elementwise(model, example[:2], site, leaves[chain[-1]], reader)):
                # a norm, then an activation written as code (`F.relu(self.bn(x))`): the site stays at the norm
                site = replace(site, read_through=(reader.path, reader.call))
        found.append((site_call.order, site))
    conv_seen = False
    for i, c in enumerate(leaves):
        conv_seen = conv_seen or is_conv(c.module)
        if i in in_chain or not is_activation(c.module) or i > last_unit:
            continue
        axis, kind = _axis(None, c.output, conv_seen)
        found.append((c.order, Site(0, c.path, c.call, rec.counts[c.path], kind, axis, int(c.output.shape[axis]),
                                    shape=tuple(c.output.shape[1:]), dtype=dtype_name(c.output))))
    for c in rec.calls:
        if c.leaf or c.call > 0:
            continue
        layout = head_layout(c.path, c.module)
        if layout is not None:
            found.append((c.order, Site(0, c.path, c.call, rec.counts[c.path], "attention-head", -1, layout.heads,
                                        heads=layout, note=f"{layout.heads} heads of {layout.head_dim}")))
    found.sort(key=lambda pair: pair[0])
    return [replace(site, index=i + 1) for i, (_, site) in enumerate(found)]


def _placed_by_probe(model: nn.Module, example: torch.Tensor, site: Site, producer: Call, reader: Call,
                     reader_calls: int) -> Site:
    verdict = _probe(model, example, producer, reader)
    if verdict == "same":
        return replace(site, note=f"read by code that is not a module; a crash zeroes {site.path}'s output")
    if verdict == "zero":
        site = replace(site, note="followed by a function that maps 0 to 0 (e.g. an activation written as a "
                                  "function): a crash here silences the unit")
        if _elementwise(model, example, site, producer, reader):
            site = replace(site, read_through=(reader.path, reader.call))
        return site
    if verdict == "additive":
        return replace(site, note="added to other values before the next module (a residual add): a crash "
                                  "zeroes this layer's contribution")
    x = reader.input
    if x is not None and tuple(x.shape[1:]) == site.shape:
        axis, kind = _axis(None, x, site.kind == "conv-channel")
        return replace(site, path=reader.path, call=reader.call, calls=reader_calls,
                       hook="input", axis=axis, kind=kind, width=int(x.shape[axis]),
                       note=f"the activation after {site.layer} is written as a function: the unit is "
                            f"{reader.path}'s input")
    return replace(site, refused=f"the output of {site.layer} goes through code that is not a module (an "
                                 "activation written as a function?) and changes shape before the next module; "
                                 "write the activation as a module (nn.ReLU(), nn.Sigmoid(), ...) to crash its units")


def _elementwise(model: nn.Module, example: torch.Tensor, site: Site, producer: Call, reader: Call) -> bool:
    """Whether `reader` reads the site's units one to one (an elementwise function between, and perhaps a
    flatten): with the site's first unit zeroed, the reader's input, seen in the site's shape, changes in that
    unit's slice only."""
    before = reader.input_copy
    if before is None or before.shape[1:].numel() != torch.Size(site.shape).numel():
        return False
    after = _reader_input_with_zeroed(model, example, producer, reader, (site.axis, 0))
    if after is None or after.shape != before.shape:
        return False
    before, after = (t.reshape(len(t), *site.shape) for t in (before, after))  # a flatten between: units again
    rest = [slice(None)] * before.dim()
    rest[site.axis] = slice(1, None)
    return torch.allclose(after[tuple(rest)], before[tuple(rest)], rtol=0, atol=_tolerance(before))
