"""The executor seam (issue 18, item 1): where a campaign's shards of samples are evaluated.

A shard is a run of consecutive sample indices, `batch` of them (the campaign's evaluation batch, so that a
shard is evaluated exactly as a single process evaluates that batch and the numbers are the same to the bit on
the same hardware and thread count). An executor yields the shards' samples in index order; the campaign
merges them and applies its stopping rule, so a run stops where a single process would.

`--executor local` (default) evaluates the shards here, one after the other; `--executor ray[:ADDRESS]` on a Ray
cluster (`lesion.scale.ray_executor`). Both skip shards a `ShardStore` already holds and record the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lesion.errors import LesionError
from lesion.scale.store import ShardStore

if TYPE_CHECKING:
    from lesion.damage.campaign import Campaign, SampleResult


@dataclass
class ExecutionStats:
    """What an executor did, for the JSON provenance (`executor`, `workers`, `shards`, `retries`)."""

    executor: str = "local"
    workers: int = 1
    shards: int = 0
    resumed: int = 0
    retries: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


def shard_starts(done: int, goal: int, batch: int) -> list[int]:
    """First indices of the shards from sample `done` to `goal`."""
    return list(range(done, goal, batch))


def as_records(samples: list[SampleResult]) -> list[dict[str, Any]]:
    """Samples as plain dicts (what a store keeps and a worker returns)."""
    return [dict(s.__dict__) for s in samples]


def from_records(records: list[dict[str, Any]]) -> list[SampleResult]:
    """Samples back from plain dicts."""
    from lesion.damage.campaign import SampleResult

    return [SampleResult(**{**r, "faults": tuple(r["faults"])}) for r in records]


class LocalExecutor:
    """Shards evaluated in this process, in order."""

    def __init__(self) -> None:
        self.stats = ExecutionStats()

    def samples(self, campaign: Campaign, goal: int, batch: int, store: ShardStore | None
                ) -> Iterator[list[SampleResult]]:
        """The samples from `len(campaign.samples)` to `goal`, a shard at a time, in order."""
        for start in shard_starts(len(campaign.samples), goal, batch):
            stored = store.get(start, min(goal, start + batch)) if store is not None else None
            if stored is not None:
                self.stats.resumed += 1
                yield from_records(stored)
                continue
            shard = campaign.evaluate_range(start, min(goal, start + batch))
            self.stats.shards += 1
            if store is not None:
                store.put(start, as_records(shard))
            yield shard

    def close(self) -> None:
        """Nothing to release."""


def executor_for(text: str | None, workers: int | None = None, gpus_per_task: float = 0.0,
                 threads: int = 1) -> Any:
    """The executor `--executor` names: `local` (or None), `ray` (a local Ray cluster, or the one `ray start`
    made) or `ray:ADDRESS` (`auto`, or host:port of a cluster's head)."""
    if text in (None, "", "local"):
        if gpus_per_task:
            raise LesionError("--gpus-per-task goes with --executor ray")
        return LocalExecutor()
    kind, _, address = text.partition(":")
    if kind != "ray":
        raise LesionError(f"unknown executor {text!r}: use local, ray or ray:ADDRESS")
    from lesion.scale.ray_executor import RayExecutor

    return RayExecutor(address or None, workers, gpus_per_task, threads)
