"""Faults that change few values, evaluated as a difference from the clean network (issue 16, item 1).

A bit flip, a stuck-at weight, a small deletion or a crash of some units changes a handful of numbers; the
dense path recomputes every layer after them. Here a configuration of a chain model (`CleanChain`) is
evaluated as the clean activations plus a difference carried through the layers:

- a Linear layer whose weights change in a few entries ΔW adds ΔW·h, column by column, to its clean output:
  only the rows of the changed entries differ (the difference stays *sparse*, a few unit columns);
- an elementwise activation (and dropout, identity, a flatten of a 2-D tensor) keeps the same columns;
- a unit override (crash, stuck unit) at a leaf's output or input sets the values of its columns;
- a Linear layer reading a sparse difference Δh on columns U outputs W·h + ΔW·h + W'[:, U]·Δh_U: a *dense*
  difference from then on, and the remaining layers run on the full values.

Configurations are evaluated a chunk at a time with a constant number of tensor operations per layer (not
per configuration): a sparse difference is a set of (configuration, column) pairs with one column of values
each; a dense one is the (configurations, inputs, features) values. The result equals the dense path up to
float32 rounding (the same products, summed in another order); NaN and
±inf follow the same arithmetic (inf − w = inf, inf·0 = NaN in both). Configurations this does not apply to
(changed parameters outside a Linear layer, a change over `SPARSE_FRACTION` of a layer, a layer that is not a
Linear, elementwise or identity leaf after the first damaged one, unit sites inside a leaf or off the feature
axis) go through the vectorised dense engine (`lesion.damage.apply`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lesion.damage.clean_chain import CleanChain
from lesion.damage.realised import Realised, UnitOverride
from lesion.nets.activations import ScaledReLU, ScaledSigmoid

SPARSE_FRACTION = 0.05  # a layer whose weights change in more than this share of entries takes the dense path
GEMM_RATIO = 16  # changed rows × layer inputs ≤ this × changed entries: one matrix product beats gathers
SPARSE_CHUNKS = 8  # chunks whose sparse layers run together (`SparseChain.outputs`)
CPU_CHUNK_BYTES = 16 << 20  # a chunk's working set on a CPU: cache-sized (8 to 16 configurations of LeNet-300-100
# on 1,000 inputs ran 20% faster than 28 or 64 in benchmarks/campaign.py; a GPU takes `chunk_memory`)
CPU_DENSE_BYTES = 2 << 20  # one boundary's values of a chunk in the dense layers after a sparse difference (an L2
# cache: 5 configurations of LeNet-300-100's second hidden layer on 1,000 inputs; 8% faster campaigns than 13)
EXACT_DIFFERENCES = (torch.float32, torch.float64)  # dtypes whose differences the engine keeps to their rounding
FOLD_BYTES = 64 << 20  # unit overrides are folded into a Linear layer's weights while the copies fit in this

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
                nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
                nn.LogSigmoid, ScaledReLU, ScaledSigmoid)
_IDENTITY = (nn.Identity, nn.Dropout, nn.AlphaDropout, nn.Flatten)  # in eval mode, on (N, F) values


@dataclass(frozen=True)
class _Leaf:
    name: str
    module: nn.Module
    kind: str  # "linear", "elementwise", "identity" or "other"
    weight: str = ""
    bias: str = ""


@dataclass(frozen=True)
class _Entries:
    """Changed entries of one Linear layer in one configuration: weight (rows, cols, ΔW), bias (rows, Δb)."""

    rows: torch.Tensor
    cols: torch.Tensor
    delta: torch.Tensor
    bias_rows: torch.Tensor
    bias_delta: torch.Tensor


@dataclass(frozen=True)
class Plan:
    """How one configuration runs in the sparse engine: its first damaged leaf, the changed entries of its
    Linear layers, and its unit overrides at leaf inputs and outputs (by leaf index)."""

    first: int
    changes: dict[int, _Entries]
    inputs: dict[int, UnitOverride]
    outputs: dict[int, UnitOverride]

    @property
    def size(self) -> tuple[int, int]:
        """(first damaged leaf, changed entries): configurations alike in both pad alike in a chunk."""
        return self.first, sum(e.rows.numel() + e.bias_rows.numel() for e in self.changes.values())


@dataclass
class _State:
    """The difference from the clean values at one leaf boundary, for a chunk of C configurations: sparse
    (`keys` = configuration·width + column, sorted; `delta` (pairs, inputs), one row per pair), dense (`full`
    (C, inputs, width)),
    or masked (unit overrides only: the values are clean·keep + value, `keep` and `value` (C, width))."""

    width: int
    keys: torch.Tensor
    delta: torch.Tensor
    full: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    value: torch.Tensor | None = None

    @property
    def configs(self) -> torch.Tensor:
        return self.keys // self.width

    @property
    def cols(self) -> torch.Tensor:
        return self.keys % self.width


def _kind(module: nn.Module, before: torch.Tensor, after: torch.Tensor) -> str:
    flat = before.dim() == 2 and after.dim() == 2
    if type(module).forward is nn.Linear.forward and isinstance(module, nn.Linear):
        return "linear" if flat else "other"
    if isinstance(module, _ELEMENTWISE) and not any(True for _ in module.parameters()):
        return "elementwise" if flat else "other"
    if isinstance(module, _IDENTITY) and flat and before.shape == after.shape:
        return "identity"
    return "other"


class SparseChain:
    """Evaluates configurations of a chain model as clean values plus a carried difference (module docstring)."""

    def __init__(self, chain: CleanChain, base: dict[str, torch.Tensor], max_fraction: float = SPARSE_FRACTION
                 ) -> None:
        self.chain, self.base, self.max_fraction = chain, base, max_fraction
        values = chain.values
        self.leaves: list[_Leaf] = []
        for i, (name, module) in enumerate(chain.leaves):
            kind = _kind(module, values[i], values[i + 1])
            prefix = f"{name}." if name else ""
            weight = f"{prefix}weight" if kind == "linear" else ""
            bias = f"{prefix}bias" if kind == "linear" and f"{prefix}bias" in base else ""
            self.leaves.append(_Leaf(name, module, kind, weight, bias))
        self.index = {leaf.name: i for i, leaf in enumerate(self.leaves)}
        self.owner = {p: i for i, leaf in enumerate(self.leaves) for p in (leaf.weight, leaf.bias) if p}
        self._buffers = chain.workspace.setdefault("sparse working values", {})
        self._transposed = chain.workspace.setdefault("transposed values", {})
        self.last_other = max((i + 1 for i, leaf in enumerate(self.leaves) if leaf.kind == "other"), default=0)
        self._sample = {name: torch.linspace(0, t.numel() - 1, min(t.numel(), 997), device=t.device).long()
                        for name, t in base.items()}

    def _surely_dense(self, name: str, value: torch.Tensor) -> bool:
        """Whether a whole-tensor change alters far more than `max_fraction` of the entries, judged on a fixed
        sample of them (a perturbation of every weight), so that it goes the dense way without a full scan."""
        sample = self._sample[name]
        changed = (value.reshape(-1)[sample] != self.base[name].reshape(-1)[sample]).sum()
        return bool(changed > 2 * self.max_fraction * sample.numel() + 8)

    def _buffer(self, boundary: int, count: int) -> torch.Tensor:
        """Working values of `count` configurations at a hidden leaf boundary, reused from chunk to chunk; the
        output boundary gets a fresh tensor (it is returned)."""
        clean = self.chain.values[boundary]
        shape = (count, *clean.shape)
        if boundary == len(self.leaves):
            return clean.new_empty(shape)
        held = self._buffers.get(boundary)
        if held is None or len(held) < count:
            held = self._buffers[boundary] = clean.new_empty(shape)
        return held[:count]

    def _columns(self, boundary: int, cols: torch.Tensor) -> torch.Tensor:
        """Clean values of the given feature columns at a leaf boundary as rows, shape (len(cols), inputs): read
        from a transposed copy kept per boundary (a gather of rows, where columns of the (inputs, features)
        values would be a strided gather)."""
        held = self._transposed.get(boundary)
        if held is None:
            held = self._transposed[boundary] = self.chain.values[boundary].T.contiguous()
        return held.index_select(0, cols)  # index_select: 5× faster than held[cols] on a CPU

    def plan(self, config: Realised) -> Plan | None:
        """How `config` runs here, or None when it must take the dense path (module docstring)."""
        inputs: dict[int, UnitOverride] = {}
        outputs: dict[int, UnitOverride] = {}
        for override in config.units.values():
            site = override.site
            i = self.index.get(site.path)
            if i is None or site.calls != 1:
                return None
            value = self.chain.values[i if site.hook == "input" else i + 1]
            if value.dim() != 2 or site.axis not in (1, -1):
                return None
            (inputs if site.hook == "input" else outputs)[i] = override
        touched = set()
        for name in config.changed:
            if name not in self.owner or (name in config.params and self._surely_dense(name, config.params[name])):
                return None
            touched.add(self.owner[name])
        first = min([*touched, *inputs, *outputs], default=len(self.leaves))
        if first < self.last_other:
            return None
        changes = {}
        for i in touched:
            entries = self._entries(self.leaves[i], config)
            if entries is None:
                return None
            changes[i] = entries
        return Plan(first, changes, inputs, outputs)

    def plan_all(self, configs: list[Realised]) -> list[Plan | None]:
        """`plan` of every configuration; those that only patch entries of Linear layers (random bit flips,
        stuck-at weights) are planned together: each parameter's changed entries of all of them in one
        gather, subtraction and division, then split back (a campaign's batch has hundreds)."""
        plans: list[Plan | None] = [None] * len(configs)
        patched: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        simple = []
        for k, config in enumerate(configs):
            if config.units or config.params or config.activations or not config.patches \
                    or any(n not in self.owner for n in config.patches):
                plans[k] = self.plan(config)
                continue
            simple.append(k)
            for name, (flat, values) in config.patches.items():
                patched.setdefault(name, []).append((k, flat, values))
        entries: dict[int, dict[str, tuple[torch.Tensor, ...]]] = {k: {} for k in simple}
        dense: set[int] = set()  # configurations whose difference overflows where the new values do not
        for name, items in patched.items():
            trained = self.base[name].reshape(-1)
            flat, values = torch.cat([f for _, f, _ in items]), torch.cat([v for _, _, v in items])
            delta = values - trained.index_select(0, flat)
            counts = [f.numel() for _, f, _ in items]
            overflowed = _overflowed(values, delta)
            if bool(overflowed.any()):
                dense.update(k for (k, _, _), part in zip(items, torch.split(overflowed, counts), strict=True)
                             if bool(part.any()))
            leaf = self.leaves[self.owner[name]]
            if name == leaf.weight:
                columns = self.base[name].shape[1]
                parts = zip(torch.split(flat // columns, counts), torch.split(flat % columns, counts),
                            torch.split(delta, counts), strict=True)
            else:
                parts = zip(torch.split(flat, counts), torch.split(delta, counts), strict=True)
            for (k, _, _), part in zip(items, parts, strict=True):
                entries[k][name] = part
        empty = self._empty
        none = {i: self.base[leaf.weight].new_zeros(0) for i, leaf in enumerate(self.leaves) if leaf.weight}
        for k in simple:
            if k in dense:
                continue
            changes = {}
            for name in entries[k]:
                i = self.owner[name]
                if i in changes:
                    continue
                leaf = self.leaves[i]
                weight = self.base[leaf.weight]
                if leaf.weight in entries[k]:
                    rows, cols, delta = entries[k][leaf.weight]
                    if rows.numel() > self.max_fraction * weight.numel():
                        break
                else:
                    rows, cols, delta = empty, empty, none[i]
                if leaf.bias in entries[k]:
                    bias_rows, bias_delta = entries[k][leaf.bias]
                else:
                    bias_rows, bias_delta = empty, none[i]
                changes[i] = _Entries(rows, cols, delta, bias_rows, bias_delta)
            else:
                first = min(changes)
                plans[k] = Plan(first, changes, {}, {}) if first >= self.last_other else None
        return plans

    @property
    def _empty(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.long, device=self.chain.values[0].device)

    def _entries(self, leaf: _Leaf, config: Realised) -> _Entries | None:
        weight = self.base[leaf.weight]
        empty = self._empty
        rows, cols, delta = empty, empty, weight.new_zeros(0)
        changed = _changed_entries(config, leaf.weight, weight)
        if changed is not None:
            flat, new, delta = changed
            if flat.numel() > self.max_fraction * weight.numel() or bool(_overflowed(new, delta).any()):
                return None
            rows, cols = flat // weight.shape[1], flat % weight.shape[1]
        bias_rows, bias_delta = empty, weight.new_zeros(0)
        changed = _changed_entries(config, leaf.bias, self.base[leaf.bias]) if leaf.bias else None
        if changed is not None:
            bias_rows, new, bias_delta = changed
            if bool(_overflowed(new, bias_delta).any()):
                return None
        return _Entries(rows, cols, delta, bias_rows, bias_delta)

    @torch.no_grad()
    def outputs(self, configs: list[Realised], plans: list[Plan], class_major: bool = False,
                dense_step: int | None = None, dense_bytes: int | None = None) -> torch.Tensor:
        """The damaged networks' outputs on the chain's inputs, shape (configs, inputs, outputs); with
        `class_major`, a view of (outputs, configs, inputs) storage where a last Linear layer computes them
        (`batch_metrics` reduces over classes in that layout; the product is faster that way round too). Where
        no configuration overrides units, the sparse layers run for all of them at once and the layers from the
        one where the difference turns dense run a few configurations at a time (`_in_steps`): `dense_step` of
        them, or as many as keep one boundary's values within `dense_bytes` (cache-sized on a CPU)."""
        values = self.chain.values
        first = min(p.first for p in plans)
        h = values[first]
        state = _State(h.shape[1], torch.zeros(0, dtype=torch.long, device=h.device), h.new_zeros(0, len(h)))
        steps = (dense_step, dense_bytes) if dense_step or dense_bytes else None
        return self._from(first, configs, plans, state, class_major, steps)

    def _from(self, first: int, configs: list[Realised], plans: list[Plan], state: _State, class_major: bool,
              steps: tuple[int | None, int | None] | None = None) -> torch.Tensor:
        """`outputs` from leaf `first` on, the difference at its input being `state`."""
        values = self.chain.values
        for i in range(first, len(self.leaves)):
            leaf = self.leaves[i]
            if steps and leaf.kind == "linear" and state.keys.numel() and state.full is None \
                    and state.keep is None and all(not p.inputs and not p.outputs for p in plans):
                step = steps[0] or max(1, steps[1] // (values[i].element_size() * max(
                    v.numel() for v in values[i + 1:])))  # type: ignore[operator]
                if len(plans) > step:
                    return self._in_steps(i, plans, state, class_major, step)
            state = self._override(i, state, [p.inputs.get(i) for p in plans])
            if leaf.kind == "linear":
                last = class_major and i == len(self.leaves) - 1
                state = self._linear(i, configs, [p.changes.get(i) for p in plans], state, last)
            elif leaf.kind == "elementwise":
                state = self._unmasked(i, state)
                if state.full is not None:
                    state.full = _in_place(leaf.module, state.full)
                elif state.keys.numel():
                    cols = state.cols
                    state.delta = leaf.module(self._columns(i, cols) + state.delta) - self._columns(i + 1, cols)
            state = self._override(i + 1, state, [p.outputs.get(i) for p in plans])
        if state.full is not None:  # a reused working tensor unless the last leaf made it
            return state.full if self.leaves[-1].kind == "linear" else state.full.clone()
        state = self._unmasked(len(self.leaves), state)
        out = values[-1].unsqueeze(0).repeat(len(plans), 1, 1)
        out.transpose(1, 2).index_put_((state.configs, state.cols), state.delta, accumulate=True)
        return out

    def _in_steps(self, i: int, plans: list[Plan], state: _State, class_major: bool, step: int) -> torch.Tensor:
        """`_from(i, …)` `step` configurations at a time, for configurations without unit overrides: what does
        not depend on a chunk's dense values is prepared once for all of them (the padded pair products of the
        difference reaching leaf i, every Linear layer's changed entries with each chunk's share of them, the
        products of leaf i's changed entries), so that a chunk costs a few operations per layer and chunks
        small enough to stay in cache pay (`CPU_DENSE_BYTES`)."""
        leaves, values, count = self.leaves, self.chain.values, len(plans)
        starts = list(range(0, count, step))
        marks = torch.tensor([*starts, count], device=state.keys.device)
        pairs = _padded_pairs(state, self.base[leaves[i].weight], count)
        if pairs is not None:  # each chunk reads only the slots its own configurations fill (sorted alike by size)
            per_config = torch.nn.functional.pad(pairs[2], (0, len(starts) * step - count))
            widths = per_config.view(-1, step).amax(dim=1).tolist()
        entries, shares = {}, {}
        for j in range(i, len(leaves)):
            if leaves[j].kind == "linear":
                stacked = entries[j] = _stack_entries([p.changes.get(j) for p in plans], self.base[leaves[j].weight])
                shares[j] = (torch.searchsorted(stacked[0], marks).tolist(),
                             torch.searchsorted(stacked[4], marks).tolist())
        e_cfg, rows, cols, delta = entries[i][:4]
        products = (self._columns(i, cols) + _lookup(state, e_cfg * state.width + cols)) * delta.unsqueeze(1)
        clean = values[i + 1]
        out: torch.Tensor | None = None
        for k, start in enumerate(starts):
            stop = min(start + step, count)
            full = self._buffer(i + 1, stop - start)
            if pairs is None:
                full.copy_(clean.expand(len(full), -1, -1))
            else:
                torch.baddbmm(clean.expand(len(full), -1, -1), pairs[0][start:stop, :widths[k]].transpose(1, 2),
                              pairs[1][start:stop, :widths[k]], out=full)
            _add_entries(full, _share(entries[i], shares[i], k, start), products[shares[i][0][k]:shares[i][0][k + 1]])
            for j in range(i + 1, len(leaves)):
                leaf = leaves[j]
                if leaf.kind == "elementwise":
                    full = _in_place(leaf.module, full)
                elif leaf.kind == "linear":
                    part = _share(entries[j], shares[j], k, start)
                    reached = full[part[0], :, part[2]] * part[3].unsqueeze(1)
                    full = self._dense_linear(j, full, class_major and j == len(leaves) - 1)
                    _add_entries(full, part, reached)
            if out is None:
                shape = full.shape
                if class_major:  # (outputs, configurations, inputs) storage, as a chunk's
                    out = full.new_empty((shape[2], count, shape[1])).permute(1, 2, 0)
                else:
                    out = full.new_empty((count, *shape[1:]))
            out[start:stop] = full
        assert out is not None
        return out

    def _unmasked(self, boundary: int, state: _State) -> _State:
        """A masked state as a sparse difference on the overridden columns (other states as they are)."""
        if state.keep is None:
            return state
        assert state.value is not None
        configs, cols = torch.nonzero((state.keep != 1) | (state.value != 0), as_tuple=True)
        delta = (self._columns(boundary, cols) * (state.keep[configs, cols] - 1).unsqueeze(1)
                 + state.value[configs, cols].unsqueeze(1))
        return _State(state.width, configs * state.width + cols, delta)

    def _override(self, boundary: int, state: _State, overrides: list[UnitOverride | None]) -> _State:
        """y ← y·keep + value (SPEC §6.1) for the configurations that override units at this boundary."""
        clean = self.chain.values[boundary]
        chosen = [c for c, o in enumerate(overrides) if o is not None]
        if not chosen:
            return state
        keep = clean.new_ones(len(overrides), state.width)
        value = clean.new_zeros(len(overrides), state.width)
        index = torch.tensor(chosen, device=clean.device)
        keep[index] = torch.stack([overrides[c].keep for c in chosen]).to(clean.dtype)  # type: ignore[union-attr]
        value[index] = torch.stack([overrides[c].value for c in chosen]).to(clean.dtype)  # type: ignore[union-attr]
        if state.full is not None:
            state.full.mul_(keep.unsqueeze(1)).add_(value.unsqueeze(1))
            return state
        if state.keep is not None:  # overrides after overrides
            assert state.value is not None
            return _State(state.width, state.keys, state.delta, None, state.keep * keep, state.value * keep + value)
        if not state.keys.numel():  # the first difference: kept as masks until a layer reads it
            return _State(state.width, state.keys, state.delta, None, keep, value)
        configs, cols = torch.nonzero((keep != 1) | (value != 0), as_tuple=True)
        keys = torch.unique(torch.cat([state.keys, configs * state.width + cols]))
        carried = clean.new_zeros(keys.numel(), len(clean))
        carried[torch.searchsorted(keys, state.keys)] = state.delta
        configs, cols = keys // state.width, keys % state.width
        at = self._columns(boundary, cols)
        current = (at + carried) * keep[configs, cols].unsqueeze(1) + value[configs, cols].unsqueeze(1)
        return _State(state.width, keys, current - at)

    def _linear(self, i: int, configs: list[Realised], changes: list[_Entries | None], state: _State,
                class_major: bool = False) -> _State:
        """A Linear layer: W'h' = Wh + ΔW·h' + W·Δh (module docstring), for the chunk; `class_major`: the dense
        result as a view of (outputs, configurations, inputs) storage (`outputs`)."""
        leaf, values = self.leaves[i], self.chain.values
        weight = self.base[leaf.weight]
        h, clean_out = values[i], values[i + 1]
        width = clean_out.shape[1]
        entries = _stack_entries(changes, weight)
        if state.keep is not None and len(changes) * weight.numel() * weight.element_size() > FOLD_BYTES:
            state = self._unmasked(i, state)
        if state.full is None and state.keep is None and not state.keys.numel():
            # the difference starts here: it stays sparse
            e_cfg, rows, cols, delta, b_cfg, b_rows, b_delta = entries
            keys = torch.cat([e_cfg * width + rows, b_cfg * width + b_rows])
            new_keys, where = torch.unique(keys, return_inverse=True)
            out = h.new_zeros(new_keys.numel(), len(h))
            if new_keys.numel() * h.shape[1] <= GEMM_RATIO * rows.numel():
                # many changed entries per row (a deleted filter): ΔW's changed rows as one dense product
                rows_of_change = h.new_zeros(new_keys.numel(), h.shape[1])
                rows_of_change.index_put_((where[:rows.numel()], cols), delta, accumulate=True)
                out += rows_of_change @ h.T
            else:
                out.index_add_(0, where[:rows.numel()], self._columns(i, cols) * delta.unsqueeze(1))
            out.index_add_(0, where[rows.numel():], b_delta.unsqueeze(1).expand(-1, len(h)))
            return _State(width, new_keys, out)
        if state.full is not None:  # dense already
            full = state.full
            e_cfg, rows, cols, delta, b_cfg, b_rows, b_delta = entries
            contributions = full[e_cfg, :, cols] * delta.unsqueeze(1)
            out = self._dense_linear(i, full, class_major)
        elif state.keep is not None:  # unit overrides at the input, folded into the weights: W(h·k + v) = (W·k)h + Wv
            assert state.value is not None
            count = len(changes)
            folded = (weight.unsqueeze(0) * (state.keep - 1).unsqueeze(1)).transpose(1, 2)
            out = self._buffer(i + 1, count)
            out.copy_(clean_out.expand(count, -1, -1))
            out.baddbmm_(h.expand(count, -1, -1), folded)
            out += (state.value @ weight.T).unsqueeze(1)
            e_cfg, rows, cols, delta, b_cfg, b_rows, b_delta = entries
            reached = (self._columns(i, cols) * state.keep[e_cfg, cols].unsqueeze(1)
                       + state.value[e_cfg, cols].unsqueeze(1))
            contributions = reached * delta.unsqueeze(1)
        else:  # a sparse difference reaches the layer: dense from here
            out = _pair_products(clean_out, state, weight, self._buffer(i + 1, len(changes)))
            e_cfg, rows, cols, delta, b_cfg, b_rows, b_delta = entries
            reached = self._columns(i, cols) + _lookup(state, e_cfg * state.width + cols)
            contributions = reached * delta.unsqueeze(1)
        _add_entries(out, entries, contributions)
        return _State(width, state.keys[:0], state.delta[:0], out)

    def _dense_linear(self, i: int, full: torch.Tensor, class_major: bool) -> torch.Tensor:
        """The undamaged Linear leaf i on dense values `full` (configurations, inputs, features); `class_major`:
        as a view of (outputs, configurations, inputs) storage."""
        leaf = self.leaves[i]
        weight = self.base[leaf.weight]
        width = weight.shape[0]
        if class_major:  # W·Hᵀ: (outputs, configurations·inputs), the faster orientation for few outputs
            out = torch.mm(weight, full.reshape(-1, full.shape[2]).T).view(width, len(full), -1)
            if leaf.bias:
                out += self.base[leaf.bias].view(-1, 1, 1)
            return out.permute(1, 2, 0)
        out = self._buffer(i + 1, len(full))
        torch.mm(full.reshape(-1, full.shape[2]), weight.T, out=out.view(-1, width))
        if leaf.bias:
            out += self.base[leaf.bias]
        return out


def _stack_entries(changes: list[_Entries | None], weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(configuration, row, column, ΔW, bias configuration, bias row, Δb) over a chunk's changed entries."""
    present = [(c, e) for c, e in enumerate(changes) if e is not None]
    device = weight.device
    if not present:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, empty, weight.new_zeros(0), empty, empty, weight.new_zeros(0)
    e_cfg = [c for c, e in present for _ in range(e.rows.numel())]
    b_cfg = [c for c, e in present for _ in range(e.bias_rows.numel())]
    configs = torch.tensor(e_cfg + b_cfg, dtype=torch.long, device=device)
    return (configs[:len(e_cfg)], torch.cat([e.rows for _, e in present]),
            torch.cat([e.cols for _, e in present]), torch.cat([e.delta for _, e in present]),
            configs[len(e_cfg):], torch.cat([e.bias_rows for _, e in present]),
            torch.cat([e.bias_delta for _, e in present]))


def _lookup(state: _State, keys: torch.Tensor) -> torch.Tensor:
    """The sparse difference at `keys` (zero where a key has none), shape (len(keys), inputs)."""
    if not state.keys.numel() or not keys.numel():
        return state.delta.new_zeros(keys.numel(), state.delta.shape[1])
    at = torch.searchsorted(state.keys, keys).clamp(max=state.keys.numel() - 1)
    found = state.keys[at] == keys
    return torch.where(found.unsqueeze(1), state.delta.index_select(0, at), torch.zeros((), dtype=state.delta.dtype))


def _in_place(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """module(t), overwriting t where the activation has an in-place form (a fresh tensor of a chunk's values
    costs more in page faults than the activation itself)."""
    slope = getattr(module, "k", 1.0) if isinstance(module, (ScaledReLU, ScaledSigmoid)) else 1.0
    if isinstance(module, (nn.ReLU, ScaledReLU)):
        return (t.mul_(slope) if slope != 1.0 else t).relu_()
    if isinstance(module, (nn.Sigmoid, ScaledSigmoid)):
        return t.mul_(slope).sigmoid_() if isinstance(module, ScaledSigmoid) else t.sigmoid_()
    if isinstance(module, nn.Tanh):
        return t.tanh_()
    return module(t)


def _padded_pairs(state: _State, weight: torch.Tensor, count: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """A sparse difference reaching a Linear layer as two batched operands, padded per configuration: the
    differences (count, pairs, inputs) and the weight columns they meet (count, pairs, outputs), with the
    number of pairs of each configuration (count,); None where no pair reaches anything."""
    configs, cols, delta = state.configs, state.cols, state.delta
    reaching = delta.abs().amax(dim=1) != 0  # a flip lost to rounding or to an inactive unit adds nothing (NaN stays)
    if not bool(reaching.all()):
        configs, cols, delta = configs[reaching], cols[reaching], delta[reaching]
    if not configs.numel():
        return None
    per_config = torch.bincount(configs, minlength=count)
    width = int(per_config.max())
    if int(per_config.min()) == width:  # as many pairs in every configuration (a crash of k units): no padding
        return (delta.reshape(count, width, -1), weight.index_select(1, cols).T.reshape(count, width, -1),
                per_config)
    starts = torch.cumsum(per_config, 0) - per_config
    slot = torch.arange(configs.numel(), device=configs.device) - starts[configs]
    padded = delta.new_zeros(count, width, delta.shape[1])
    padded[configs, slot] = delta
    columns = weight.new_zeros(count, width, weight.shape[0])
    columns[configs, slot] = weight.index_select(1, cols).T
    return padded, columns, per_config


def _pair_products(clean: torch.Tensor, state: _State, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out ← clean + Σ over each configuration's pairs of Δh[:, col]·W[:, col]ᵀ (out: configurations, inputs,
    outputs): one batched product over the pairs, padded per configuration."""
    pairs = _padded_pairs(state, weight, len(out))
    if pairs is None:
        return out.copy_(clean.expand(len(out), -1, -1))
    return torch.baddbmm(clean.expand(len(out), -1, -1), pairs[0].transpose(1, 2), pairs[1], out=out)


def _add_entries(out: torch.Tensor, entries: tuple[torch.Tensor, ...], products: torch.Tensor) -> None:
    """Adds the changed entries' terms to a Linear layer's dense output (configurations, inputs, outputs):
    ΔW[row, col]·h'[:, col] (`products`, one row per weight entry) and Δb[row], at each entry's configuration."""
    e_cfg, rows, _, _, b_cfg, b_rows, b_delta = entries
    by_row = out.transpose(1, 2)
    if rows.numel():
        by_row.index_put_((e_cfg, rows), products, accumulate=True)
    if b_rows.numel():
        by_row.index_put_((b_cfg, b_rows), b_delta.unsqueeze(1).expand(-1, out.shape[1]), accumulate=True)


def _share(entries: tuple[torch.Tensor, ...], shares: tuple[list[int], list[int]], k: int, start: int
           ) -> tuple[torch.Tensor, ...]:
    """Chunk k's share of a batch's stacked entries (`_stack_entries`), its configurations counted from the
    chunk's `start`."""
    (lo, hi), (b_lo, b_hi) = shares[0][k:k + 2], shares[1][k:k + 2]
    e_cfg, rows, cols, delta, b_cfg, b_rows, b_delta = entries
    return (e_cfg[lo:hi] - start, rows[lo:hi], cols[lo:hi], delta[lo:hi], b_cfg[b_lo:b_hi] - start,
            b_rows[b_lo:b_hi], b_delta[b_lo:b_hi])


def _overflowed(new: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Where a difference new − trained is infinite though the new value is finite (a float16 bias set to 65,504
    from −100; a float32 weight flipped to 3e38 from −1e38): clean + difference would give inf where the damaged
    network computes a finite value, so such a configuration takes the dense path."""
    return torch.isinf(delta) & torch.isfinite(new)


def _changed_entries(config: Realised, name: str, trained: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(flat indices, new values, new − trained) of the entries of parameter `name` that `config` changes, or
    None."""
    if name in config.params:
        (flat,) = torch.nonzero((config.params[name] != trained).reshape(-1), as_tuple=True)
        new = config.params[name].reshape(-1)[flat]
        return flat, new, new - trained.reshape(-1)[flat]
    if name in config.patches:
        flat, values = config.patches[name]
        return flat, values, values - trained.reshape(-1)[flat]
    return None
