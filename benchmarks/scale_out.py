"""Benchmark: exact Omega f = 1..5 on the 60,000-input benchmark net, locally and on 1 and 2 Ray workers.

The net and inputs of benchmarks/omega.py (784-48-10 ReLU, trained 2 epochs on Fashion-MNIST, its 60,000
training inputs). Runs: the local engine with one thread; a local Ray cluster with 1 worker (one thread) and
with 2 workers (one thread each), each worker evaluating 2,048-input steps into its own accumulator, merged by
the driver in step order. Prints the seconds, the Ray overhead at one worker (Ray 1 worker / local − 1), the
2-worker speed-up over 1 worker, checks that every figure equals the local one to the bit, and projects the
time of f = 8 on 48 units (C(48, 8) sets × 60,000 inputs) on a 64-node cluster from the measured rate per worker.
Then f = `--ranged-faults` (default 6: C(48, 6) = 12.3 M sets, more than one step's 4.2 M) on the first
`--ranged-inputs` inputs, locally and on 2 workers: its steps cover ranges of sets sharing a prefix
(`lesion.crash.additive.prefix_groups`), so a step ships at most 32 MiB of per-set sums and the driver holds one
range at a time; prints the steps, the rate against the all-sets path's, and the equality of the figures.

Run: `.venv/bin/python benchmarks/scale_out.py [--max-faults 5] [--cores-per-node 32] [--ranged-faults 6]
[--ranged-inputs 4096]` (needs `pip install ray`, which `make install` does).
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("LESION_NO_PROGRESS", "1")

import torch  # noqa: E402

from lesion.crash import CrashBudget, exact_omega, mlp_structure  # noqa: E402
from lesion.crash.additive import prefix_groups  # noqa: E402
from lesion.crash.omega import ADDITIVE_BLOCK, ADDITIVE_STEP_SETS  # noqa: E402
from lesion.data import load  # noqa: E402
from lesion.nets import build_net  # noqa: E402
from lesion.scale.ray_executor import RayPool  # noqa: E402
from lesion.train import TrainSettings, train  # noqa: E402

FIGURES = ("omega_av", "omega_std", "omega_mav", "omega_max", "omega_worst_set", "worst_set")


def timed_runs(structure, x, max_faults: int, pool: RayPool | None) -> tuple[float, list]:
    results, start = [], time.perf_counter()
    for f in range(1, max_faults + 1):
        results.append(exact_omega(structure, x, CrashBudget((1,), (48,), f), time_limit=None, executor=pool))
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-faults", type=int, default=5)
    parser.add_argument("--cores-per-node", type=int, default=32, help="for the f = 8 projection")
    parser.add_argument("--nodes", type=int, default=64, help="for the f = 8 projection")
    parser.add_argument("--ranged-faults", type=int, default=6, help="f of the run by ranges of sets (0: skip)")
    parser.add_argument("--ranged-inputs", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load("fashion-mnist")
    model, _ = build_net("mlp1-48", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=2, seed=0, batch_size=128))
    model.eval()
    structure, x = mlp_structure(model), data.x_train
    pairs = sum(math.comb(48, f) for f in range(1, args.max_faults + 1)) * len(x)
    exact_omega(structure, x[:2048], CrashBudget((1,), (48,), 2), time_limit=None)  # compile the kernels
    print(f"mlp1-48 on fashion-mnist, {len(x):,} inputs, f = 1..{args.max_faults}: {pairs:,} (set, input) pairs")
    t_local, local = timed_runs(structure, x, args.max_faults, None)
    print(f"local engine, 1 thread: {t_local:.1f} s ({pairs / t_local:,.0f} pairs/s)")
    seconds = {}
    for workers in (1, 2):
        pool = RayPool(workers=workers)
        try:
            seconds[workers], remote = timed_runs(structure, x, args.max_faults, pool)
        finally:
            pool.close()
        same = all(getattr(a, k) == getattr(b, k) for a, b in zip(local, remote, strict=True) for k in FIGURES)
        print(f"Ray, {workers} worker(s) × 1 thread: {seconds[workers]:.1f} s ({pairs / seconds[workers]:,.0f} "
              f"pairs/s); every figure equal to the local run's: {same}")
    print(f"Ray overhead at 1 worker: {seconds[1] / t_local - 1:+.1%} (target ≤ 15%); 2 workers against 1: "
          f"{seconds[1] / seconds[2]:.2f}x (target ≥ 1.6x)")
    per_worker = pairs / seconds[1]
    f8 = math.comb(48, 8) * len(x)
    workers = args.nodes * args.cores_per_node
    print(f"projection: f = 8 ({math.comb(48, 8):,} sets × {len(x):,} inputs = {f8:.3g} pairs) on {args.nodes} "
          f"nodes × {args.cores_per_node} cores at the measured {per_worker:,.0f} pairs/s per worker: "
          f"{f8 / per_worker / workers:.1f} s ({f8 / per_worker / 3600:.1f} hours on one worker); its steps cover "
          f"ranges of at most {ADDITIVE_STEP_SETS:,} sets ({ADDITIVE_STEP_SETS * 8 / 2**20:.0f} MiB of sums), "
          f"{math.ceil(math.comb(48, 8) / ADDITIVE_STEP_SETS)}+ ranges × {math.ceil(len(x) / ADDITIVE_BLOCK)} "
          "input blocks")
    if args.ranged_faults:
        ranged(structure, x[:args.ranged_inputs], args.ranged_faults, per_worker)


def ranged(structure, x, f: int, all_sets_rate: float) -> None:
    """f with more sets than one step holds: steps over ranges of sets, locally and on 2 Ray workers."""
    budget = CrashBudget((1,), (48,), f)
    groups = prefix_groups(48, f, ADDITIVE_STEP_SETS)
    pairs = budget.count() * len(x)
    start = time.perf_counter()
    local = exact_omega(structure, x, budget, time_limit=None)
    t_local = time.perf_counter() - start
    pool = RayPool(workers=2)
    try:
        start = time.perf_counter()
        remote = exact_omega(structure, x, budget, time_limit=None, executor=pool)
        t_remote = time.perf_counter() - start
    finally:
        pool.close()
    same = all(getattr(local, k) == getattr(remote, k) for k in FIGURES)
    largest = max(g.count for g in groups)
    print(f"f = {f} on {len(x):,} inputs: {budget.count():,} sets in {len(groups)} ranges by a "
          f"{len(groups[0].prefixes[0])}-unit prefix (largest {largest:,} sets, {largest * 8 / 2**20:.0f} MiB of "
          f"sums a step), × {math.ceil(len(x) / ADDITIVE_BLOCK)} input blocks; local 1 thread {t_local:.1f} s "
          f"({pairs / t_local:,.0f} pairs/s, {pairs / t_local / all_sets_rate:.2f}x the all-sets rate per worker "
          f"above); Ray 2 workers {t_remote:.1f} s ({t_local / t_remote:.2f}x local); every figure equal: {same}")


if __name__ == "__main__":
    main()
