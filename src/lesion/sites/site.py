"""The `Site` type (SPEC §6.1): one call of one module in the forward pass, and the units along one axis.

A site is addressed one way everywhere (`crash:SITE`, `filter:SITE`, `head:SITE`, `--layer SITE`,
`--delete units:SITE`): its 1-based index in `lesion sites`, its module path, or `path#call` for a module run
more than once in one forward (``#`` also marks an all-digit path of an ``nn.Sequential`` as a path, ``3#0``,
since a bare number is always an index); `path@in` names the module's input instead of its output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("linear", "conv-channel", "token-feature", "attention-head")


@dataclass(frozen=True)
class HeadLayout:
    """How the heads of an attention module are reached: the output projection's weight `param` reads the
    attention output, seen as (…, heads, head_dim), along `axis` of the weight (1 for Linear, 0 for GPT-2's
    Conv1D). Crashing head h zeroes that head's slice of the attention output, which is the same as zeroing
    the projection's input slice h·head_dim … (h+1)·head_dim (SPEC §6.1)."""

    param: str
    heads: int
    head_dim: int
    axis: int


@dataclass(frozen=True)
class Site:
    """Units at one call of one module.

    `path`/`call`: the module and which of its calls (0-based) in one forward; `calls`: how often it runs.
    `hook`: "output" (the module's output carries the units) or "input" (its first input does: the unit of a
    layer whose activation is written as a function, SPEC §6.1). `axis`: the unit axis of that tensor (1 for
    (N, C, ...) convolution outputs, -1 for (N, ..., D) token-like outputs). `layer`: the unit layer whose
    units these are (Linear/Conv/Conv1D), when there is one; `chain`: the modules from that layer to the site
    (norms, activations), whose per-unit parameters a deletion includes. `shape`, `dtype`: of one input's values
    there (the dtype's name, `float16`, say). `refused`: why crash damage is
    refused here, if it is. `heads`: for attention heads, how to reach them.
    """

    index: int
    path: str
    call: int
    calls: int
    kind: str
    axis: int
    width: int
    hook: str = "output"
    layer: str | None = None
    chain: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    dtype: str = ""
    note: str = ""
    refused: str = ""
    heads: HeadLayout | None = None
    read_through: tuple[str, int] | None = None

    @property
    def name(self) -> str:
        """`path`, `path#call` for a module that runs more than once (or whose path is all digits), and `@in`
        after it when the units are the module's input."""
        base = f"{self.path}#{self.call}" if self.calls > 1 or self.path.isdigit() else self.path
        return base + ("@in" if self.hook == "input" else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out["name"] = self.name
        out["shape"] = list(self.shape)
        return out
