"""Campaign shards on a Ray cluster (issue 18, items 1–4).

One actor per worker holds the model, the inputs and the campaign's description (shipped once through Ray's
object store) and evaluates shards of samples on request; the driver keeps every worker busy with two shards,
merges the results in index order, and records each finished shard in the `ShardStore` when there is one. A
worker that dies (its process killed, its node lost) loses only its shards in flight: the driver starts a new
actor in its place and submits them again, counting a retry each; results are keyed by shard, so nothing is
counted twice. Ray is an optional dependency (`pip install 'lesion[ray]'`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from lesion.errors import LesionError
from lesion.scale.executor import ExecutionStats, as_records, from_records, shard_starts
from lesion.scale.store import ShardStore

if TYPE_CHECKING:
    from lesion.damage.campaign import Campaign, SampleResult

IN_FLIGHT = 2  # shards queued per worker: one computing, one waiting
MAX_TRIES = 3  # a shard that kills this many workers in a row is failing, not unlucky


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise LesionError("--executor ray needs Ray: pip install 'lesion[ray]' (or pip install ray)") from err
    return ray


class _Worker:
    """A campaign on one worker (a Ray actor): its own copy of the model and inputs, evaluating shards."""

    def __init__(self, model: Any, x: Any, y: Any, damages: list[Any], seed: int, tolerance: float,
                 protected: dict[str, frozenset[int]], threads: int) -> None:
        import torch

        from lesion.damage.campaign import Campaign

        torch.set_num_threads(threads)
        os.environ.setdefault("LESION_NO_PROGRESS", "1")
        self.campaign = Campaign(model, x, y, damages, seed, tolerance, protected)

    def pid(self) -> int:
        """The worker's process id."""
        return os.getpid()

    def evaluate(self, start: int, stop: int) -> list[dict[str, Any]]:
        """The samples start … stop − 1, as plain records."""
        return as_records(self.campaign.evaluate_range(start, stop))


class RayPool:
    """Ray actors built from one class and its arguments (shipped once through the object store), and calls
    of one of their methods on many items whose results come back in item order (module docstring)."""

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_task: float = 0.0,
                 threads: int = 1, on_result: Callable[[RayPool, int], None] | None = None) -> None:
        ray = self.ray = _ray()
        self.owns_cluster = not ray.is_initialized()
        if self.owns_cluster:
            try:
                ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise LesionError(f"cannot reach a Ray cluster at {address or 'a new local one'}: {err}") from err
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.threads, self.gpus = threads, gpus_per_task
        self.workers = workers or max(1, cpus // threads)
        self.on_result = on_result
        self.actors: list[Any] = []
        self.stats = ExecutionStats(f"ray:{address}" if address else "ray", self.workers)
        self._remote: Any = None
        self._args: tuple[Any, ...] = ()
        self._job: tuple[Any, ...] = ()

    def start(self, worker_class: type, args: tuple[Any, ...], needed: int) -> None:
        """Start min(workers, needed) actors of `worker_class(*args, threads)` (arguments put in the object
        store once), in place of the actors of an earlier job; actors built from the same class and the very
        same argument objects are kept (their processes keep what they compiled and cached)."""
        job = (worker_class, tuple(id(a) for a in args))
        if self.actors and job == self._job:
            return
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors, self._job = [], job
        if not needed:
            return
        try:
            refs = tuple(self.ray.put(a) for a in args)
        except Exception as err:  # noqa: BLE001 - what pickling a user's model raises varies
            raise LesionError(f"cannot send the model to Ray workers: {type(err).__name__}: {err}") from err
        self._remote = self.ray.remote(num_cpus=self.threads, num_gpus=self.gpus)(worker_class)
        self._args = (*refs, self.threads)
        self.actors = [self._remote.remote(*self._args) for _ in range(min(self.workers, needed))]

    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests that kill one)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def ordered(self, method: str, items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """(item, `method(*item)` on some worker) for every item, in the order of `items` (read lazily, a few
        ahead of the results); a worker that dies is replaced and its items in flight submitted again (a retry
        each)."""
        ray = self.ray
        started = time.perf_counter()
        source = iter(items)
        pulled: dict[int, Any] = {}
        retry: list[int] = []
        flight: dict[Any, tuple[int, int]] = {}
        done: dict[int, Any] = {}
        failures: dict[int, int] = {}
        exhausted, count = False, 0

        def next_index() -> int | None:
            nonlocal exhausted, count
            if retry:
                return retry.pop(0)
            if exhausted:
                return None
            try:
                pulled[count] = next(source)
            except StopIteration:
                exhausted = True
                return None
            count += 1
            return count - 1

        def submit() -> None:
            for slot, actor in enumerate(self.actors):
                while sum(1 for _, a in flight.values() if a == slot) < IN_FLIGHT:
                    k = next_index()
                    if k is None:
                        return
                    flight[getattr(actor, method).remote(*pulled[k])] = (k, slot)

        try:
            k = 0
            while True:
                while k not in done:
                    submit()
                    if not flight:
                        return
                    ready, _ = ray.wait(list(flight), num_returns=1)
                    index, slot = flight.pop(ready[0])
                    try:
                        done[index] = ray.get(ready[0])
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                        self.stats.retries += 1
                        failures[index] = failures.get(index, 0) + 1
                        if failures[index] > MAX_TRIES:  # not a lost worker: the work itself fails
                            raise LesionError(f"item {index} of this job failed on {failures[index]} workers in "
                                              f"a row; the last said: {str(err).strip().splitlines()[-1]}") from err
                        lost = [f for f, (_, a) in flight.items() if a == slot]
                        retry[:0] = sorted([index, *(flight.pop(f)[0] for f in lost)])
                        self.actors[slot] = self._remote.remote(*self._args)
                        continue
                    self.stats.shards += 1
                    if self.on_result is not None:
                        self.on_result(self, index)
                yield pulled.pop(k), done.pop(k)
                k += 1
        finally:
            self.stats.seconds += time.perf_counter() - started
            for f in flight:
                ray.cancel(f)

    def close(self) -> None:
        """Stop the workers, and the local cluster this pool started."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.owns_cluster:
            self.ray.shutdown()


class RayExecutor(RayPool):
    """A campaign's shards on Ray actors holding the campaign (`_Worker`)."""

    def samples(self, campaign: Campaign, goal: int, batch: int, store: ShardStore | None
                ) -> Iterator[list[SampleResult]]:
        """The samples from `len(campaign.samples)` to `goal`, a shard at a time, in index order."""
        starts = shard_starts(len(campaign.samples), goal, batch)
        stored = {s: store.get(s, min(goal, s + batch)) for s in starts} if store is not None else {}
        stored = {s: r for s, r in stored.items() if r is not None}
        self.stats.resumed += len(stored)
        todo = [(s, min(goal, s + batch)) for s in starts if s not in stored]
        self.start(_Worker, (campaign.model, campaign.x, campaign.y, campaign.damages, campaign.seed,
                             campaign.tolerance, dict(campaign.target.protected)), len(todo))
        computed = self.ordered("evaluate", todo)
        try:
            for start in starts:
                if start in stored:
                    yield from_records(stored[start])
                    continue
                (_, _), records = next(computed)
                if store is not None:
                    store.put(start, records)
                yield from_records(records)
        finally:
            computed.close()
