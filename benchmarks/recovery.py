"""Benchmark: geodesic recovery and closed-form compensation against naive deletion, fine-tuning,
prune-then-retrain and OBS in one run.

mlp1-400 on mnist5k with 90% of the hidden units deleted, and the small CNN on fashion-mnist (10,000 training
images) with 12 of 16 first-layer filters and 96 of 128 dense units deleted. Prints accuracy, compute in
epoch-equivalents and seconds per method, and the ratios the issue asks about.

Run: `.venv/bin/python benchmarks/recovery.py [--quick]`
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("LESION_NO_PROGRESS", "1")

import torch  # noqa: E402

from lesion.experiments.recovery_figures import CASES, run_case  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in CASES:
        case = run_case(name, args.quick)
        m = case["methods"]
        print(f"\n{name} on {case['data']}: {case['damage']}; clean accuracy {case['clean_accuracy']:.4f}")
        for method, r in m.items():
            print(f"  {method:14s} accuracy {r['accuracy']:.4f}  {r['epoch_equivalents']:7.2f} epoch-equivalents  "
                  f"{r['wall_seconds']:7.1f} s")
        tuned = m["finetune"]
        without = max(("geodesic", "obs", "compensate"), key=lambda k: m[k]["accuracy"])
        print(f"  best without fine-tuning ({without}) − fine-tuning ({tuned['epoch_equivalents']:g} epochs): "
              f"{100 * (m[without]['accuracy'] - tuned['accuracy']):+.1f} points with "
              f"1/{tuned['epoch_equivalents'] / max(m[without]['epoch_equivalents'], 1e-9):.0f} of its compute")
        combo = m["compensate+finetune:0.95"]
        print(f"  compensate+finetune:0.95 − fine-tuning: {100 * (combo['accuracy'] - tuned['accuracy']):+.1f} points "
              f"with 1/{tuned['epoch_equivalents'] / combo['epoch_equivalents']:.1f} of its compute; compensate − "
              f"naive: {100 * (m['compensate']['accuracy'] - m['naive']['accuracy']):+.1f} points; obs − naive: "
              f"{100 * (m['obs']['accuracy'] - m['naive']['accuracy']):+.1f} points")
        best = max(("finetune", "prune-retrain"), key=lambda k: m[k]["accuracy"])
        geo = m["geodesic"]
        gap = 100 * (geo["accuracy"] - m[best]["accuracy"])
        share = geo["epoch_equivalents"] / max(m[best]["epoch_equivalents"], 1e-9)
        above = 100 * (geo["accuracy"] - m["naive"]["accuracy"])
        print(f"  geodesic − best of fine-tune/prune-retrain ({best}): {gap:+.1f} points with {share:.2f}× its "
              f"compute; geodesic − naive: {above:+.1f} points")


if __name__ == "__main__":
    main()
