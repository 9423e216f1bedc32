"""Benchmark: what a command costs before its own work (issue 16, item 3).

Times, each the least of `--repeats` runs of a fresh process:
- `lesion --help` and `lesion --version` (target < 0.5 s: no torch import);
- `python -c "import torch"`, the floor every command that computes pays;
- `lesion campaign` on 100 bit-flip configurations of LeNet-300-100 (mlp2, trained 3 epochs on mnist5k, written
  as a checkpoint first, outside the timing) over the 1,000 test digits, end to end;
- the same campaign's compute inside one process that has everything imported (`Campaign(...).run`).
Prints the campaign's overhead: end to end − import torch − compute (target: within 1 s).

Run: `.venv/bin/python benchmarks/startup.py [--repeats 5]`
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAMAGE = "bitflip:ber=1e-6"


def best_of(command: list[str], repeats: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "LESION_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    lesion = str(Path(sys.executable).with_name("lesion"))
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = str(Path(folder) / "mlp2.pt")
        subprocess.run([lesion, "--quiet", "train", "--net", "mlp2", "--data", "mnist5k", "--epochs", "3",
                        "--out", checkpoint], check=True, stdout=subprocess.DEVNULL, env=env)
        campaign = [lesion, "--quiet", "--threads", "1", "campaign", "--model", checkpoint, "--data", "mnist5k",
                    "--damage", DAMAGE, "--samples", "100", "--json", str(Path(folder) / "out.json")]
        rows = {
            "lesion --help": best_of([lesion, "--help"], args.repeats, env),
            "lesion --version": best_of([lesion, "--version"], args.repeats, env),
            'python -c "import torch"': best_of([sys.executable, "-c", "import torch"], args.repeats, env),
            "lesion campaign, 100 configurations": best_of(campaign, args.repeats, env),
        }
        os.environ.update(LESION_NO_PROGRESS="1")
        import torch

        from lesion.damage import parse_damage
        from lesion.damage.campaign import Campaign
        from lesion.data import load
        from lesion.nets.loading import load_model

        torch.set_num_threads(1)
        model = load_model(checkpoint).module.eval()
        data = load("mnist5k")
        compute = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            Campaign(model, data.x_test, data.y_test, [parse_damage(DAMAGE)]).run(samples=100)
            compute = min(compute, time.perf_counter() - start)
        rows["the campaign's compute, in process"] = compute
    for name, seconds in rows.items():
        print(f"{name:40s} {seconds:7.3f} s")
    overhead = rows["lesion campaign, 100 configurations"] - rows['python -c "import torch"'] - compute
    print(f"{'campaign overhead beyond import + compute':40s} {overhead:7.3f} s (target: within 1 s)")


if __name__ == "__main__":
    main()
