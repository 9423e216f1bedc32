"""Running a damaged network without touching the user's model (issue "Damage engine", items 2–3).

Parameter damage goes through `torch.func.functional_call`; unit damage through forward hooks (`SiteHooks`)
that exist only for the duration of the call and apply, at the right call of each site's module and along
the site's unit axis, the unit values of the configuration being evaluated (passed by closure). Many
configurations are evaluated in one vectorised pass: `torch.func.vmap` over stacked parameter sets and
stacked unit overrides, in chunks whose size keeps memory bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from lesion import progress
from lesion.damage.activation_faults import ActivationFaults, check_inputs
from lesion.damage.chain import chain_leaves, first_touched
from lesion.damage.clean_chain import CleanChain
from lesion.damage.realised import Realised, UnitOverride
from lesion.damage.sparse import CPU_CHUNK_BYTES, CPU_DENSE_BYTES, EXACT_DIFFERENCES, SPARSE_CHUNKS, SparseChain
from lesion.errors import LesionError
from lesion.functional import parameters_of, traceable
from lesion.nets.outputs import as_rows, select_output
from lesion.sites import Site

DEFAULT_MEMORY_BYTES = 64 << 20  # working set of one chunk of configurations: small chunks stay in cache

UnitValues = dict[str, tuple[torch.Tensor, torch.Tensor]]  # site name → (keep, value), possibly vmapped


def _override(t: torch.Tensor, keep: torch.Tensor, value: torch.Tensor, axis: int) -> torch.Tensor:
    """t·keep + value with (keep, value) laid along `axis` of t (SPEC §6.1: the unit axis of the site). An int8
    model's quantised values are overridden in real numbers and stored back in the tensor's own quantisation:
    a crashed unit holds the word of 0, a stuck one the nearest word its scale reaches."""
    if t.is_quantized:
        from lesion.damage.quantised import requantised_like  # noqa: PLC0415 (quantised imports this module)

        return requantised_like(_override(t.dequantize(), keep, value, axis), t)
    axis = axis if axis >= 0 else t.dim() + axis
    shape = (-1,) + (1,) * (t.dim() - 1 - axis)
    return t * keep.to(t.dtype).reshape(shape) + value.to(t.dtype).reshape(shape)


class SiteHooks:
    """Forward hooks at the modules of some sites, alive inside the `with` block, that apply the unit values
    in `current` (set by the caller for each forward) at the right call of each module, then the activation
    faults of the site (`faults`, by site name; `start` is the index of the forward's first input among the
    inputs the faults were drawn for).

    Calls are counted from `reset()`, which every forward through `run` does first, so a module run twice
    in one forward is overridden at the call its site names only.
    """

    def __init__(self, model: nn.Module, sites: Sequence[Site],
                 faults: dict[str, tuple[ActivationFaults, ...]] | None = None) -> None:
        self.faults = faults or {}
        sites = [*sites, *(f[0].site for f in self.faults.values() if f)]
        if sites and isinstance(model, torch.jit.ScriptModule):
            raise LesionError("unit damage (crash) and activation faults need a Python nn.Module; a TorchScript "
                              "model supports weight damage only (save the model with torch.save or give "
                              "package.module:factory)")
        self.model = model
        self.sites = {s.name: s for s in sites}
        self.start = 0
        self.current: UnitValues = {}
        self.counts: dict[str, int] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> SiteHooks:
        modules = dict(self.model.named_modules())
        for path in sorted({s.path for s in self.sites.values()}):
            at = {(s.call, s.hook): s for s in self.sites.values() if s.path == path}
            stack: list[int] = []
            self._handles.append(modules[path].register_forward_pre_hook(self._before(path, at, stack),
                                                                           with_kwargs=True))
            self._handles.append(modules[path].register_forward_hook(self._after(at, stack)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def reset(self) -> None:
        """Start counting module calls afresh (one forward begins)."""
        self.counts = {}

    def _changed(self, site: Site, t: torch.Tensor) -> torch.Tensor:
        """The site's values with its unit override, then its activation faults, applied (t itself if none)."""
        values = self.current.get(site.name)
        if values is not None:
            t = _override(t, *values, site.axis)
        for faults in self.faults.get(site.name, ()):
            t = faults.apply(t, self.start)
        return t

    def _before(self, path: str, at: dict[tuple[int, str], Site], stack: list[int]) -> Callable[..., Any]:
        def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            call = self.counts.get(path, 0)
            self.counts[path] = call + 1
            stack.append(call)
            site = at.get((call, "input"))
            if site is None or not args or not isinstance(args[0], torch.Tensor):
                return None
            changed = self._changed(site, args[0])
            return None if changed is args[0] else ((changed, *args[1:]), kwargs)

        return before

    def _after(self, at: dict[tuple[int, str], Site], stack: list[int]) -> Callable[..., Any]:
        def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            call = stack.pop()
            site = at.get((call, "output"))
            if site is None or not isinstance(output, torch.Tensor):
                return None
            changed = self._changed(site, output)
            return None if changed is output else changed

        return after

    def run(self, module: nn.Module, params: dict[str, torch.Tensor], units: UnitValues, x: torch.Tensor,
            start: int = 0) -> torch.Tensor:
        """functional_call(module, params, x) with `units` applied at the sites (and the activation faults of
        inputs start, start+1, …), read as (rows, outputs) by the rules of `lesion.nets.outputs` (a dict, tuple
        or ModelOutput gives its logits; tokens are rows)."""
        self.current, self.start = units, start
        self.reset()
        try:
            # on a copy: a model that changes its input in place would change the caller's for the next call
            return as_rows(select_output(functional_call(module, params, (x.clone(),), strict=False)))
        finally:
            self.current = {}


@torch.no_grad()
def damaged_outputs(model: nn.Module, realised: Realised, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Raw outputs of the damaged network f(x; damaged) on `x` (eval mode; the model is not modified)."""
    from lesion.damage.quantised import StoredIntegerRunner, touches_stored_integers

    if touches_stored_integers([realised], model):
        return StoredIntegerRunner(model).outputs(realised, x, batch_size)
    if isinstance(model, torch.jit.ScriptModule) and not realised.units and not realised.activations:
        from lesion.functional import forward_with

        return forward_with(model, realised.changed_params(parameters_of(model)), x, batch_size)
    check_inputs(realised.activations, len(x))
    units = {name: (o.keep, o.value) for name, o in realised.units.items()}
    sites = [o.site for o in realised.units.values()]
    # the attention kernel of the vmapped path and of the clean outputs (`traceable`), so that an undamaged
    # configuration gives the clean outputs exactly, whichever path computes it
    with traceable(model), SiteHooks(model, sites, realised.activations) as hooks:
        params = realised.changed_params(parameters_of(model))
        return torch.cat([hooks.run(model, params, units, x[i:i + batch_size], start=i)
                          for i in range(0, len(x), batch_size)])


def _activation_numel(model: nn.Module, leaves: list[tuple[str, nn.Module]] | None, x: torch.Tensor) -> int:
    """Number of values the leaf modules output for one input (to size chunks); `x` is the first leaf's input."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output[0].numel()

    modules = [m for m in model.modules() if not list(m.children())] if leaves is None else [m for _, m in leaves]
    handles = [m.register_forward_hook(count) for m in modules]
    try:
        h = x[:1].clone()  # x may be a chain's clean boundary: an in-place first leaf must not overwrite it
        if leaves is None:  # a whole model: also what its functions compute between modules (attention scores)
            with _CountingMode() as counted:
                model(h)
            total = max(total, counted.numel)
        else:
            for _, step in leaves:
                h = step(h)
    finally:
        for handle in handles:
            handle.remove()
    return max(total, 1)


class _CountingMode(TorchDispatchMode):
    """Counts the values of every new tensor an operation makes (views and in-place results excluded): for one
    input, about what a forward allocates, including the functional parts that no module hook sees (the
    (heads, tokens, tokens) scores of `scaled_dot_product_attention`, say); an upper bound of its peak."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        schema = getattr(func, "_schema", None)
        aliasing = schema is not None and any(r.alias_info is not None for r in schema.returns)
        if not aliasing:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.numel += t.numel()
        return out


def _suffix_runner(model: nn.Module, leaves: list[tuple[str, nn.Module]] | None, hooks: SiteHooks
                   ) -> Callable[[dict[str, torch.Tensor], UnitValues, torch.Tensor], torch.Tensor]:
    """f(params, unit values, input of the first leaf) for the whole model or the given chain of leaves."""
    if leaves is None:
        return lambda params, units, inputs: hooks.run(model, params, units, inputs)
    owned = [(name, module, {f"{name}.{p}" if name else p: p for p, _ in module.named_parameters()})
             for name, module in leaves]

    def run(params: dict[str, torch.Tensor], units: UnitValues, inputs: torch.Tensor) -> torch.Tensor:
        hooks.current = units
        hooks.reset()
        try:
            h = inputs.clone()  # the clean values of a boundary: an in-place first leaf must not overwrite them
            for _, module, names in owned:
                local = {local: params[full] for full, local in names.items() if full in params}
                h = functional_call(module, local, (h,), strict=False) if local else module(h)
            return as_rows(select_output(h))  # the rules of `SiteHooks.run` (a ModelOutput gives its logits)
        finally:
            hooks.current = {}

    return run


def chunk_memory(device: torch.device) -> int:
    """Working set of one chunk of configurations: cache-sized on a CPU; on a GPU an eighth of its free memory
    (at most 4 GiB), so that a chunk fills the device without crowding the model."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(free // 8, 4 << 30))
    return DEFAULT_MEMORY_BYTES


@torch.no_grad()
def batched_damaged_outputs(model: nn.Module, configs: Sequence[Realised], x: torch.Tensor,
                            chunk_size: int | None = None, input_batch: int = 4096,
                            memory_bytes: int | None = None, desc: str = "damaged forward",
                            chain: CleanChain | None = None, sparse: bool = True, class_major: bool = False
                            ) -> torch.Tensor:
    """Outputs of every damaged network on `x`, shape (configs, inputs, outputs), in vectorised chunks.

    Parameters that any configuration changes are stacked along a new leading dimension (the trained value
    fills in where a configuration leaves one unchanged), likewise unit overrides, and `vmap` runs the model
    once per chunk of configurations. When the model is a chain (`lesion.damage.chain`), the clean activations
    of its leaves are computed once (`chain`, built here unless the caller keeps one for many calls on the same
    `x`); the layers before a chunk's first damaged one are read from them, and a configuration that changes
    few values is evaluated as a difference from them (`lesion.damage.sparse`; `sparse=False` turns this off).
    The result equals looping `damaged_outputs` over the configurations, up to floating-point summation order.
    `class_major`: the result may be a view of (outputs, configs, inputs) storage (`batch_metrics` wants that
    layout; not contiguous, so no `.view` on it).
    """
    if not configs:
        raise LesionError("no damage configurations to evaluate")
    if isinstance(model, torch.jit.ScriptModule):
        return torch.stack([damaged_outputs(model, c, x, input_batch) for c in progress.track(configs, desc)])
    from lesion.damage.quantised import StoredIntegerRunner, stored_weights, touches_stored_integers

    if touches_stored_integers(list(configs), model):
        runner = StoredIntegerRunner(model)  # one working copy for the batch: configurations one by one
        return torch.stack([runner.outputs(c, x, input_batch) for c in progress.track(configs, desc)])
    if stored_weights(model):  # an int8 model: torch's quantised kernels have no vmap rules, one by one
        return torch.stack([damaged_outputs(model, c, x, input_batch) for c in progress.track(configs, desc)])
    if any(c.activations for c in configs):
        return _with_activation_faults(model, configs, x, chunk_size, input_batch, memory_bytes, desc, chain, sparse)
    base = parameters_of(model)
    names = {name for c in configs for name in c.changed}
    sites = {name: o.site for c in configs for name, o in c.units.items()}
    if not names and not sites:  # no configuration damages anything: one clean forward serves them all
        clean = damaged_outputs(model, Realised(), x, input_batch)
        return clean.unsqueeze(0).expand(len(configs), *clean.shape).clone()
    if chain is None and not any(s.calls > 1 for s in sites.values()):
        chain = CleanChain.of(model, x, input_batch)
    results: torch.Tensor | None = None

    def place(indices: list[int], outputs: torch.Tensor) -> None:
        nonlocal results
        if results is None:
            if class_major and outputs.dim() == 3:
                results = outputs.new_empty((outputs.shape[2], len(configs), outputs.shape[1])).permute(1, 2, 0)
            else:
                results = outputs.new_empty((len(configs), *outputs.shape[1:]))
        index = torch.tensor(indices, device=outputs.device)
        if class_major and outputs.dim() == 3:  # along the (outputs, configs, inputs) storage: whole rows
            results.permute(2, 0, 1).index_copy_(1, index, outputs.permute(2, 0, 1))
        else:
            results.index_copy_(0, index, outputs)

    with progress.bar(len(configs), desc, "config") as bar:
        dense = list(range(len(configs)))
        # (inputs, outputs); tokens: the dense way. float16 and bfloat16: the dense way too, since the sparse
        # engine adds differences rounded to 8-11 bits to clean values rounded alike, where the damaged network
        # rounds each layer's output once (3 of 36,000 predictions changed on a float16 MLP)
        if chain is not None and sparse and chain.output.dim() == 2 and chain.output.dtype in EXACT_DIFFERENCES:
            engine, dense, planned = SparseChain(chain, base), [], []
            for k, plan in enumerate(engine.plan_all(list(configs))):
                if plan is None:
                    dense.append(k)
                else:
                    planned.append((k, plan))
            planned.sort(key=lambda item: item[1].size)  # chunks of alike configurations: little padding
            device = chain.output.device
            if memory_bytes is not None:
                budget = memory_bytes
            else:
                budget = chunk_memory(device) if device.type == "cuda" else CPU_CHUNK_BYTES
            first = min((plan.first for _, plan in planned), default=0)
            widest = max((v.numel() for v in chain.values[first + 1:]), default=chain.output.numel())  # per config
            step = chunk_size or max(1, budget // (chain.output.element_size() * widest))
            # configurations that only patch weights carry a sparse difference until a layer turns it dense: the
            # sparse layers run for SPARSE_CHUNKS chunks at once, the dense ones a chunk at a time
            patches_only = chunk_size is None and all(not p.inputs and not p.outputs for _, p in planned)
            outer = step * SPARSE_CHUNKS if patches_only else step
            dense_bytes = (CPU_DENSE_BYTES if memory_bytes is None and device.type != "cuda" else budget) \
                if patches_only else None
            for start in range(0, len(planned), outer):
                part = planned[start:start + outer]
                place([k for k, _ in part], engine.outputs([configs[k] for k, _ in part], [p for _, p in part],
                                                           class_major, dense_bytes=dense_bytes))
                bar.update(len(part))
        norms = _normalisation_parameters(model) if dense else set()
        alone = {k for k in dense if norms and _sets_extreme_values(configs[k], norms)}
        for group in _by_first_damaged_leaf(chain, [configs[k] for k in dense], dense):
            together, apart = [k for k in group if k not in alone], [k for k in group if k in alone]
            for part, size in ((together, chunk_size), (apart, 1)):
                if part:
                    place(part, _vectorised(model, [configs[k] for k in part], x, base, chain, size, input_batch,
                                            memory_bytes, bar))
    assert results is not None
    return results


EXTREME_NORM_VALUE = 1e15  # a normalisation parameter beyond this (or not finite) is evaluated alone


def _normalisation_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters of the model's batch and instance normalisation layers."""
    return {f"{name}.{p}" if name else p for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._NormBase) for p, _ in module.named_parameters(recurse=False)}


def _sets_extreme_values(config: Realised, names: set[str]) -> bool:
    """Whether `config` gives a normalisation parameter a value that is not finite or above `EXTREME_NORM_VALUE` in
    magnitude. vmap's batch-norm rule computes (x − mean)/σ·w, the plain kernel x·(w/σ) + (b − mean·w/σ): with
    such a value one gives a finite number where the other gives NaN (inf − inf), so a configuration like this
    runs alone, as it would on its own (`damaged_outputs`)."""
    for name in names & set(config.changed):
        values = config.params[name] if name in config.params else config.patches[name][1]
        if not bool((values.abs() <= EXTREME_NORM_VALUE).all()):  # NaN compares False too
            return True
    return False


def _by_first_damaged_leaf(chain: CleanChain | None, configs: list[Realised], indices: list[int]
                           ) -> list[list[int]]:
    """`indices` grouped by the first leaf of the chain that their configuration damages, so that each group
    starts from the clean values there (a flip in a ResNet's last block reruns that block and the head only,
    not the network); one group without a chain or with sites called more than once."""
    if not indices:
        return []
    if chain is None or len(chain.leaves) < 2 or any(o.site.calls > 1 for c in configs for o in c.units.values()):
        return [indices]
    leaves = list(chain.leaves)
    groups: dict[int, list[int]] = {}
    for k, config in zip(indices, configs, strict=True):
        first = first_touched(leaves, set(config.changed), {o.site.path for o in config.units.values()})
        groups.setdefault(first, []).append(k)
    return [groups[first] for first in sorted(groups)]


def _with_activation_faults(model: nn.Module, configs: Sequence[Realised], x: torch.Tensor, chunk_size: int | None,
                            input_batch: int, memory_bytes: int | None, desc: str, chain: CleanChain | None,
                            sparse: bool) -> torch.Tensor:
    """`batched_damaged_outputs` when some configurations fault activations: those with transient faults only
    run the inputs they hit (`lesion.damage.transient`), those with permanent faults or other damage as well
    run one by one with the faults in hooks, the rest as usual."""
    from lesion.damage.transient import transient_outputs

    groups: dict[str, list[int]] = {"transient": [], "hooked": [], "other": []}
    for k, c in enumerate(configs):
        check_inputs(c.activations, len(x))
        groups["transient" if c.transient_only else "hooked" if c.activations else "other"].append(k)
    parts: list[tuple[list[int], torch.Tensor]] = []
    if groups["other"]:
        parts.append((groups["other"], batched_damaged_outputs(
            model, [configs[k] for k in groups["other"]], x, chunk_size, input_batch, memory_bytes, desc, chain,
            sparse)))
    if groups["transient"]:
        clean = chain.output if chain is not None else damaged_outputs(model, Realised(), x, input_batch)
        parts.append((groups["transient"], transient_outputs(model, [configs[k] for k in groups["transient"]], x,
                                                             clean, input_batch)))
    if groups["hooked"]:
        chosen = [configs[k] for k in groups["hooked"]]
        parts.append((groups["hooked"], torch.stack([damaged_outputs(model, c, x, input_batch)
                                                     for c in progress.track(chosen, desc)])))
    first = parts[0][1]
    results = first.new_empty((len(configs), *first.shape[1:]))
    for indices, outputs in parts:
        results[torch.tensor(indices, device=outputs.device)] = outputs
    return results


HALF = (torch.float16, torch.bfloat16)


def _vectorised(model: nn.Module, configs: list[Realised], x: torch.Tensor, base: dict[str, torch.Tensor],
                chain: CleanChain | None, chunk_size: int | None, input_batch: int, memory_bytes: int | None,
                bar: Any) -> torch.Tensor:
    """The dense path of `batched_damaged_outputs`: vmap over chunks of configurations."""
    names = sorted({name for c in configs for name in c.changed}, key=list(base).index)
    sites = {name: o.site for c in configs for name, o in c.units.items()}
    device = next(iter(base.values())).device if base else x.device
    leaves = list(chain.leaves) if chain is not None else chain_leaves(model)
    if any(s.calls > 1 for s in sites.values()):
        leaves = None  # a module run more than once: calls are counted over the whole forward
    with traceable(model):
        if leaves is not None:
            first = first_touched(leaves, set(names), {s.path for s in sites.values()})
            if chain is not None:
                x = chain.values[first]
            else:
                for _, module in leaves[:first]:
                    x = torch.cat([module(x[i:i + input_batch]) for i in range(0, len(x), input_batch)])
            leaves = leaves[first:]
        input_batch = min(input_batch, len(x))
        if x.dtype in HALF or any(t.dtype in HALF for t in base.values()):  # token inputs are int64
            # vmap computes a Linear layer's bias apart from its product, rounding twice where the model's own
            # addmm rounds once (28% of float16 values a unit apart, 7 of 36,000 predictions changed): each
            # configuration runs alone, as the damaged network itself would
            chunk_size = 1
        if chunk_size is None:
            changed = sum(base[n].numel() for n in names)
            per_config = x.element_size() * (changed + 2 * input_batch * _activation_numel(model, leaves, x))
            budget = chunk_memory(device) if memory_bytes is None else memory_bytes
            chunk_size = max(1, budget // max(per_config, 1))
        chunk_size = min(chunk_size, len(configs))
        outputs: list[torch.Tensor] = []
        with SiteHooks(model, list(sites.values())) as hooks:
            runner = _suffix_runner(model, leaves, hooks)
            shared_input = vmap(runner, in_dims=(0, 0, None))
            own_input = vmap(runner, in_dims=(0, 0, 0))
            per_config_inputs, first_error, one_by_one = False, None, False
            for start in range(0, len(configs), chunk_size):
                chunk = configs[start:start + chunk_size]
                # only what the chunk changes is stacked; the other parameters are the model's own
                params = {n: torch.stack([c.param(n, base) for c in chunk]) if len(chunk) > 1
                          else chunk[0].param(n, base)[None] for n in names
                          if any(n in c.params or n in c.patches for c in chunk)}
                units = {}
                for name, site in sites.items():
                    overrides = [c.units.get(name) or UnitOverride.identity(site, device) for c in chunk]
                    units[name] = (torch.stack([o.keep for o in overrides]),
                                   torch.stack([o.value for o in overrides]))
                parts = []
                if len(chunk) == 1 or not (params or units):
                    # one configuration (a large model), or a chunk that changes nothing from these leaves on
                    # (undamaged configurations): one forward, nothing stacked
                    alone = ({n: t[0] for n, t in params.items()}, {n: (k[0], v[0]) for n, (k, v) in units.items()})
                    out = torch.cat([runner(*alone, x[i:i + input_batch]) for i in range(0, len(x), input_batch)])
                    outputs.append(out.unsqueeze(0).expand(len(chunk), *out.shape))
                    bar.update(len(chunk))
                    continue
                if one_by_one:
                    outputs.append(_one_by_one(runner, params, units, len(chunk), x, input_batch))
                    bar.update(len(chunk))
                    continue
                for i in range(0, len(x), input_batch):
                    part = x[i:i + input_batch]
                    if not per_config_inputs:
                        try:
                            parts.append(shared_input(params, units, part))
                            continue
                        except RuntimeError as err:
                            # an in-place op (timm's `x += shortcut`) mixing damaged and undamaged tensors, which
                            # vmap reports as an in-place or a broadcast error: give every configuration its own
                            # copy of the inputs, so every tensor carries the vmapped dimension; from then on for
                            # every chunk. A failure of the model itself fails there too and is raised as it was.
                            first_error, per_config_inputs = err, True
                    try:
                        parts.append(own_input(params, units, part.unsqueeze(0).expand(len(chunk), *part.shape)))
                    except RuntimeError as err:
                        if _vmap_lacks_a_rule(err):  # an op without a batching rule (a GRU): one at a time
                            one_by_one = True
                            break
                        if first_error is not None:
                            raise first_error from None
                        raise
                if one_by_one:
                    outputs.append(_one_by_one(runner, params, units, len(chunk), x, input_batch))
                else:
                    outputs.append(torch.cat(parts, dim=1))
                bar.update(len(chunk))
    return torch.cat(outputs)


def _vmap_lacks_a_rule(err: RuntimeError) -> bool:
    """Whether vmap failed because an operation of the model has no batching rule (not the model's own error)."""
    text = str(err)
    return "Batching rule not implemented" in text or "batching rule" in text.lower()


def _one_by_one(runner: Any, params: dict[str, torch.Tensor], units: dict[str, tuple[torch.Tensor, torch.Tensor]],
                count: int, x: torch.Tensor, input_batch: int) -> torch.Tensor:
    """The chunk's outputs, each configuration in its own forward (the stacked parameters and overrides taken
    apart): for models whose operations vmap cannot batch."""
    out = []
    for j in range(count):
        alone = ({n: t[j] for n, t in params.items()}, {n: (k[j], v[j]) for n, (k, v) in units.items()})
        out.append(torch.cat([runner(*alone, x[i:i + input_batch]) for i in range(0, len(x), input_batch)]))
    return torch.stack(out)
