"""Benchmark: top-20 eigenvalues of the metric tensor g of LeNet-300-100 (mlp2) on 1,000 inputs.

lesion (Gram route: K = A Aᵀ from the layer-wise factorisation of the empirical NTK, then Lanczos on K)
against curvlinops' GGN operator with scipy's eigsh in the same run. With an MSE loss summed over outputs and
inputs the GGN is 2 Σ_x J_xᵀ J_x, so g = GGN / (2·|X|). Also: the time for all nonzero eigenvalues.
curvlinops-for-pytorch is a benchmark-only dependency (`make bench` installs it without its dependencies'
torch pins; torch stays 2.13.0).

Run: `.venv/bin/python benchmarks/spectrum.py [--inputs 1000] [--top 20]`
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("LESION_NO_PROGRESS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.sparse.linalg import eigsh  # noqa: E402

from lesion.data import load  # noqa: E402
from lesion.geometry.metric import MetricOperator  # noqa: E402
from lesion.geometry.spectrum import spectrum, top_eigenpairs  # noqa: E402
from lesion.nets import build_net  # noqa: E402
from lesion.train import TrainSettings, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from curvlinops import GGNLinearOperator

    data = load("mnist5k")
    model, _ = build_net("mlp2", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=10, seed=0))
    model.eval()
    x = data.x_train[: args.inputs]
    print(f"mlp2 (266,610 parameters) trained 10 epochs on mnist5k; {len(x)} inputs; top {args.top}; "
          f"{args.threads} threads")

    start = time.perf_counter()
    op = MetricOperator(model, x)
    ours, _, route = top_eigenpairs(op, args.top, "gram")
    t_ours = time.perf_counter() - start

    params = [p for p in model.parameters()]
    loss = torch.nn.MSELoss(reduction="sum")
    start = time.perf_counter()
    ggn = GGNLinearOperator(model, loss, params, [(x, torch.zeros(len(x), 10))], check_deterministic=False)
    theirs = eigsh(ggn.to_scipy(), k=args.top, which="LA", return_eigenvectors=False)
    theirs = np.sort(theirs)[::-1] / (2 * len(x))
    t_theirs = time.perf_counter() - start

    rel = np.abs(ours - theirs) / np.abs(theirs)
    print(f"lesion ({route} route): {t_ours:.2f} s; curvlinops GGN + eigsh: {t_theirs:.2f} s; "
          f"ratio {t_theirs / t_ours:.1f}x")
    print(f"largest relative difference of the top {args.top} eigenvalues: {rel.max():.2e}")
    print("top 5:", " ".join(f"{v:.6g}" for v in ours[:5]))

    start = time.perf_counter()
    full = spectrum(MetricOperator(model, x))
    t_full = time.perf_counter() - start
    print(f"all nonzero eigenvalues (Gram route, {len(x) * 10}×{len(x) * 10} matrix): {t_full:.1f} s; "
          f"rank {full.rank}, trace {full.trace:.6g}, rho(1e-3) = {full.rho:.3e} "
          f"({full.vulnerable_directions} of {full.parameters:,} directions)")


if __name__ == "__main__":
    main()
