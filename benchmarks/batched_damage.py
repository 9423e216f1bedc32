"""Benchmark: many damage configurations in one vectorised pass versus one model copy per configuration.

1,000 random damage configurations of LeNet-300-100 (mlp2) evaluated on the 1,000 mnist5k test inputs:
- baseline: for each configuration, copy the model, write the damaged weights into the copy (or register a
  hook that crashes the units), run the 1,000 inputs in one batch;
- lesion: `batched_damaged_outputs` (vmap over stacked parameter sets in cache-sized chunks; the layers before
  the first damaged one run once).
Scenarios: deletion of 50% of all weights (every layer damaged), 50% of the output layer's weights, and
crashes of 50% of the units of hidden layer 2. Prints seconds, the ratio and the largest output difference.

Run: `.venv/bin/python benchmarks/batched_damage.py [--configs 1000] [--threads 2]`
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("LESION_NO_PROGRESS", "1")

import torch  # noqa: E402

from lesion.damage import Target, batched_damaged_outputs, parse_damage, realise  # noqa: E402
from lesion.data import load  # noqa: E402
from lesion.nets import build_net  # noqa: E402

SCENARIOS = ("delete:weights:frac=0.5", "delete:out.weight:frac=0.5", "crash:2:frac=0.5")


def copy_per_configuration(model: torch.nn.Module, configs: list, x: torch.Tensor) -> torch.Tensor:
    """The baseline: one model copy per configuration, damaged in place, full-batch forward."""
    outputs = []
    for config in configs:
        damaged = copy.deepcopy(model)
        handles = []
        with torch.no_grad():
            for name, p in damaged.named_parameters():
                if name in config.params:
                    p.copy_(config.params[name])
            for site, override in config.units.items():
                module = damaged.get_submodule(site)
                handles.append(module.register_forward_hook(
                    lambda m, i, out, o=override: out * o.keep + o.value))
            outputs.append(damaged(x))
        for h in handles:
            h.remove()
    return torch.stack(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load("mnist5k")
    x = data.x_test[:1000]
    model, _ = build_net("mlp2", seed=0)
    model.eval()
    target = Target(model)
    print(f"mlp2 (LeNet-300-100), {args.configs} configurations x {len(x)} inputs, {args.threads} threads")
    header = ("damage", "copy loop s", "lesion s", "ratio", "max |diff|", "same argmax")
    print("{:30s} {:>12s} {:>9s} {:>7s} {:>11s} {:>11s}".format(*header))
    for spec in SCENARIOS:
        generator = torch.Generator().manual_seed(0)
        configs = [realise(target, [parse_damage(spec)], generator) for _ in range(args.configs)]
        batched_damaged_outputs(model, configs[:8], x)  # warm-up
        copy_per_configuration(model, configs[:8], x)
        start = time.perf_counter()
        reference = copy_per_configuration(model, configs, x)
        loop = time.perf_counter() - start
        start = time.perf_counter()
        batched = batched_damaged_outputs(model, configs, x)
        fast = time.perf_counter() - start
        diff = float((batched - reference).abs().max())
        same = bool(torch.equal(batched.argmax(-1), reference.argmax(-1)))
        print(f"{spec:30s} {loop:12.3f} {fast:9.3f} {loop / fast:6.1f}x {diff:11.2e} {same!s:>11s}")


if __name__ == "__main__":
    main()
