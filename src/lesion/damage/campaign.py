"""Fault campaigns with statistics (issue "Damage engine", item 4; SPEC §4).

A campaign draws damage configurations from descriptions, evaluates them in vectorised batches, and
reports accuracy, loss and output error with 95% intervals: Student-t intervals over configurations for
means, a Wilson interval for the failure rate (share of configurations whose accuracy falls more than
`tolerance` below clean). It runs a fixed number of samples, or stops once the interval on the mean
accuracy (mean output error without labels) is no wider than a target. Sample i is drawn from its own seed,
derived from (campaign seed, i), so results are reproducible and any sample can be replayed alone; the fault
list (descriptions, seeds and fault records) can be saved and replayed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lesion import progress
from lesion.damage.apply import batched_damaged_outputs
from lesion.damage.clean_chain import CleanChain
from lesion.damage.kinds import Damage, realise_each
from lesion.damage.spec import parse_damage
from lesion.damage.target import Target
from lesion.digests import tensor_digest
from lesion.errors import LesionError
from lesion.functional import forward_with
from lesion.nets.loading import model_digest
from lesion.nets.outputs import as_rows, class_indices, flat_labels
from lesion.report.jsonio import to_jsonable, write_json
from lesion.stats import (
    RunningMean,
    bootstrap_mean_interval,
    clipped_interval,
    heavy_tailed_summary,
    sample_size_for_mean,
    wilson_interval,
)
from lesion.train import evaluate_outputs

FAULT_LIST_FORMAT = "lesion-fault-list"


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a campaign seeded with `seed` (numpy SeedSequence of the pair)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


_U32 = 0xFFFFFFFF


def sample_seeds(seed: int, indices: Sequence[int]) -> list[int]:
    """`sample_seed(seed, i)` for every index at once: numpy's SeedSequence hash (pool of four 32-bit words,
    entropy [seed, i]) computed array-wide, the same numbers (tested); one pair at a time where seed or an index
    does not fit in 32 bits (more entropy words)."""
    if not indices or not 0 <= seed <= _U32 or min(indices) < 0 or max(indices) > _U32:
        return [sample_seed(seed, i) for i in indices]
    u32 = np.uint32
    hash_const = 0x43B0D7E5

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_const
        value = value ^ u32(hash_const)
        hash_const = (hash_const * 0x931E8875) & _U32
        value = value * u32(hash_const)
        return value ^ (value >> u32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = u32(0xCA01F9DD) * x - u32(0x4973F715) * y
        return result ^ (result >> u32(16))

    n = len(indices)
    with np.errstate(over="ignore"):
        entropy = [np.full(n, seed, dtype=u32), np.asarray(indices, dtype=np.uint64).astype(u32),
                   np.zeros(n, u32), np.zeros(n, u32)]
        pool = [hashmix(e) for e in entropy]
        for src in range(4):
            for dst in range(4):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        const, words = 0x8B51F9DD, []
        for word in pool[:2]:  # generate_state(1, uint64): two 32-bit words, little end first
            word = word ^ u32(const)
            const = (const * 0x58F38DED) & _U32
            word = word * u32(const)
            words.append((word ^ (word >> u32(16))).astype(np.uint64))
        return ((words[0] | (words[1] << np.uint64(32))) >> np.uint64(1)).tolist()


def fails(accuracy: float, clean: float, tolerance: float) -> bool:
    """Whether a configuration fails: its accuracy more than `tolerance` below the clean accuracy. A drop of
    exactly the tolerance does not count, though floating point can make it a hair more (clean 0.20, damaged 0.15,
    tolerance 0.05: 0.20 − 0.05 rounds above 0.15); accuracies are counts over inputs, far apart from 1e-9."""
    return clean - accuracy > tolerance + 1e-9


@dataclass(frozen=True)
class SampleResult:
    """One damage configuration: its seed, fault record and measured figures."""

    index: int
    seed: int
    faults: tuple[dict[str, Any], ...]
    output_error: float
    accuracy: float | None = None
    loss: float | None = None


def per_sample_metrics(outputs: torch.Tensor, clean: torch.Tensor, y: torch.Tensor | None
                       ) -> tuple[float, float | None, float | None]:
    """(mean over inputs of ‖F_damaged − F‖_∞ (SPEC §2.1 default norm), accuracy, cross-entropy) of one
    configuration (`batch_metrics` of one)."""
    error, accuracy, loss = batch_metrics(outputs.unsqueeze(0), clean, y)
    return float(error[0]), None if accuracy is None else float(accuracy[0]), None if loss is None else float(loss[0])


def batch_metrics(outputs: torch.Tensor, clean: torch.Tensor, y: torch.Tensor | None
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per configuration of `outputs` (configurations, inputs, classes): mean over inputs of ‖F_damaged − F‖_∞
    (SPEC §2.1 default norm), accuracy and cross-entropy. Differences and log-probabilities are computed in the
    model's dtype (float32 for a float16 or bfloat16 model: a difference of two finite half-precision outputs
    can overflow), means accumulated in float64; an input whose damaged outputs are not finite counts as
    misclassified and makes the loss non-finite (inf for an infinite logit of a wrong class, else NaN)."""
    if outputs.dtype in (torch.float16, torch.bfloat16):
        outputs, clean = outputs.float(), clean.float()
    # class-major copies: reductions over a short class axis are ten times faster as a leading axis
    by_class = outputs.permute(2, 0, 1).contiguous()  # (classes, configurations, inputs)
    scratch = torch.sub(by_class, clean.T.contiguous().unsqueeze(1))  # one working tensor, reused below
    per_input = scratch.abs_().amax(dim=0)
    error = per_input.double().mean(dim=1).cpu().numpy()
    if y is None:
        return error, None, None
    y = flat_labels(y).to(outputs.device)
    # with finite clean outputs, the largest difference is NaN or inf exactly where an output is not finite
    finite = torch.isfinite(per_input) if bool(torch.isfinite(clean).all()) else torch.isfinite(by_class).all(dim=0)
    top = by_class.amax(dim=0)
    picked = by_class.gather(0, y.view(1, 1, -1).expand(1, len(outputs), -1)).squeeze(0)
    # argmax == y: the true class reaches the top and no class before it does (argmax takes the first maximum)
    before = torch.arange(len(by_class), device=y.device).view(-1, 1, 1) < y.view(1, 1, -1)
    torch.where(before, by_class, torch.tensor(-math.inf, dtype=by_class.dtype, device=y.device), out=scratch)
    correct = (picked == top) & (scratch.amax(dim=0) < top) & finite
    shift = torch.where(top.isinf(), torch.zeros((), dtype=top.dtype, device=top.device), top)  # as logsumexp
    log_sum = torch.sub(by_class, shift, out=scratch).exp_().sum(dim=0).log_().add_(shift)
    loss = (log_sum - picked).double().mean(dim=1)  # cross-entropy, input by input
    return error, correct.double().mean(dim=1).cpu().numpy(), loss.cpu().numpy()


def _require_tensor_outputs(model: nn.Module, x: torch.Tensor) -> None:
    """LesionError unless the model returns a tensor (a Hugging Face model returns a ModelOutput, a tuple or dict
    of tensors elsewhere): `lesion.nets.prepare_model` picks the logits, as the CLI does."""
    from lesion.functional import eval_mode

    if isinstance(model, torch.jit.ScriptModule):
        return
    with torch.no_grad(), eval_mode(model):
        out = model(x[:1])
    if not isinstance(out, torch.Tensor):
        raise LesionError(f"the model returns a {type(out).__name__}, not a tensor: pass "
                          "lesion.nets.prepare_model(model, x)[0], which reads its logits (as the CLI does)")


@dataclass(frozen=True)
class CampaignResult:
    """A campaign's figures, its samples and how it ended."""

    damage: tuple[str, ...]
    seed: int
    inputs: int
    clean_accuracy: float | None
    samples: tuple[SampleResult, ...]
    accuracy: dict[str, Any] | None
    loss: dict[str, Any] | None
    output_error: dict[str, Any]
    failure_rate: dict[str, Any] | None
    target_width: float | None = None
    target_met: bool | None = None
    planned_samples: int | None = None
    model_digest: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        """JSON-able form (the per-sample list is optional)."""
        out = {k: v for k, v in self.__dict__.items() if k != "samples"}
        out["n_samples"] = len(self.samples)
        if with_samples:
            out["samples"] = [s.__dict__ for s in self.samples]
        return to_jsonable(out)


class Campaign:
    """Draws, evaluates and summarises damage configurations of one model on fixed inputs."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, damages: Sequence[Damage],
                 seed: int = 0, tolerance: float = 0.05, protected: dict[str, frozenset[int]] | None = None
                 ) -> None:
        if not damages:
            raise LesionError("a campaign needs at least one --damage")
        _require_tensor_outputs(model, x)
        self.model, self.x = model, x
        self.damages = list(damages)
        self.seed, self.tolerance = seed, tolerance
        self.target = Target(model, example=x[:2], inputs=x, protected=dict(protected or {}))
        realise_each(self.target, self.damages, [seed])  # a description that names nothing fails here, in one line
        self.chain = CleanChain.of(model, x)  # the clean activations, once for the whole campaign
        self.clean = as_rows(self.chain.output) if self.chain is not None \
            else forward_with(model, self.target.base, x)
        self.y = y = None if y is None else class_indices(y, self.clean)
        self.clean_accuracy = None if y is None else evaluate_outputs(self.clean, y).accuracy
        self.samples: list[SampleResult] = []
        self.execution: Any = None  # what the last run's executor did (lesion.scale.executor.ExecutionStats)

    def evaluate_range(self, start: int, stop: int) -> list[SampleResult]:
        """Samples start … stop − 1 (each from its own seed), evaluated as one batch."""
        indices = list(range(start, stop))
        return self._evaluate(indices, sample_seeds(self.seed, indices))

    def evaluate(self, indices: Sequence[int], protected: dict[str, frozenset[int]] | None = None
                 ) -> list[SampleResult]:
        """Samples `indices` (each from its own seed) evaluated as one batch; with `protected`, drawn with those
        bits protected instead of the campaign's own (the same draws less those flips: `lesion protect`'s
        causal check). The campaign's samples are left as they are."""
        indices = [int(i) for i in indices]
        saved = self.target.protected
        if protected is not None:
            self.target.protected = dict(protected)
        try:
            return self._evaluate(indices, sample_seeds(self.seed, indices)) if indices else []
        finally:
            self.target.protected = saved

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same campaign (a checkpoint of finished shards is bound to it): the damage,
        seed, weights, protection, the inputs and labels themselves (not only their count) and the clean outputs
        (which see the architecture and the output read: the same weights behind another activation differ)."""
        return {"damage": [d.spec() for d in self.damages], "seed": self.seed, "model": model_digest(self.model),
                "inputs": len(self.x), "protected": {n: sorted(b) for n, b in sorted(self.target.protected.items())},
                "data": tensor_digest(self.x, self.y), "clean": tensor_digest(self.clean)}

    def _evaluate(self, indices: Sequence[int], seeds: Sequence[int]) -> list[SampleResult]:
        configs = realise_each(self.target, self.damages, seeds)
        outputs = batched_damaged_outputs(self.model, configs, self.x, desc="configurations", chain=self.chain,
                                          class_major=True)
        for k, config in enumerate(configs):
            if config.undamaged:  # exactly the clean outputs (a second clean forward differs in rounding)
                outputs[k] = self.clean
        errors, accuracies, losses = batch_metrics(outputs, self.clean, self.y)
        return [SampleResult(index, seed, config.faults, float(errors[k]),
                             None if accuracies is None else float(accuracies[k]),
                             None if losses is None else float(losses[k]))
                for k, (index, seed, config) in enumerate(zip(indices, seeds, configs, strict=True))]

    def run(self, samples: int | None = None, ci_width: float | None = None, batch: int | None = None,
            max_samples: int = 10_000, min_samples: int = 30, executor: Any = None,
            checkpoint: str | Path | None = None) -> CampaignResult:
        """`samples` configurations, or as many as it takes for a `ci_width` interval (at most `max_samples`),
        drawn and evaluated `batch` at a time (default 64), by `executor` (`lesion.scale`: this process by
        default, or a Ray cluster: the same numbers), skipping the batches a `checkpoint` file holds and
        recording the others there."""
        from lesion.scale.executor import LocalExecutor
        from lesion.scale.store import ShardStore

        batch = batch or 64
        if (samples is None) == (ci_width is None):
            raise LesionError("give either a number of samples or a target interval width")
        if samples is not None and samples < 1:
            raise LesionError(f"a campaign needs at least 1 sample, got {samples}")
        if ci_width is not None and not ci_width > 0:
            raise LesionError(f"the target interval width must be positive, got {ci_width}")
        goal = samples if samples is not None else max_samples
        planned = None
        executor = executor or LocalExecutor()
        store = ShardStore(checkpoint, self.identity()) if checkpoint is not None else None
        shards = executor.samples(self, goal, batch, store)
        try:
            with progress.bar(goal, "campaign", "config") as bar:
                for shard in shards:
                    self.samples.extend(shard)
                    bar.update(len(shard))
                    if ci_width is not None:
                        watched = self._watched()
                        if watched.n >= 2:
                            planned = max(min_samples, sample_size_for_mean(watched.sd, ci_width))
                            bar.total = min(max_samples, max(planned, len(self.samples)))
                        if watched.n >= min_samples and self._width_met(watched, ci_width):
                            break
        finally:
            shards.close()  # an executor stops its work in flight
        self.execution = executor.stats
        return self.result(ci_width, planned)

    def _width_met(self, watched: RunningMean, ci_width: float) -> bool:
        """Whether the interval the result reports for the watched quantity is no wider than `ci_width`: the
        accuracy's Student-t interval (reported clipped to [0, 1], never wider); without labels, the mean output
        error's bootstrap interval as well (`heavy_tailed_summary` reports that one, and it can be the wider)."""
        if watched.width() > ci_width:
            return False
        if self.y is not None:
            return True
        finite = [s.output_error for s in self.samples if math.isfinite(s.output_error)]
        low, high = bootstrap_mean_interval(finite)
        return high - low <= ci_width

    def _watched(self) -> RunningMean:
        running = RunningMean()
        for s in self.samples:
            value = s.accuracy if self.y is not None else s.output_error
            if math.isfinite(value):  # non-finite output errors are counted apart (heavy_tailed_summary)
                running.add(value)
        return running

    def result(self, ci_width: float | None = None, planned: int | None = None) -> CampaignResult:
        """Summaries of the samples drawn so far."""
        accuracy = RunningMean.of([s.accuracy for s in self.samples] if self.y is not None else [])
        failures = 0 if self.y is None else sum(fails(s.accuracy, self.clean_accuracy, self.tolerance)
                                                for s in self.samples)
        n = len(self.samples)
        accuracy_summary = None
        if self.y is not None and n:
            accuracy_summary = accuracy.to_dict()
            accuracy_summary["ci"] = list(clipped_interval([s.accuracy for s in self.samples]))
        loss = heavy_tailed_summary([s.loss for s in self.samples]) if self.y is not None and n else None
        output_error = heavy_tailed_summary([s.output_error for s in self.samples])
        failure = None
        if self.y is not None and n:
            lo, hi = wilson_interval(failures, n)
            failure = {"rate": failures / n, "ci": [lo, hi], "failures": failures, "n": n,
                       "tolerance": self.tolerance}
        labelled = self.y is not None
        met = None if ci_width is None else self._width_met(self._watched(), ci_width)
        extra: dict[str, Any] = {}
        if self.target.protected:
            extra["protected"] = {n: sorted(b) for n, b in self.target.protected.items()}
        if self.execution is not None and (self.execution.executor != "local" or self.execution.resumed):
            extra["execution"] = self.execution.to_dict()
            if self.execution.seconds > 0:
                extra["execution"]["configurations_per_second"] = n / self.execution.seconds
        return CampaignResult(tuple(d.spec() for d in self.damages), self.seed, len(self.x), self.clean_accuracy,
                              tuple(self.samples), accuracy_summary if labelled else None, loss, output_error,
                              failure, ci_width, met, planned, model_digest(self.model), extra)


def save_fault_list(path: str | Path, result: CampaignResult) -> Path:
    """Write the campaign's damage descriptions, seed, model digest, input count, bit protection and per-sample
    seeds and fault records."""
    return write_json(path, {"format": FAULT_LIST_FORMAT, "damage": list(result.damage), "seed": result.seed,
                             "model_digest": result.model_digest, "inputs": result.inputs,
                             "protected": result.extra.get("protected", {}),
                             "samples": [{"index": s.index, "seed": s.seed, "faults": s.faults}
                                         for s in result.samples]})


def load_fault_list(path: str | Path) -> dict[str, Any]:
    """Read a fault list written by `save_fault_list`."""
    file = Path(path).expanduser()
    try:
        payload = json.loads(file.read_text())
    except FileNotFoundError as err:
        raise LesionError(f"fault list not found: {file}") from err
    except (OSError, json.JSONDecodeError) as err:
        raise LesionError(f"cannot read fault list {file}: {err}") from err
    if isinstance(payload, dict) and isinstance(payload.get("campaign"), dict) and "samples" in payload["campaign"]:
        run = payload["campaign"]  # a campaign's JSON result (`lesion campaign --json`) holds its fault list too
        return {"format": FAULT_LIST_FORMAT, "damage": run["damage"], "seed": run["seed"],
                "model_digest": run["model_digest"], "inputs": run.get("inputs"),
                "samples": [{"index": s["index"], "seed": s["seed"], "faults": s["faults"]} for s in run["samples"]]}
    if not isinstance(payload, dict) or payload.get("format") != FAULT_LIST_FORMAT:
        raise LesionError(f"{file} is neither a lesion fault list nor a campaign result with its samples")
    return payload


def replay(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, fault_list: dict[str, Any],
           tolerance: float = 0.05, protected: dict[str, frozenset[int]] | None = None) -> CampaignResult:
    """Re-run the configurations of a saved fault list with the bit protection it was drawn under (`protected`,
    or the one the list records when None); each must realise to the recorded faults."""
    recorded = {n: frozenset(b) for n, b in (fault_list.get("protected") or {}).items()}
    protected = recorded if protected is None else protected
    digest = model_digest(model)
    if fault_list["model_digest"] != digest:
        raise LesionError(f"the fault list was drawn on model {fault_list['model_digest']}, not this one ({digest}); "
                          "replay it on the same model")
    campaign = Campaign(model, x, y, [parse_damage(t) for t in fault_list["damage"]], fault_list["seed"], tolerance,
                        protected)
    entries = fault_list["samples"]
    for start in range(0, len(entries), 64):
        chunk = entries[start:start + 64]
        results = campaign._evaluate([e["index"] for e in chunk], [e["seed"] for e in chunk])
        for entry, result in zip(chunk, results, strict=True):
            if to_jsonable(list(result.faults)) != entry["faults"]:
                drawn_on = fault_list.get("inputs")
                if drawn_on is not None and drawn_on != len(x):  # faults in activations are drawn per input
                    raise LesionError(f"sample {entry['index']} realises to other faults on {len(x)} inputs than on "
                                      f"the {drawn_on} it was drawn on: replay it with --inputs {drawn_on}")
                if "protected" in fault_list and dict(protected) != recorded:
                    raise LesionError(f"sample {entry['index']} realises to other faults under another bit "
                                      "protection than the one it was drawn under: replay it without --protect")
                raise LesionError(f"sample {entry['index']} no longer realises to its recorded faults: the list "
                                  "was edited, or saved by a lesion older than 2026-12-03 (random bit flips were "
                                  "drawn differently then: run the campaign again)")
        campaign.samples.extend(results)
    return campaign.result()


