"""Benchmark: the certified worst case of crashes (issue 19) against enumeration, Monte Carlo and Erf.

A. One hidden layer (784-48-10 ReLU trained 2 epochs on Fashion-MNIST, its 60,000 training inputs, the net of
   benchmarks/omega.py): Omega_max and Omega_mav exact for f = 1..48 from sorted contributions, timed, and
   equal to exact enumeration for f = 1..3 (run in the same process, timed: the ratio is printed);
   Omega_worst_set by branch and bound for f = 1..3 against enumeration's.
B. LeNet-300-100 (mlp2 as `make demo` trains it: mnist5k, 10 epochs, dropout 0.1), crashes in hidden layer 1,
   its 1,000 test inputs: the certified upper bound against exact enumeration (f = 1, 2), and at f = 5, 10,
   20 the bracket [lower, upper] of Omega_max, its ratio and time, beside Erf (how much tighter) and the
   largest d of 1,000 uniformly sampled crash sets (Monte Carlo's lower bound).

Run: `.venv/bin/python benchmarks/worst_case.py [--part A|B|all] [--time-limit 120] [--skip-enumeration]`
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("LESION_NO_PROGRESS", "1")

import torch  # noqa: E402

from lesion.crash import (  # noqa: E402
    CrashBudget,
    budget_bound,
    exact_omega,
    mlp_structure,
    monte_carlo_omega,
    output_bounds,
)
from lesion.crash.worst import worst_case  # noqa: E402
from lesion.data import load  # noqa: E402
from lesion.nets import build_net  # noqa: E402
from lesion.train import TrainSettings, evaluate, train  # noqa: E402


def part_a(enumerate_up_to: int) -> None:
    data = load("fashion-mnist")
    model, _ = build_net("mlp1-48", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=2, seed=0, batch_size=128))
    model.eval()
    x = data.x_train
    structure = mlp_structure(model)
    print(f"A. mlp1-48 on fashion-mnist (test accuracy {evaluate(model, data.x_test, data.y_test).accuracy:.4f}), "
          f"{len(x):,} inputs")
    start = time.perf_counter()
    results = worst_case(structure, x, 1, list(range(1, 49)), common_set=False)
    seconds = time.perf_counter() - start
    print(f"Omega_max and Omega_mav exact for f = 1..48: {seconds:.1f} s in all")
    for r in results[:5] + results[9::10] + results[-1:]:
        print(f"  f={r.faults:>2}: Omega_max {r.omega_max_upper:.6f}, Omega_mav {r.omega_mav_upper:.6f}")
    for f in range(1, enumerate_up_to + 1):
        t0 = time.perf_counter()
        exact = exact_omega(structure, x, CrashBudget((1,), (48,), f), time_limit=None)
        t_enum = time.perf_counter() - t0
        t0 = time.perf_counter()
        cert = worst_case(structure, x, 1, [f], time_limit=10.0, enumerate_small=False)[0]
        t_cert = time.perf_counter() - t0
        print(f"  f={f}: enumeration {t_enum:.1f} s: Omega_max {exact.omega_max:.9f}, Omega_mav "
              f"{exact.omega_mav:.9f}, Omega_worst_set {exact.omega_worst_set:.9f}; certified {t_cert:.1f} s: "
              f"{cert.omega_max_upper:.9f}, {cert.omega_mav_upper:.9f}, worst set [{cert.omega_worst_set_lower:.9f}, "
              f"{cert.omega_worst_set_upper:.9f}] ({'exact' if cert.exact else 'gap'}, "
              f"{cert.extra['worst_set_nodes']} nodes)")


def part_b(time_limit: float, enumerate_up_to: int) -> None:
    data = load("mnist5k")
    model, _ = build_net("mlp2", data.input_shape, 10, seed=0, dropout=0.1)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=10, seed=0))
    model.eval()
    x = data.x_test[:1000]
    structure = mlp_structure(model)
    C = output_bounds(structure, x)
    print(f"B. mlp2 (784-300-100-10) on mnist5k (test accuracy {evaluate(model, x, data.y_test[:1000]).accuracy:.4f}), "
          f"crashes in hidden layer 1, {len(x):,} test inputs, time limit {time_limit:.0f} s a budget")
    for f in range(1, enumerate_up_to + 1):
        t0 = time.perf_counter()
        exact = exact_omega(structure, x, CrashBudget((1,), (300,), f), time_limit=None)
        t_enum = time.perf_counter() - t0
        cert = worst_case(structure, x, 1, [f], time_limit=time_limit, enumerate_small=False)[0]
        slack = 1e-12 * exact.omega_max  # float64 rounding: the engines sum in different orders
        holds = cert.omega_max_lower - slack <= exact.omega_max <= cert.omega_max_upper + slack
        print(f"  f={f}: enumeration {t_enum:.1f} s: Omega_max {exact.omega_max:.12f}, Omega_mav "
              f"{exact.omega_mav:.9f}; certified Omega_max [{cert.omega_max_lower:.12f}, "
              f"{cert.omega_max_upper:.12f}], Omega_mav [{cert.omega_mav_lower:.9f}, {cert.omega_mav_upper:.9f}] "
              f"in {cert.seconds:.1f} s: {'brackets it' if holds else 'DOES NOT BRACKET IT'}")
    print(f"{'f':>3} {'Omega_max lower':>15} {'upper':>9} {'up/low':>7} {'root up':>8} {'Omega_mav':>19} "
          f"{'seconds':>7} {'Erf':>9} {'Erf/up':>7} {'MC max':>7} {'Omega_worst_set':>16}")
    for f in (5, 10, 20):
        cert = worst_case(structure, x, 1, [f], time_limit=time_limit, enumerate_small=False)[0]
        erf = budget_bound(structure, f, (1,), C).erf
        sampled = monte_carlo_omega(structure, x, CrashBudget((1,), (300,), f), samples=1000, seed=0)
        print(f"{f:>3} {cert.omega_max_lower:>15.4f} {cert.omega_max_upper:>9.4f} {cert.max_ratio:>7.3f} "
              f"{cert.extra['root_omega_max_upper']:>8.3f} [{cert.omega_mav_lower:.3f}, {cert.omega_mav_upper:.3f}]"
              f" {cert.seconds:>7.1f} {erf:>9.1f} {erf / cert.omega_max_upper:>7.1f} {sampled.omega_max:>7.3f}"
              f" [{cert.omega_worst_set_lower:.3f}, {cert.omega_worst_set_upper:.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("A", "B", "all"), default="all")
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-enumeration", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("A", "all"):
        part_a(0 if args.skip_enumeration else 3)
    if args.part in ("B", "all"):
        part_b(args.time_limit, 0 if args.skip_enumeration else 2)


if __name__ == "__main__":
    main()
