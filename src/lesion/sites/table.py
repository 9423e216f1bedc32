"""The sites of one model and the one addressing language for them (SPEC §6.1; `lesion sites`).

SITE is a 1-based index into the table, a site's name (`path`, `path#call`, `path@in`), the unit layer a
site belongs to (`fc1` names the site after fc1's activation), or any other module path that the forward
runs: that module's output, along its unit axis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from lesion.errors import LesionError
from lesion.sites.discover import Recording, discover_sites, dtype_name, record
from lesion.sites.modules import is_conv, is_unit_layer
from lesion.sites.site import Site

_ADDRESS = re.compile(r"^(?P<path>[^#@]*?)(?:#(?P<call>\d+))?(?P<input>@in)?$")


@dataclass
class SiteTable:
    """The sites of a model on inputs of one shape, and the recording they were found from."""

    sites: list[Site]
    recording: Recording

    @staticmethod
    def of(model: nn.Module, example: torch.Tensor) -> SiteTable:
        """Discover the sites of `model` from a forward on `example` (two inputs suffice)."""
        recording = record(model, example[:2])
        return SiteTable(discover_sites(model, example, recording), recording)

    def listing(self) -> str:
        """The names of the sites, for error messages."""
        names = [s.name for s in self.sites]
        return ", ".join(names[:12]) + (" …" if len(names) > 12 else "") if names else "none"

    def unit_sites(self) -> list[Site]:
        """The sites whose units can crash (not heads, not refused)."""
        return [s for s in self.sites if s.kind != "attention-head"]

    def resolve(self, address: str | int, kind: str | None = None) -> Site:
        """The site `address` names (see module docstring); `kind` "head" asks for an attention-head site."""
        text = str(address).strip()
        if text.isdigit():
            index = int(text)
            if not 1 <= index <= len(self.sites):
                raise LesionError(f"site {index} does not exist: the model has {len(self.sites)} sites "
                                  f"({self.listing()}); `lesion sites` lists them")
            return self._checked(self.sites[index - 1], kind)
        match = _ADDRESS.match(text)
        if not match or not match["path"]:
            raise LesionError(f"bad site {text!r}: give an index, a module path, path#CALL or path@in")
        path, call, as_input = match["path"], match["call"], bool(match["input"])
        for site in self.sites:
            if site.name == text or (site.path == path and call is not None and int(call) == site.call
                                     and (site.hook == "input") == as_input):
                return self._checked(site, kind)
        if call is None and not as_input:
            named = [s for s in self.sites if s.path == path and (s.hook == "output")]
            owned = [s for s in self.sites if s.layer == path]
            if len(named) == 1:
                return self._checked(named[0], kind)
            if len(named) > 1:
                raise LesionError(f"{path} runs {named[0].calls} times in one forward: say which call, "
                                  f"{' or '.join(s.name for s in named)}")
            if len(owned) == 1 and kind != "head":
                return self._checked(owned[0], kind)
        return self._checked(self._module_output(path, int(call or 0), as_input), kind)

    def _checked(self, site: Site, kind: str | None) -> Site:
        if kind == "head" and site.kind != "attention-head":
            heads = [s.name for s in self.sites if s.kind == "attention-head"]
            raise LesionError(f"{site.name} is not an attention module; " + (
                f"attention-head sites are {', '.join(heads)}" if heads else
                "this model has no attention module lesion can split into heads (`lesion sites` lists its sites)"))
        if kind == "unit" and site.kind == "attention-head":
            raise LesionError(f"{site.name} is an attention module: crash its heads with head:{site.name}:HEADS")
        if kind == "unit" and site.refused:
            raise LesionError(f"crash damage at {site.name} is refused: {site.refused}")
        return site

    def _module_output(self, path: str, call: int, as_input: bool) -> Site:
        calls = [c for c in self.recording.calls if c.path == path]
        if not calls:
            raise LesionError(f"no module {path!r} runs in the forward pass; sites are {self.listing()}")
        if call >= len(calls):
            raise LesionError(f"{path} runs {len(calls)} time(s) in one forward; call #{call} does not exist")
        c = calls[call]
        tensor = c.input if as_input else c.output
        if tensor is None or tensor.dim() < 2:
            raise LesionError(f"{path} does not {'take' if as_input else 'return'} a (batch, ...) tensor; "
                              f"it cannot carry units")
        conv = is_conv(c.module) or (tensor.dim() >= 4)
        axis = 1 if tensor.dim() == 2 or conv else tensor.dim() - 1
        kind = "linear" if tensor.dim() == 2 else "conv-channel" if conv else "token-feature"
        site = Site(0, path, call, len(calls), kind, axis, int(tensor.shape[axis]),
                    hook="input" if as_input else "output", shape=tuple(tensor.shape[1:]),
                    dtype=dtype_name(tensor),
                    note="a module's raw " + ("input" if as_input else "output"),
                    layer=path if is_unit_layer(c.module) and not as_input else None)
        return site


_SHAPE_ONLY = (nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
               nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def reader_of(table: SiteTable, site: Site) -> str | None:
    """The unit layer that reads the site's units directly (through pass-through, pooling and flatten modules
    only, after an elementwise function written as code where the site records one), or None when other code
    comes between (SPEC §3.6: the weights that read a unit)."""
    from lesion.sites.discover import _reads_directly
    from lesion.sites.modules import is_pass_through

    leaves = [c for c in table.recording.leaves]

    def find(path: str, call: int) -> int | None:
        return next((i for i, c in enumerate(leaves) if c.path == path and c.call == call), None)

    position = find(site.path, site.call)
    if position is None:
        return None
    if site.hook == "input":
        return site.path if is_unit_layer(leaves[position].module) else None
    steps = []
    if site.read_through is not None:  # an elementwise function written as code, then this module
        position = find(*site.read_through)
        if position is None:
            return None
        steps.append(position)
    while position + 1 < len(leaves) and _reads_directly(leaves[position + 1], leaves[position]):
        position += 1
        steps.append(position)
    for position in steps:
        module = leaves[position].module
        if is_unit_layer(module):
            return leaves[position].path
        if not (is_pass_through(module) or isinstance(module, _SHAPE_ONLY)
                or leaves[position].path in site.chain):
            return None
    return None
