"""The network being damaged: the model, its trained parameters and its sites (SPEC §0, §6.1)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import nn

from lesion.errors import LesionError
from lesion.functional import parameters_of
from lesion.sites import Site, SiteTable
from lesion.sites.example import example_input


@dataclass
class Target:
    """A model and its trained parameters w (named_parameters order); damage never modifies either.

    `example`: a few inputs of the shape the model takes, for finding its sites (a recording forward); when
    not given, inferred for lesion's own networks and MLPs whose first layer is Linear. `inputs`: the inputs
    the damaged network will be evaluated on, which faults drawn per input need (transient activation faults:
    how many inputs there are; int8 activation words: the site's scale over them). `protected`: bit positions
    of parameters that random bit flips cannot change (hardened memory: `lesion.damage.protection`).
    """

    model: nn.Module
    base: dict[str, torch.Tensor] = field(default_factory=dict)
    example: torch.Tensor | None = None
    inputs: torch.Tensor | None = None
    protected: dict[str, frozenset[int]] = field(default_factory=dict)
    _scales: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.base:
            self.base = parameters_of(self.model)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live (every damage tensor is created there)."""
        first = next(iter(self.base.values()), None)
        return first.device if first is not None else torch.device("cpu")

    @cached_property
    def table(self) -> SiteTable:
        """The sites of the model, found by a recording forward on the example inputs."""
        example = self.example if self.example is not None else example_input(self.model)
        return SiteTable.of(self.model, example[:2])

    @property
    def input_count(self) -> int:
        """How many evaluation inputs there are (faults drawn per input need them)."""
        if self.inputs is None:
            raise LesionError("faults drawn per input need the evaluation inputs: Target(model, inputs=x) (a "
                              "campaign passes its own)")
        return len(self.inputs)

    def activation_scale(self, site: Site) -> float:
        """The int8 scale of a site's values over the evaluation inputs (`site_scale`), computed once."""
        if site.name not in self._scales:
            from lesion.damage.activation_faults import site_scale

            if self.inputs is None:
                raise LesionError("int8 activation faults need the evaluation inputs for the site's scale: "
                                  "Target(model, inputs=x)")
            self._scales[site.name] = site_scale(self.model, site, self.inputs)
        return self._scales[site.name]

    @property
    def sites(self) -> list[Site]:
        """Every site, in execution order (`lesion sites`)."""
        return self.table.sites

    def site(self, address: int | str, kind: str | None = "unit") -> Site:
        """A site by 1-based index or name (SPEC §6.1); `kind` "unit" or "head" checks what it carries."""
        return self.table.resolve(address, kind)

    @cached_property
    def stored(self) -> dict[str, torch.Tensor]:
        """The integer words of a quantised model's packed weights, named like parameters (`fc.weight`; none for
        a float model): bit flips in int8 damage them (`lesion.damage.quantised`)."""
        from lesion.damage.quantised import stored_integers

        return {n: t for n, t in stored_integers(self.model).items() if n not in self.base}

    @cached_property
    def int8_activations(self) -> list[Site]:
        """The activation sites after a quantised model's layers, addressed by module path (its quantised
        layers are not unit layers of the site table); none for a float model."""
        from lesion.sites.modules import is_activation

        if not self.stored:
            return []
        found = []
        for path, module in self.model.named_modules():
            if path and is_activation(module):
                try:
                    found.append(self.site(path, None))
                except LesionError:  # a module the forward does not run
                    continue
        return found

    @cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every damageable tensor: the parameters and the stored integers of quantised layers."""
        return {**self.base, **self.stored}

    def match(self, pattern: str, stored: bool = False) -> list[str]:
        """Parameter names a pattern selects: an exact name, a comma-separated list of names, a glob (`*.weight`),
        `all`/`*`, `weights`, `biases`;
        with `stored`, the stored integer weights of a quantised model too."""
        chosen = _matching(list(self.tensors if stored else self.base), pattern)
        if not chosen and not stored and _matching(list(self.stored), pattern):
            raise LesionError(f"{pattern!r} selects weights this quantised model stores as int8 integers; only bit "
                              "flips damage them (bitflip:PARAM:ber=R:fmt=int8)")
        if not chosen:
            names = list(self.tensors)
            shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
            raise LesionError(f"no parameter matches {pattern!r}; parameters are {shown or 'none'}")
        return chosen

    def flat_index(self, name: str, index: str | int) -> int:
        """A flat index into parameter `name` from an int or a comma-separated multi-index like `3,5`."""
        shape = tuple(self.tensors[name].shape)
        numel = int(np.prod(shape)) if shape else 1
        try:
            parts = [int(i) for i in str(index).split(",")]
        except ValueError as err:
            raise LesionError(f"bad index {index!r} for {name}: give a flat index or i,j,…") from err
        if len(parts) == 1:
            flat = parts[0]
        elif len(parts) == len(shape) and all(0 <= p < s for p, s in zip(parts, shape, strict=True)):
            flat = int(np.ravel_multi_index(parts, shape))
        else:
            raise LesionError(f"index {index} does not fit {name} of shape {shape}")
        if not 0 <= flat < numel:
            raise LesionError(f"index {flat} is out of range for {name} ({numel} values, shape {shape})")
        return flat


def _matching(names: list[str], pattern: str) -> list[str]:
    if pattern in ("all", "*"):
        return names
    if pattern == "weights":
        return [n for n in names if n.endswith("weight")]
    if pattern == "biases":
        return [n for n in names if n.endswith("bias")]
    if pattern in names:
        return [pattern]
    if "," in pattern:  # a list of names (parameter names hold no commas)
        listed = set(pattern.split(","))
        return [n for n in names if n in listed]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
