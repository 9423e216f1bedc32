"""Geodesic recovery of a damaged network and its baselines ([G] §5, SPEC §3.6).

Geodesic: from the trained weights, repeat — Jacobian rows A of a minibatch (g = AᵀA/b), the direction
v = −P_D w/‖P_D w‖ that brings the damaged weights to 0, the trust-region step θ of [G] Eq. 12
(`trust_region_step`), w ← w + θ — until ‖P_D w‖ falls below a tolerance; then w_D = 0 exactly. The path's
length is Σ θᵀgθ ([G] Eq. 6). Several β and minibatch seeds may be tried; the shortest path is kept.

Baselines at the same damage: naive (w_D = 0, nothing else), fine-tuning (w_D = 0, then Adam for E epochs
with D held at 0, minibatches of FINETUNE_BATCH, the learning rate one-cycle to a peak of FINETUNE_LR: a short
fine-tune after compensation and the 10-epoch baseline alike; dropout off after another method), iterative
prune-then-retrain (the units deleted in R rounds, retraining after each),
one-shot OBS with the whole network's damped metric (`obs-metric`: δw = −g⁻¹E_Dᵀ(E_D g⁻¹ E_Dᵀ)⁻¹ w_D), and
closed-form compensation on the layer that reads the deleted units, without labels or gradients
(`lesion.geometry.compensate`): ridge regression of the deleted units on the kept ones (`compensate`) and
layer-wise OBS from the reader's input Hessian (`obs`). Label-free distillation from the undamaged network
(`distill`, `lesion.geometry.distill`) trains the damaged one towards its outputs on unlabelled inputs; it, or a
fine-tune, may follow another method (`compensate+distill:1`).

Compute is counted in epoch-equivalents: examples passed forward and backward ÷ training-set size; a row of
the Jacobian costs one backward pass, so a geodesic step on b inputs with m outputs costs b·(m + 1) examples.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lesion import progress
from lesion.errors import LesionError
from lesion.geometry.damage_set import DamageSet
from lesion.geometry.flat import FlatModel
from lesion.geometry.rows import JacobianRows, stacked_rows
from lesion.geometry.trust_region import trust_region_step
from lesion.nets.outputs import class_indices, flat_labels
from lesion.train import evaluate_outputs, train_one_cycle

FINETUNE_LR = 2e-3  # one-cycle peak (benchmarks/recovery.py: on the CNN 0.8795 after 5 epochs against 0.873 at
# a constant 1e-3; compensation then 0.95 epoch: 0.8635)
FINETUNE_BATCH = 16


@dataclass(frozen=True)
class MethodResult:
    """Accuracy and loss after recovery, the compute it took, and (for paths) accuracy along the way."""

    method: str
    accuracy: float
    loss: float
    epoch_equivalents: float
    wall_seconds: float
    progress: list[float] = field(default_factory=list)
    path_accuracy: list[float] = field(default_factory=list)
    path_length: float | None = None
    path_loss: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


class RecoveryProblem:
    """A trained model, its data, and a damage set D; weights are flat vectors of its `FlatModel` (SPEC §0,
    §3.6)."""

    def __init__(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_eval: torch.Tensor,
                 y_eval: torch.Tensor, damage: DamageSet) -> None:
        self.model, self.damage = model, damage
        y_train, y_eval = class_indices(y_train), class_indices(y_eval)  # int32 labels, say: cross-entropy wants int64
        self.x_train, self.y_train, self.x_eval, self.y_eval = x_train, y_train, x_eval, y_eval
        self.flat = FlatModel(model, x_eval[:1])
        self.w0 = self.flat.weights.clone()
        self.mask = torch.ones_like(self.w0)
        self.mask[damage.indices] = 0.0
        self.m = self.flat.m

    def evaluate(self, w: torch.Tensor, x: torch.Tensor | None = None, y: torch.Tensor | None = None
                 ) -> tuple[float, float]:
        """(accuracy, loss) on the evaluation inputs (or on x, y), with w rounded to the precision the model stores
        its weights in (`FlatModel.stored`: a float16 model is judged in float16)."""
        w = self.flat.stored(w)
        x, y = (self.x_eval, self.y_eval) if x is None else (x, y)
        with torch.no_grad():
            out = torch.cat([self.flat(x[i:i + 4096], w) for i in range(0, len(x), 4096)])
        result = evaluate_outputs(out, y)  # non-finite outputs count as wrong
        return result.accuracy, result.loss

    def jacobian(self, w: torch.Tensor, x: torch.Tensor) -> JacobianRows:
        """Jacobian rows of the outputs on x with respect to w (len(x)·m rows; MLPs: through layer factors)."""
        return self.flat.jacobian_rows(w, x)

    def load(self, w: torch.Tensor) -> nn.Module:
        """A private copy of the model carrying weights w (the user's model is untouched)."""
        return self.flat.load(w)

    def epochs(self, examples: float) -> float:
        """Examples passed forward and backward → epoch-equivalents."""
        return examples / len(self.x_train)

    def pairs(self, inputs: int) -> int:
        """The (input, token) pairs of `inputs` inputs: what the metric averages over (SPEC §3.1; one per input
        but for a sequence model)."""
        return inputs * self.flat.rows_per_input

    def row_cost(self, inputs: int) -> float:
        """Examples-worth of compute for the Jacobian rows of `inputs` inputs: a forward each, and a backward
        pass per row (m per token)."""
        return inputs * (self.flat.rows_per_input * self.m + 1)


def naive(problem: RecoveryProblem) -> MethodResult:
    """Delete and do nothing else."""
    start = time.perf_counter()
    acc, loss = problem.evaluate(problem.w0 * problem.mask)
    return MethodResult("naive", acc, loss, 0.0, time.perf_counter() - start)


def geodesic(problem: RecoveryProblem, beta: float = 1.0, radius: float = 1.0, batch: int = 32, seed: int = 0,
             max_steps: int = 200, tol: float = 1e-3, eval_every: int = 1, start: torch.Tensor | None = None,
             selected: torch.Tensor | None = None, target: torch.Tensor | None = None, window: int = 1
             ) -> tuple[MethodResult, torch.Tensor]:
    """One geodesic path (SPEC §3.6) and its final weights.

    By default from the trained weights to the damage hyperplane w_D = 0. In general (transitions between
    configurations, [G] Fig. 4F) from `start` to the hyperplane {w_S = target_S} for the 0/1 vector `selected`
    (S): v = P_S(target − w)/‖P_S(target − w)‖, so deleted weights go to 0 and restored ones to their values.
    `window` > 1 estimates the metric of each step from the Jacobian rows of the last `window` minibatches
    (each taken at the weights of its own step: g = Σ AᵢᵀAᵢ / Σbᵢ), a running estimate over window·batch
    inputs at the cost of one minibatch's rows a step; 1 is [G]'s step on a fresh minibatch.
    """
    if window < 1:
        raise LesionError(f"the geodesic's window counts minibatches: at least 1, got {window}")
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    w = (problem.w0 if start is None else start).clone()
    selected = (1.0 - problem.mask) if selected is None else selected.to(w.dtype)
    target = torch.zeros_like(w) if target is None else target.to(w.dtype)
    initial = float(((target - w) * selected).norm())
    first_acc, first_loss = problem.evaluate(w)
    progress_, path_acc, path_loss, length, examples, mus = [0.0], [first_acc], [first_loss], 0.0, 0.0, []
    recent: list[JacobianRows] = []
    with progress.bar(max_steps, f"geodesic β={beta:g}", "step") as bar:
        for step in range(max_steps):
            gap = (target - w) * selected
            remaining = float(gap.norm())
            if initial == 0 or remaining <= tol * initial:
                break
            idx = torch.randint(0, len(problem.x_train), (batch,), generator=gen)
            recent = [*recent, problem.jacobian(w, problem.x_train[idx])][-window:]
            result = trust_region_step(stacked_rows(recent), problem.pairs(batch) * len(recent), gap / remaining,
                                       beta, min(radius, remaining))
            w = w + result.theta.to(w.dtype)
            length += result.metric_length
            mus.append(result.mu)
            examples += problem.row_cost(batch)
            if (step + 1) % eval_every == 0:
                progress_.append(1.0 - float(((target - w) * selected).norm()) / max(initial, 1e-300))
                acc_now, loss_now = problem.evaluate(w)
                path_acc.append(acc_now)
                path_loss.append(loss_now)
            bar.update(1)
    residual = float(((target - w) * selected).norm())
    w = w * (1.0 - selected) + target * selected  # on the target hyperplane exactly
    progress_.append(1.0)
    acc, loss = problem.evaluate(w)
    path_acc.append(acc)
    path_loss.append(loss)
    details = {"beta": beta, "radius": radius, "batch": batch, "seed": seed, "steps": len(mus),
               "residual_before_projection": residual, "window": window}
    return MethodResult("geodesic", acc, loss, problem.epochs(examples), time.perf_counter() - started, progress_,
                        path_acc, length, path_loss, details), w


VALIDATION_INPUTS = 1000  # labelled training inputs that judge a path's end point (`geodesic_best`)


def geodesic_best(problem: RecoveryProblem, betas: Sequence[float] = (0.1, 1.0, 10.0), seeds: Sequence[int] = (0,),
                  choose: str = "length", name: str = "geodesic", **kwargs: Any) -> tuple[MethodResult, torch.Tensor]:
    """Several paths (β values, minibatch seeds), the compute of all counted. `choose="length"` keeps the
    shortest ([G]); `"validation"` the one whose end point classifies the last VALIDATION_INPUTS training inputs
    best (the path never reads their labels; ties go to the shorter path), their forward passes counted at a
    third of an example each."""
    if choose not in ("length", "validation"):
        raise LesionError(f"choose a geodesic path by length or validation, not {choose!r}")
    runs = [geodesic(problem, beta, seed=seed, **kwargs) for beta in betas for seed in seeds]
    total_ee = sum(r[0].epoch_equivalents for r in runs)
    total_s = sum(r[0].wall_seconds for r in runs)
    validation = [None] * len(runs)
    if choose == "validation":
        started = time.perf_counter()
        x, y = problem.x_train[-VALIDATION_INPUTS:], problem.y_train[-VALIDATION_INPUTS:]
        validation = [problem.evaluate(w, x, y)[0] for _, w in runs]
        total_ee += problem.epochs(len(runs) * len(x) / 3)
        total_s += time.perf_counter() - started
        best, w = max(zip(runs, validation, strict=True), key=lambda rv: (rv[1], -rv[0][0].path_length))[0]
    else:
        best, w = min(runs, key=lambda r: r[0].path_length)
    tried = [{"beta": r[0].details["beta"], "seed": r[0].details["seed"], "length": r[0].path_length,
              "accuracy": r[0].accuracy, "validation_accuracy": v} for r, v in zip(runs, validation, strict=True)]
    return MethodResult(name, best.accuracy, best.loss, total_ee, total_s, best.progress, best.path_accuracy,
                        best.path_length, best.path_loss, {**best.details, "paths": tried, "chosen_by": choose}), w


def finetune(problem: RecoveryProblem, epochs: float, seed: int = 0, lr: float = FINETUNE_LR,
             start_weights: torch.Tensor | None = None) -> tuple[MethodResult, torch.Tensor]:
    """Delete, then train with Adam for `epochs` epochs holding D at zero (from `start_weights` on the damage
    hyperplane, e.g. a compensated network, when given). From naive deletion it trains as the network was
    trained (dropout on); after another method (`start_weights`) it refines a repaired network with dropout
    off, as distillation does: a short repair has no epochs for dropout's regularisation to pay back the
    units it silences (mlp1-400, 90% deleted, 6 seeds: compensation then 0.95 epoch 0.907 with dropout,
    0.914 without; 10 epochs from deletion 0.934 and 0.932)."""
    start = time.perf_counter()
    w0 = problem.w0 * problem.mask if start_weights is None else start_weights
    w, examples = _retrain(problem, w0, problem.mask, epochs, seed, lr, dropout=start_weights is None)
    acc, loss = problem.evaluate(w)
    return MethodResult("finetune", acc, loss, problem.epochs(examples), time.perf_counter() - start,
                        details={"epochs": epochs, "lr": lr, "dropout": start_weights is None}), w


def _retrain(problem: RecoveryProblem, w: torch.Tensor, mask: torch.Tensor, epochs: float, seed: int,
             lr: float, dropout: bool = True) -> tuple[torch.Tensor, int]:
    """`epochs` epochs of labelled minibatches (one-cycle Adam, `train_one_cycle`), D held at 0; dropout on
    unless `dropout` is False. Batch-norm layers keep the model's running statistics (eval mode): the repaired
    weights are evaluated and saved with those, so they are trained against them too. Returns the weights and
    the examples trained on (whole minibatches, at least one: what the compute counts)."""
    model = problem.load(w)
    x, y = problem.x_train, problem.y_train
    steps = max(1, math.ceil(epochs * len(x) / FINETUNE_BATCH))
    model.train(dropout)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.eval()
    try:
        train_one_cycle(model, len(x), steps, FINETUNE_BATCH, lr, seed,
                        lambda idx: F.cross_entropy(model(x[idx]), flat_labels(y[idx])), problem.flat.unflatten(mask),
                        "fine-tuning")
    finally:
        model.eval()
    return problem.flat.weights_of(model).to(w.dtype), steps * FINETUNE_BATCH


def prune_retrain(problem: RecoveryProblem, rounds: int, epochs_per_round: float, seed: int = 0,
                  lr: float = FINETUNE_LR) -> tuple[MethodResult, torch.Tensor]:
    """Delete the units in `rounds` equal groups, retraining `epochs_per_round` after each ([G]: prune one unit
    then retrain; one unit per round is `rounds` = the number of deleted units)."""
    start = time.perf_counter()
    units = problem.damage.unit_list()
    groups = [units[i::rounds] for i in range(min(rounds, len(units)))]
    w = problem.w0.clone()
    mask = torch.ones_like(w)
    deleted: set[int] = set()
    layout_masks = _unit_masks(problem)
    examples = 0
    for r, group in enumerate(groups):
        deleted.update(group)
        mask = torch.ones_like(w)
        for unit in deleted:
            mask *= layout_masks[unit]
        w, trained = _retrain(problem, w * mask, mask, epochs_per_round, seed + r, lr)
        examples += trained
    w = w * problem.mask
    acc, loss = problem.evaluate(w)
    return MethodResult("prune-retrain", acc, loss, problem.epochs(examples), time.perf_counter() - start,
                        details={"rounds": len(groups), "epochs_per_round": epochs_per_round}), w


def _unit_masks(problem: RecoveryProblem) -> dict[tuple[str, int], torch.Tensor]:
    """Per deleted (layer, unit), the 0/1 mask of its own weights (a unit's share of D)."""
    from lesion.damage.selectors import Explicit
    from lesion.damage.target import Target
    from lesion.geometry.damage_set import unit_damage_set

    out = {}
    target = Target(problem.model, example=problem.x_eval[:2])
    for layer, unit in problem.damage.unit_list():
        single = unit_damage_set(problem.model, layer, Explicit((unit,)), torch.Generator(), target=target,
                                 check=False)  # the whole set was checked when it was made
        m = torch.ones_like(problem.w0)
        m[single.indices] = 0.0
        out[(layer, unit)] = m
    return out


def obs_metric(problem: RecoveryProblem, batch: int | None = None, damping: float = 1.0,
               seed: int = 0) -> tuple[MethodResult, torch.Tensor]:
    """One-shot OBS compensation with the whole network's metric (the baseline of the first version; `obs` is
    layer-wise): δw = −g⁻¹E_Dᵀ(E_D g⁻¹E_Dᵀ)⁻¹w_D with g = AᵀA/b + λI (λ = damping·tr(g)/n),
    all in the Gram space through Woodbury: with K = AAᵀ and A_D the damaged columns,
    (E_D g⁻¹E_Dᵀ)⁻¹ = λ(I + A_Dᵀ(bλI + K − A_D A_Dᵀ)⁻¹A_D)."""
    start = time.perf_counter()
    batch = obs_batch(problem) if batch is None else batch
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(problem.x_train), (batch,), generator=gen)
    A = problem.jacobian(problem.w0, problem.x_train[idx])
    w = problem.w0.double()
    damaged = 1.0 - problem.mask.double()
    K = A.gram()
    pairs = problem.pairs(batch)  # g averages over (input, token) pairs
    lam = damping * float(torch.trace(K)) / pairs / len(w)
    eye = torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
    wD = w * damaged  # E_Dᵀ w_D
    inner = torch.linalg.solve(pairs * lam * eye + K - A.masked_gram(damaged), A.apply(wD))
    e = lam * (wD + A.apply_t(inner) * damaged)  # E_Dᵀ (E_D g⁻¹ E_Dᵀ)⁻¹ w_D
    # g⁻¹ e = (e − Aᵀ(bλI + K)⁻¹ A e) / λ
    g_inv_e = (e - A.apply_t(torch.linalg.solve(pairs * lam * eye + K, A.apply(e)))) / lam
    new = (w - g_inv_e).to(problem.w0.dtype) * problem.mask
    acc, loss = problem.evaluate(new)
    return MethodResult("obs-metric", acc, loss, problem.epochs(problem.row_cost(batch)),
                        time.perf_counter() - start, details={"batch": batch, "damping": lam}), new


METHODS = ("geodesic", "geodesic-running", "naive", "finetune", "prune-retrain", "obs", "compensate", "distill",
           "obs-metric")
RUNNING_WINDOW = 4  # `geodesic-running`: the metric of each step from the last four minibatches' rows
OPT_IN = ("geodesic-running",)  # not in `all`: a step solves a Gram four times the size (17× the geodesic's time)
THEN = ("finetune", "distill")  # what may follow a method: `M+finetune[:EPOCHS]`, `M+distill[:EPOCHS]`
DISTILL_EPOCHS = 0.5  # `distill` alone, and the default after another method: a twentieth of the default budget


OVERHEAD = 1.5  # masks, shuffling and evaluations on top of the timed optimiser steps


@dataclass(frozen=True)
class StepTimes:
    """What recovery's work costs here, timed before it (issue 14): an Adam step per training example (of a
    64-input minibatch), and the Jacobian rows of one input (one geodesic or OBS input)."""

    adam_per_example: float
    jacobian_per_input: float

    @staticmethod
    def of(problem: RecoveryProblem, jacobian_per_input: float | None = None) -> StepTimes:
        """Three Adam steps on a private copy of the model (the median, times OVERHEAD for masks, shuffling and
        evaluations); the Jacobian rows of one training input (MLPs: through their factors) timed once, unless
        the caller has timed them (`jacobian_per_input`)."""
        import copy

        x, y = problem.x_train[:64], flat_labels(problem.y_train[:64])
        model = copy.deepcopy(problem.model).train()
        optimiser = torch.optim.Adam(model.parameters())
        times = []
        with torch.enable_grad():
            for _ in range(3):
                started = time.perf_counter()
                optimiser.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimiser.step()
                times.append(time.perf_counter() - started)
        adam = OVERHEAD * sorted(times)[1] / len(x)
        if problem.flat.mlp is not None:  # the factors: about a forward and a backward pass per output row
            return StepTimes(adam, adam * problem.m)
        if jacobian_per_input is not None:
            return StepTimes(adam, jacobian_per_input)
        started = time.perf_counter()
        problem.jacobian(problem.w0, problem.x_train[:1])
        return StepTimes(adam, time.perf_counter() - started)


def estimate_seconds(problem: RecoveryProblem, methods: Sequence[str], budget: float, batch: int = 32,
                     max_steps: int = 400, betas: int = 3, times: StepTimes | None = None,
                     calibration: int = 256) -> float:
    """A cost estimate before the work (issue 14), from `StepTimes` (timed here unless given): fine-tuning and
    prune-retrain cost `budget` epochs of Adam steps each; the geodesic at most `max_steps` steps per β, each
    the Jacobian rows of `batch` inputs; OBS the rows of its batch once; compensation two forwards over the
    `calibration` inputs per site; a `+finetune:E` after a method E epochs more."""
    times = times or StepTimes.of(problem)
    epoch = times.adam_per_example * len(problem.x_train)
    seconds = 0.0
    for method in methods:
        first, _, then = method.partition("+")
        name, _, epochs = then.partition(":")
        if name == "finetune":  # a fine-tune after the method
            seconds += float(epochs or budget) * epoch
        elif name == "distill":
            seconds += float(epochs or DISTILL_EPOCHS) * epoch
        if first == "distill":
            seconds += DISTILL_EPOCHS * epoch
        if first in ("finetune", "prune-retrain"):
            seconds += budget * epoch
        elif first in ("geodesic", "geodesic-running"):
            seconds += betas * max_steps * batch * times.jacobian_per_input
            if first == "geodesic-running":  # its window's rows are reused, but each step solves a larger Gram
                seconds += betas * max_steps * _eigh_seconds(RUNNING_WINDOW * batch * problem.m)
        elif first == "obs-metric":
            seconds += obs_batch(problem) * times.jacobian_per_input
        elif first in ("compensate", "obs"):  # two forwards over the calibration inputs per damaged site
            sites = len(problem.damage.parts) or 1
            seconds += 2 * sites * min(calibration, len(problem.x_train)) * times.adam_per_example / 3
    return seconds


@functools.lru_cache(maxsize=8)
def _eigh_seconds(size: int) -> float:
    """Time of one eigen-decomposition of a symmetric size × size float64 matrix here (a step's Gram; forming it
    through the factors costs far less)."""
    a = torch.randn(size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    torch.linalg.eigh(a @ a.T)
    return time.perf_counter() - started


def check_jacobian_batch(problem: RecoveryProblem, methods: Sequence[str], batch: int) -> None:
    """Refuse before the work (a LesionError) a geodesic `batch`, or an OBS, whose Jacobian rows would not fit
    in memory (autograd route; an MLP's factors are small)."""
    if problem.flat.mlp is not None:
        return
    fits = problem.flat.largest_jacobian_batch()
    bases = {m.partition("+")[0] for m in methods}
    held = {"geodesic": batch, "geodesic-running": batch * RUNNING_WINDOW, "obs-metric": 1}  # rows kept at once
    wanted = [n for n, b in held.items() if n in bases and b > fits]
    if wanted:
        inputs = max(held[n] for n in wanted)
        size = problem.flat.jacobian_bytes(inputs) / 2**30
        per = RUNNING_WINDOW if "geodesic-running" in wanted else 1
        raise LesionError(f"{' and '.join(wanted)}: the Jacobian rows of {inputs} input(s) would take {size:.1f} GiB "
                          "of memory; "
                          + (f"use --batch {max(1, fits // per)} or less" if fits >= per else
                             "this model is too large for Jacobian rows: use --method finetune or prune-retrain"))


OBS_BATCH = 64
OBS_DAMPING = 0.01  # layer-wise OBS: λ as a share of the mean diagonal of the reader's input Hessian


def obs_batch(problem: RecoveryProblem) -> int:
    """OBS's minibatch: 64 inputs, or as many as their Jacobian rows fit in memory (autograd route)."""
    if problem.flat.mlp is not None:
        return OBS_BATCH
    return max(1, min(OBS_BATCH, problem.flat.largest_jacobian_batch()))


# methods a fine-tune or distillation may follow
FOLLOW_UPS = ("naive", "geodesic", "geodesic-running", "obs", "compensate", "obs-metric")


def parse_methods(text: str) -> list[str]:
    """A comma list of `all` (every method of METHODS but those of OPT_IN, which are slower: asked for by name),
    METHODS and combinations `M+finetune[:EPOCHS]` or `M+distill[:EPOCHS]` (M in FOLLOW_UPS: the method, then a
    fine-tune of EPOCHS epochs, default the budget, or a label-free distillation of EPOCHS epoch-equivalents,
    default DISTILL_EPOCHS, from its weights)."""
    methods = []
    for item in (part.strip() for part in text.split(",")):
        for one in ([m for m in METHODS if m not in OPT_IN] if item == "all" else [item] if item else []):
            if one not in methods:  # `all,geodesic-running`: every default method and an opt-in one
                methods.append(one)
    for method in methods:
        first, plus, then = method.partition("+")
        name, _, epochs = then.partition(":")
        bad = first not in METHODS or (plus and (first not in FOLLOW_UPS or name not in THEN))
        if not bad and epochs:
            try:
                count = float(epochs)
            except ValueError:
                count = math.nan
            if not 0 < count < math.inf:
                raise LesionError(f"bad epochs {epochs!r} in recovery method {method!r}: give a positive number, "
                                  f"e.g. {first}+{name}:0.5")
        if bad:
            raise LesionError(f"unknown recovery method {method!r}: {', '.join(METHODS)}, all, or "
                              f"M+finetune[:EPOCHS] or M+distill[:EPOCHS] with M in {', '.join(FOLLOW_UPS)} "
                              "(e.g. compensate+finetune:0.5)")
    if not methods:
        raise LesionError("give at least one recovery method")
    return methods


def recover(problem: RecoveryProblem, methods: Sequence[str], budget: float = 10.0, seed: int = 0,
            geodesic_options: dict[str, Any] | None = None, compensate_options: dict[str, Any] | None = None
            ) -> tuple[dict[str, MethodResult], dict[str, torch.Tensor]]:
    """Run the chosen methods (`parse_methods`) at the same damage; returns their results and final weights. A
    combination's compute is the sum of its parts'."""
    parse_methods(",".join(methods))
    if any(m.partition("+")[0] in ("compensate", "obs") for m in methods):
        from lesion.geometry.compensate import deleted_units

        deleted_units(problem.flat.model, problem.damage, problem.x_eval[:2])  # a site it cannot fit: refused now,
        # not after the methods before it have run
    results, weights = {}, {}
    for method in methods:
        first, _, then = method.partition("+")
        result, w = _run_method(problem, first, budget, seed, geodesic_options, compensate_options)
        if then:
            name, _, epochs = then.partition(":")
            if name == "distill":
                from lesion.geometry.distill import distill

                tuned, w = distill(problem, float(epochs or DISTILL_EPOCHS), start_weights=w, seed=seed)
            else:
                tuned, w = finetune(problem, float(epochs or budget), seed, start_weights=w)
            result = MethodResult(method, tuned.accuracy, tuned.loss,
                                  result.epoch_equivalents + tuned.epoch_equivalents,
                                  result.wall_seconds + tuned.wall_seconds,
                                  details={first: result.to_dict(), name: tuned.details})
        results[method], weights[method] = result, w
    return results, weights


def _run_method(problem: RecoveryProblem, method: str, budget: float, seed: int,
                geodesic_options: dict[str, Any] | None, compensate_options: dict[str, Any] | None
                ) -> tuple[MethodResult, torch.Tensor]:
    if method == "naive":
        return naive(problem), problem.w0 * problem.mask
    if method == "geodesic":
        return geodesic_best(problem, seeds=(seed,), **(geodesic_options or {}))
    if method == "geodesic-running":  # issue 15 item 3: a running metric, the path judged on labelled inputs
        options = {**(geodesic_options or {}), "window": RUNNING_WINDOW}
        return geodesic_best(problem, seeds=(seed,), choose="validation", name="geodesic-running", **options)
    if method == "finetune":
        return finetune(problem, budget, seed)
    if method == "prune-retrain":
        rounds = min(10, len(problem.damage.units))
        return prune_retrain(problem, rounds, budget / rounds, seed)
    if method == "obs-metric":
        return obs_metric(problem, seed=seed)
    if method == "distill":
        from lesion.geometry.distill import distill

        return distill(problem, DISTILL_EPOCHS, seed=seed)
    from lesion.geometry.compensate import compensate

    options = dict(compensate_options or {})
    if method == "obs":  # layer-wise OBS: its own damping, the calibration inputs of compensation
        options = {"calibration": options.get("calibration", 256), "ridge": OBS_DAMPING, "fit": "obs"}
    return compensate(problem, **options)


def transitions(problem: RecoveryProblem, stages: Sequence[tuple[str, torch.Tensor]], **options: Any
                ) -> list[dict[str, Any]]:
    """Move a network through mask configurations ([G] Fig. 4F): each stage is (label, keep mask) — 0 where a
    weight is deleted in that configuration. Deleted weights go to 0, restored ones back to their trained
    values, along geodesic paths, with the naive jump (set the weights at once) beside each stage."""
    w = problem.w0.clone()
    keep_now = torch.ones_like(w)
    out = []
    for label, keep in stages:
        keep = keep.to(w.dtype)
        changed = (keep != keep_now).to(w.dtype)
        target = problem.w0 * keep
        result, w = geodesic(problem, start=w, selected=changed, target=target, **options)
        naive_w = problem.w0 * keep
        out.append({"stage": label, "deleted_weights": int((keep == 0).sum()), "changed_weights": int(changed.sum()),
                    "geodesic": result.to_dict(), "naive_accuracy": problem.evaluate(naive_w)[0]})
        keep_now = keep
    return out
