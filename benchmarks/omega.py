"""Benchmark: exact Omega for a 784-48-10 ReLU MLP on the 60,000 Fashion-MNIST training inputs, f = 1..5.

About 1.2e11 (crash set, input) pairs ([R] reports two months for this at 50 µs each). lesion's additive
engine (exact, float64) against the per-set batched forward pass measured in the same run: for a crash set,
one float32 forward of all 60,000 inputs through the network with the crashed units zeroed, then the norm.

Run: `.venv/bin/python benchmarks/omega.py [--max-faults 5] [--baseline-sets 20] [--activation sigmoid]`
(a sigmoid hidden layer is never exactly zero: no silent units to skip, the engine's dense case).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time

os.environ.setdefault("LESION_NO_PROGRESS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lesion.crash import CrashBudget, exact_omega, mlp_structure  # noqa: E402
from lesion.crash.additive import silent_per_block  # noqa: E402
from lesion.crash.omega import ADDITIVE_BLOCK  # noqa: E402
from lesion.crash.structure import hidden_activations  # noqa: E402
from lesion.data import load  # noqa: E402
from lesion.nets import build_net  # noqa: E402
from lesion.train import TrainSettings, evaluate, train  # noqa: E402


def per_set_forward_rate(model: torch.nn.Module, x: torch.Tensor, sets: int, f: int) -> tuple[float, float]:
    """Pairs per second of the baseline (in the model's and the inputs' precision), and its mean d over the
    sets it ran (a sanity figure)."""
    rng = np.random.default_rng(0)
    with torch.no_grad():
        clean = model(x)
        start = time.perf_counter()
        total = 0.0
        for _ in range(sets):
            crashed = rng.choice(48, size=f, replace=False)
            damaged = copy.deepcopy(model)
            damaged.out.weight[:, crashed] = 0.0
            total += float((damaged(x) - clean).abs().amax(dim=1).double().mean())
        seconds = time.perf_counter() - start
    return sets * len(x) / seconds, total / sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-faults", type=int, default=5)
    parser.add_argument("--baseline-sets", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--activation", choices=("relu", "sigmoid"), default="relu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load("fashion-mnist")
    model, _ = build_net("mlp1-48", data.input_shape, 10, seed=0, activation=args.activation)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=2, seed=0, batch_size=128))
    model.eval()
    x = data.x_train
    accuracy = evaluate(model, data.x_test, data.y_test).accuracy
    print(f"mlp1-48 (784-48-10 {args.activation}), trained 2 epochs on fashion-mnist (test accuracy {accuracy:.4f}); "
          f"{len(x):,} training inputs; {args.threads} threads")
    rate_base, _ = per_set_forward_rate(model, x, args.baseline_sets, 5)
    print(f"baseline per-set batched forward, float32: {rate_base:,.0f} pairs/s "
          f"({len(x) / rate_base * 1e3:.1f} ms per set)")
    rate_base64, _ = per_set_forward_rate(copy.deepcopy(model).double(), x.double(), args.baseline_sets, 5)
    print(f"baseline per-set batched forward, float64 (the engine's precision): {rate_base64:,.0f} pairs/s "
          f"({len(x) / rate_base64 * 1e3:.1f} ms per set)")
    structure = mlp_structure(model)
    hidden = hidden_activations(structure, x)[0].numpy()
    silent = [count for _, count in silent_per_block(hidden, ADDITIVE_BLOCK)]
    print(f"hidden units silent (zero) on a whole {ADDITIVE_BLOCK:,}-input block: mean {np.mean(silent):.1f} of 48 "
          f"(from {min(silent)} to {max(silent)}; {int((hidden == 0).all(axis=0).sum())} on every input); active "
          f"per input: mean {float((hidden > 0).sum(axis=1).mean()):.1f}")
    header = ("f", "sets", "pairs", "seconds", "Omega_av", "Omega_std", "Omega_mav", "Omega_max", "Omega_worst")
    print("{:>2} {:>9} {:>16} {:>8} {:>10} {:>10} {:>10} {:>10} {:>11}".format(*header))
    total_pairs, total_seconds = 0, 0.0
    for f in range(1, args.max_faults + 1):
        budget = CrashBudget((1,), (48,), f)
        start = time.perf_counter()
        r = exact_omega(structure, x, budget, time_limit=None)
        seconds = time.perf_counter() - start
        pairs = math.comb(48, f) * len(x)
        total_pairs += pairs
        total_seconds += seconds
        print(f"{f:>2} {r.sets:>9,} {pairs:>16,} {seconds:>8.1f} {r.omega_av:>10.5f} {r.omega_std:>10.5f} "
              f"{r.omega_mav:>10.5f} {r.omega_max:>10.5f} {r.omega_worst_set:>11.5f}")
    rate = total_pairs / total_seconds
    print(f"total {total_pairs:,} pairs in {total_seconds:.1f} s: {rate:,.0f} pairs/s; ratio to the per-set "
          f"forward {rate / rate_base:,.0f}x (float32), {rate / rate_base64:,.0f}x (float64)")


if __name__ == "__main__":
    main()
