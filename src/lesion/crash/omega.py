"""Measured crash error Omega (SPEC §2.1): exact enumeration with checkpoints, planning, Monte Carlo.

For a crash budget, with S uniform over its crash sets and x over the inputs X,
    Omega_av = mean_{S,x} d(x, S) (and its standard deviation), Omega_mav = mean_x max_S d(x, S),
    Omega_max = max_{S,x} d(x, S), Omega_worst_set = max_S mean_x d(x, S),
with d(x, S) = ‖F(x) − F_S(x)‖_q (q = ∞ by default), accumulated in float64.

Engines: `additive` (one hidden layer, linear raw output: F − F_S = Σ_{i∈S} c_i(x), see `additive`) and
`general` (any depth, raw or softmax output, see `engines`); both give the same numbers where both apply.
An exact run walks a fixed sequence of steps — a range of crash sets over a block of inputs, set-range-major,
so that the accumulator holds one range's per-set sums at a time (ranges of the additive engine: sets sharing a
prefix, `additive.prefix_groups`) — saves its state to a checkpoint file every so often and when interrupted,
and resumes from it with bit-identical results; the steps run here or on Ray workers (issue 18).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesion import progress
from lesion.crash.accumulate import OmegaAccumulator, reduce_block
from lesion.crash.additive import (
    CHUNK,
    KERNEL_VERSION,
    LANES,
    PrefixGroup,
    activity_order,
    contributions,
    kernel_pairs,
    prefix_groups,
    run_group,
)
from lesion.crash.budget import CrashBudget
from lesion.crash.engines import NORM_ORDERS, GeneralEngine
from lesion.crash.structure import MLPStructure, hidden_activations
from lesion.digests import tensor_digest
from lesion.errors import LesionError
from lesion.stats import RunningMean

ADDITIVE_BLOCK = 2048  # inputs per checkpointable step (split into the additive engine's lanes)
ADDITIVE_STEP_SETS = 1 << 22  # crash sets per step at most (32 MiB of per-set sums; more sets: `prefix_groups`)
ADDITIVE_RATE = 9e8  # distances (set, input) per second on 2 cores, measured (BENCHMARKS.md)
GENERAL_FLOP_RATE = 4e9  # float64 multiply-adds per second for the batched forward, measured
GENERAL_STEP_BYTES = 32 << 20  # the general engine's activations of one step (sets × inputs × widest layer)
DEFAULT_TIME_LIMIT = 600.0


@dataclass(frozen=True)
class OmegaResult:
    """The Omega figures of one crash budget, how they were obtained, and on what."""

    faults: int
    layers: tuple[int, ...]
    per_layer: tuple[int, ...] | None
    omega_av: float
    omega_std: float
    omega_mav: float
    omega_max: float
    omega_worst_set: float
    worst_set: list[list[int]]
    exact: bool
    sets: int
    inputs: int
    norm: str
    output: str
    engine: str
    seconds: float
    omega_av_ci: list[float] | None = None
    max_figures_are_lower_bounds: bool = False
    samples: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the issue's `crash omega` keys, plus provenance)."""
        out = asdict(self)
        out.pop("extra")
        return {**out, **self.extra}


@dataclass(frozen=True)
class Plan:
    """What an exact run costs before it starts (SPEC §2.1: say so before starting)."""

    sets: int
    inputs: int
    pairs: int
    engine: str
    estimated_seconds: float
    memory_bytes: int = 0

    def describe(self) -> str:
        """One line for people."""
        return (f"{_count(self.sets)} crash sets × {self.inputs:,} inputs = {_count(self.pairs)} (set, input) pairs, "
                f"about {_duration(self.estimated_seconds)} and {_size(self.memory_bytes)} of memory with the "
                f"{self.engine} engine")

    def affordable(self, time_limit: float | None) -> bool:
        """Whether an exact run fits the time limit (None: any time) and this machine's free memory."""
        fits_time = time_limit is None or self.estimated_seconds <= time_limit
        return fits_time and self.memory_bytes <= available_memory()


def available_memory() -> int:
    """Bytes of memory free for a new allocation (Linux MemAvailable; else physical memory; else unbounded)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 62


def _size(n_bytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1024:.0f} KiB"


def _count(n: int) -> str:
    """An exact count with thousands separators up to 10¹⁵, beyond it ≈ mantissa×10^exponent (a 73-digit count
    of crash sets says nothing digit by digit)."""
    if n < 10**15:
        return f"{n:,}"
    digits = len(str(n)) - 1
    return f"≈{int(str(n)[:3]) / 100:.2f}e{digits}"


def _duration(seconds: float) -> str:
    if seconds >= 86400 * 365 * 1000:  # millennia and beyond: the order of magnitude is the message
        return f"{seconds / (86400 * 365.25):.1e} years"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def choose_engine(structure: MLPStructure, budget: CrashBudget, output: str, engine: str = "auto") -> str:
    """`additive` when it applies (one hidden layer, raw output), else `general`; a request is checked."""
    additive_ok = structure.depth == 1 and output == "raw" and budget.per_layer is None
    if engine == "auto":
        return "additive" if additive_ok else "general"
    if engine == "additive" and not additive_ok:
        raise LesionError("the additive engine needs one hidden layer and raw (linear) outputs")
    if engine not in ("additive", "general"):
        raise LesionError(f"unknown engine {engine!r}: additive, general or auto")
    return engine


def plan(structure: MLPStructure, budget: CrashBudget, inputs: int, output: str = "raw",
         engine: str = "auto", hidden: np.ndarray | None = None) -> Plan:
    """Count the (set, input) pairs of an exact run and estimate its time and memory on this machine.
    With `hidden` (the hidden layer's activations on the inputs), the additive engine's estimate counts only
    the distances it evaluates (silent units skipped); without, every pair."""
    chosen = choose_engine(structure, budget, output, engine)
    sets = budget.count()
    pairs = sets * inputs
    widths = [*structure.widths, structure.weights[-1].shape[0]]
    if chosen == "additive":
        evaluated = pairs if hidden is None else kernel_pairs(hidden, budget.total, ADDITIVE_BLOCK)
        seconds = evaluated / ADDITIVE_RATE
        # per-set sums of one step's range of sets: one array per lane, the merged one, the live-unit sums,
        # the expanded ones, the accumulator's; the block's contributions (units × outputs × inputs) and their
        # live copy
        block = min(inputs, ADDITIVE_BLOCK)
        memory = 8 * min(sets, ADDITIVE_STEP_SETS) * (LANES + 4) + 8 * widths[0] * widths[-1] * block * 2
    else:
        first = min(budget.layers)
        flops = sum(widths[l - 1] * widths[l] for l in range(first, len(widths)))
        seconds = pairs * flops / GENERAL_FLOP_RATE
        memory = GENERAL_STEP_BYTES * 5  # a step's tensors and its range's per-set sums
    memory += 8 * inputs * (1 + sum(structure.widths))  # per-input maxima; the hidden activations
    return Plan(sets, inputs, pairs, chosen, seconds, memory)


class _Checkpoint:
    """The state of an exact run on disk: accumulator arrays, next step, and the run's identity."""

    def __init__(self, path: str | Path | None, identity: str, every: float) -> None:
        self.path = None if path is None else Path(path).expanduser()
        self.identity, self.every = identity, every
        self.saved_at = time.monotonic()

    def load(self, fresh: OmegaAccumulator, steps: int) -> tuple[OmegaAccumulator, int] | None:
        """The saved state and the next step, checked against a `fresh` accumulator of this run (its arrays'
        shapes) and its number of `steps`; None without a file."""
        if self.path is None or not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if str(data["identity"]) != self.identity:
                    raise LesionError(f"checkpoint {self.path} belongs to another run (model, data or budget "
                                      "differ); delete it or give another --checkpoint")
                state = {k: data[k] for k in ("set_sums", "input_max", "scalars", "pairs")}
                step = int(data["step"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise LesionError(f"cannot read checkpoint {self.path} ({str(err) or type(err).__name__}); delete it "
                              "to start again") from err
        expected = fresh.state()  # the per-set sums are a window of varying length; the rest has fixed shapes
        if any(state[k].shape != expected[k].shape for k in ("input_max", "scalars", "pairs")) \
                or state["set_sums"].ndim != 1 or not 0 <= step <= steps:
            raise LesionError(f"checkpoint {self.path} does not hold a state of this run (its arrays or its step "
                              "do not fit); delete it to start again")
        return OmegaAccumulator.from_state(state), step

    def save(self, acc: OmegaAccumulator, step: int, force: bool = False) -> None:
        if self.path is None or not (force or time.monotonic() - self.saved_at >= self.every):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, identity=np.array(self.identity), step=np.array(step), **acc.state())
        tmp.replace(self.path)
        self.saved_at = time.monotonic()

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) until the block ends, then raise it: state changed inside the block is never
    left half-done, or done but not counted, by an interrupt (outside the main thread: as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


class Interrupted(Exception):
    """An exact run stopped before its end (its state is in the checkpoint)."""


def exact_omega(structure: MLPStructure, x: torch.Tensor, budget: CrashBudget, norm: str = "inf",
                output: str = "raw", engine: str = "auto", checkpoint: str | Path | None = None,
                checkpoint_every: float = 30.0, time_limit: float | None = DEFAULT_TIME_LIMIT,
                max_steps: int | None = None, set_batch: int | None = None, executor: Any = None,
                keep_checkpoint: bool = False) -> OmegaResult:
    """Every crash set of `budget` on every input of `x` (SPEC §2.1).

    Refuses (LesionError, with the count, the estimate and the Monte Carlo alternative) when the estimated
    time exceeds `time_limit` seconds (None: no limit). With `checkpoint`, the state is saved every
    `checkpoint_every` seconds and on interruption, and a later call with the same arguments resumes.
    `max_steps` stops after that many steps (raising Interrupted), as an interruption would. With a Ray
    `executor` (`lesion.scale.ray_executor.RayPool`) the steps run on its workers, each into a fresh
    accumulator merged here in step order: the same float64 operations in the same order, the same figures.
    The checkpoint is removed when the run ends, or, with `keep_checkpoint`, holds the finished state (a rerun
    then reads the figures back without a step: several budgets, each finished one kept until all are).
    """
    if norm not in NORM_ORDERS or output not in ("raw", "softmax"):
        raise LesionError(f"norm must be inf, 1 or 2 and output raw or softmax (got {norm}, {output})")
    activations = hidden_activations(structure, x)
    estimate = plan(structure, budget, len(x), output, engine, activations[0].numpy())
    alternative = ("Use Monte Carlo instead (--samples N: uniform crash sets, mean with a 95% CI, max-type "
                   "figures as lower bounds)")
    if time_limit is not None and estimate.estimated_seconds > time_limit:
        raise LesionError(f"exact Omega for {budget.describe()}: {estimate.describe()}, above the limit of "
                          f"{_duration(time_limit)}. {alternative} or raise --time-limit")
    free = available_memory()
    if estimate.memory_bytes > free:
        raise LesionError(f"exact Omega for {budget.describe()}: {estimate.describe()}, more than the "
                          f"{_size(free)} of memory free on this machine. {alternative}")
    steps, reduce = _steps(structure, activations, budget, norm, output, estimate.engine, set_batch)
    settings = [asdict(budget), norm, output, estimate.engine, CHUNK, LANES, KERNEL_VERSION, ADDITIVE_BLOCK, set_batch,
                "general steps set-range-major", ADDITIVE_STEP_SETS]
    # the run: weights, biases, activations (their kind and parameters), inputs and settings
    activations_text = [repr(a) for a in structure.activations]
    identity = tensor_digest(*structure.weights, *structure.biases, x,
                             text=json.dumps([settings, activations_text]))
    store = _Checkpoint(checkpoint, identity, checkpoint_every)
    fresh = OmegaAccumulator(budget.count(), len(x))
    resumed = store.load(fresh, len(steps))
    acc, first_step = resumed if resumed else (fresh, 0)
    started = time.perf_counter()
    done = 0
    remote = None
    if executor is not None and hasattr(executor, "ordered"):
        executor.start(_OmegaWorker, (structure, x), len(steps) - first_step)
        job = (budget, norm, output, estimate.engine, set_batch)
        remote = executor.ordered("step", [(job, k) for k in range(first_step, len(steps))])
    with progress.bar(len(steps), f"Omega, {budget.describe()}", "step") as bar:
        bar.update(first_step)
        try:
            for step in range(first_step, len(steps)):
                if max_steps is not None and done >= max_steps:
                    store.save(acc, step, force=True)
                    raise Interrupted(f"stopped after {done} steps; resume from {store.path}")
                reduced = reduce(steps[step]) if remote is None else next(remote)[1]
                with interrupts_deferred():  # a step merged is a step counted: Ctrl-C waits for both
                    acc.add_reduced(*reduced)
                    done += 1
                bar.update(1)
                store.save(acc, step + 1)
        except KeyboardInterrupt:
            store.save(acc, first_step + done, force=True)
            raise
        finally:
            if remote is not None:
                remote.close()
    figures = acc.figures()
    if keep_checkpoint:
        store.save(acc, len(steps), force=True)
    else:
        store.remove()
    worst = _set_at_rank(budget, figures.pop("worst_rank"))
    return OmegaResult(budget.total, budget.layers, budget.per_layer, worst_set=worst, exact=True,
                       sets=budget.count(), inputs=len(x), norm=norm, output=output, engine=estimate.engine,
                       seconds=time.perf_counter() - started, **figures)


def _steps(structure: MLPStructure, activations: list[torch.Tensor], budget: CrashBudget, norm: str, output: str,
           engine: str, set_batch: int | None) -> tuple[list[Any], Callable[[Any], tuple]]:
    """The steps of an exact run and the function that reduces one to `OmegaAccumulator.add_reduced`'s
    arguments (here or on a worker: the same operations merge it)."""
    if engine == "additive":
        return _additive_steps(structure, activations, budget, norm, set_batch)
    return _general_steps(structure, activations, budget, norm, output, set_batch)


class _OmegaWorker:
    """Exact runs on one model and inputs on a Ray worker: the steps of a run (`job`: budget, norm, output,
    engine, set batch), each reduced to what an accumulator merges. The worker lives across runs, so its
    compiled kernels serve every budget."""

    def __init__(self, structure: MLPStructure, x: torch.Tensor, threads: int) -> None:
        torch.set_num_threads(threads)
        self.structure = structure
        self.activations = hidden_activations(structure, x)
        self.job: tuple[Any, ...] | None = None  # the exact run whose steps are prepared
        self.sampled_job: tuple[Any, ...] | None = None  # the Monte Carlo run whose engine is prepared

    def pid(self) -> int:
        """The worker's process id."""
        return os.getpid()

    def reduced(self, job: tuple[Any, ...], sets: np.ndarray) -> tuple[np.ndarray, float, float, np.ndarray]:
        """`reduced_distances` of one batch of sampled sets (Monte Carlo run `job`: budget, norm, output)."""
        if job != self.sampled_job:
            budget, norm, output = job
            self.engine = GeneralEngine(self.structure, self.activations, budget, norm, output)
            self.sampled_job = job
        return reduced_distances(self.engine.distances(sets))

    def step(self, job: tuple[Any, ...], k: int) -> tuple:
        """Step k of the run `job`, reduced (`OmegaAccumulator.add_reduced`'s arguments: only the step's sets
        and inputs travel)."""
        if job != self.job:
            budget, norm, output, engine, set_batch = job
            self.steps, self.reduce = _steps(self.structure, self.activations, budget, norm, output, engine,
                                             set_batch)
            self.job = job
        return self.reduce(self.steps[k])


def _additive_steps(structure: MLPStructure, activations: list[torch.Tensor], budget: CrashBudget, norm: str,
                    set_batch: int | None) -> tuple[list[tuple[PrefixGroup, slice]],
                                                    Callable[[tuple[PrefixGroup, slice]], tuple]]:
    """Steps of (set range, input block), set-range-major: the ranges are `prefix_groups` of at most `set_batch`
    (default `ADDITIVE_STEP_SETS`) sets, one range of every set when they fit, each run over every input block
    in order."""
    hidden = activations[0].numpy()
    hidden = hidden[activity_order(hidden)]  # blocks of inputs that share silent units (Omega is order-free)
    out_weight = structure.weights[1].double().cpu().numpy()
    f = budget.total
    blocks = [slice(i, min(len(hidden), i + ADDITIVE_BLOCK)) for i in range(0, len(hidden), ADDITIVE_BLOCK)]
    groups = prefix_groups(hidden.shape[1], f, set_batch or ADDITIVE_STEP_SETS)
    steps = [(group, inputs) for group in groups for inputs in blocks]

    def reduce(step: tuple[PrefixGroup, slice]) -> tuple:  # one range of sets over a block of inputs
        group, inputs = step
        contrib = contributions(hidden[inputs], out_weight)
        set_sums, input_max, (total, total_sq, maximum) = run_group(contrib, f, norm, group, torch.get_num_threads())
        return (group.start, set_sums, inputs.start, input_max, float(total), float(total_sq), float(maximum),
                group.count * (inputs.stop - inputs.start))

    return steps, reduce


def _general_steps(structure: MLPStructure, activations: list[torch.Tensor], budget: CrashBudget, norm: str,
                   output: str, set_batch: int | None
                   ) -> tuple[list[tuple[int, int, slice]], Callable[[tuple[int, int, slice]], tuple]]:
    """Steps of (set range, input block), set-range-major: a range's sets are made once (by unranking, so any
    step can run anywhere) and every input block added in order, so each set's sum over inputs is complete when
    its range ends."""
    reduce = _general_reducer(structure, activations, budget, norm, output)
    n_inputs = len(activations[0])
    widest = max([*structure.widths, structure.weights[-1].shape[0]])
    input_block = min(n_inputs, 8192)
    batch = set_batch or max(1, min(4096, GENERAL_STEP_BYTES // (8 * input_block * widest)))
    n_sets = budget.count()
    steps = [(start, min(n_sets, start + batch), slice(i, min(n_inputs, i + input_block)))
             for start in range(0, n_sets, batch) for i in range(0, n_inputs, input_block)]
    return steps, reduce


def _general_reducer(structure: MLPStructure, activations: list[torch.Tensor], budget: CrashBudget, norm: str,
                     output: str) -> Callable[[tuple[int, int, slice]], tuple]:
    """step ↦ `reduce_block` of its distances, by the general engine (the last range's sets kept)."""
    engine = GeneralEngine(structure, activations, budget, norm, output)
    cache: dict[str, Any] = {}

    def reduce(step: tuple[int, int, slice]) -> tuple:
        start, stop, inputs = step
        if cache.get("range") != (start, stop):
            cache["range"], cache["sets"] = (start, stop), budget.sets_at(start, stop - start)
        return reduce_block(engine.distances(cache["sets"], inputs), start, inputs.start)

    return reduce


def _set_at_rank(budget: CrashBudget, rank: int) -> list[list[int]]:
    return [list(budget.locate(u)) for u in budget.unrank(rank)]


def reduced_distances(d: np.ndarray) -> tuple[np.ndarray, float, float, np.ndarray]:
    """What Monte Carlo Omega keeps of a batch's distances (sets, rows): per-set means, the sum, the sum of
    squares, and the per-row maxima."""
    return d.mean(axis=1), float(d.sum()), float((d * d).sum()), d.max(axis=0)


def sampled_figures(distances: Callable[[np.ndarray], np.ndarray], rows: int, budget: CrashBudget,
                    samples: int | None, ci_width: float | None, seed: int = 0, batch: int = 64,
                    max_samples: int = 100_000,
                    reduce: Callable[[Iterator[np.ndarray]], Iterator[tuple]] | None = None) -> dict[str, Any]:
    """Monte Carlo Omega (SPEC §2.1) from any `distances(sets) -> (sets, rows)`: uniformly drawn crash sets,
    Omega_av with a 95% Student-t interval over sets (each set's mean over all rows), and Omega_mav,
    Omega_max, Omega_worst_set as lower bounds. `samples` sets, or until the interval is at most `ci_width`.
    `reduce` (batches of sets → `reduced_distances` of each, in order) evaluates them elsewhere (on Ray
    workers): the sets are drawn here, so the figures are the same."""
    if (samples is None) == (ci_width is None):
        raise LesionError("give either a number of sampled crash sets or a target interval width")
    rng = np.random.default_rng(seed)
    per_set = RunningMean()
    total = total_sq = 0.0
    row_max = np.zeros(rows)
    worst_value, worst_units = -1.0, None
    goal = samples if samples is not None else max_samples
    started = time.perf_counter()

    def batches() -> Iterator[np.ndarray]:
        drawn = 0
        while drawn < goal:
            sets = budget.sample(min(batch, goal - drawn), rng)
            drawn += len(sets)
            yield sets

    results = reduce(batches()) if reduce is not None else (
        (sets, reduced_distances(distances(sets))) for sets in batches())
    with progress.bar(goal, f"Omega (Monte Carlo), {budget.describe()}", "set") as bar:
        for sets, (means, d_sum, d_sq, d_max) in results:
            for value in means:
                per_set.add(float(value))
            total += d_sum
            total_sq += d_sq
            np.maximum(row_max, d_max, out=row_max)
            best = int(np.argmax(means))
            if means[best] > worst_value:
                worst_value, worst_units = float(means[best]), sets[best]
            bar.update(len(sets))
            if ci_width is not None and per_set.n >= 30 and per_set.width() <= ci_width:
                break
        if hasattr(results, "close"):
            results.close()
    pairs = per_set.n * rows
    mean = total / pairs
    return {"omega_av": per_set.mean, "omega_std": math.sqrt(max(0.0, total_sq / pairs - mean * mean)),
            "omega_mav": float(row_max.mean()), "omega_max": float(row_max.max()), "omega_worst_set": worst_value,
            "worst_set": [list(budget.locate(int(u))) for u in worst_units], "exact": False,
            "sets": budget.count(), "seconds": time.perf_counter() - started, "omega_av_ci": list(per_set.interval()),
            "max_figures_are_lower_bounds": True, "samples": per_set.n}


def monte_carlo_omega(structure: MLPStructure, x: torch.Tensor, budget: CrashBudget, norm: str = "inf",
                      output: str = "raw", samples: int | None = None, ci_width: float | None = None,
                      seed: int = 0, batch: int = 64, max_samples: int = 100_000, executor: Any = None
                      ) -> OmegaResult:
    """Omega from uniformly drawn crash sets of an MLP (SPEC §2.1; see `sampled_figures`), by the general
    engine; with a Ray `executor` on its workers (the sets drawn here: the same figures)."""
    if (samples is None) == (ci_width is None):
        raise LesionError("give either a number of sampled crash sets or a target interval width")
    reduce = None
    if executor is not None and hasattr(executor, "ordered"):
        executor.start(_OmegaWorker, (structure, x), 1)
        job = (budget, norm, output)

        def reduce(batches: Iterator[np.ndarray]) -> Iterator[tuple]:
            remote = executor.ordered("reduced", ((job, sets) for sets in batches))
            try:
                for (_, sets), reduced in remote:
                    yield sets, reduced
            finally:
                remote.close()

        engine = None
    else:
        engine = GeneralEngine(structure, hidden_activations(structure, x), budget, norm, output)
    figures = sampled_figures(engine.distances if engine else None, len(x), budget, samples, ci_width, seed,
                              batch, max_samples, reduce)
    return OmegaResult(budget.total, budget.layers, budget.per_layer, inputs=len(x), norm=norm, output=output,
                       engine="monte-carlo", **figures)
