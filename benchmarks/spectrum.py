"""Benchmark: top-20 eigenvalues of the metric tensor g of LeNet-300-100 (mlp2) on 1,000 inputs.

lesion (Gram route: K = A Aᵀ from the layer-wise factorisation of the empirical NTK, then Lanczos on K)
against curvlinops' GGN operator with scipy's eigsh in the same run. With an MSE loss summed over outputs and
inputs the GGN is 2 Σ_x J_xᵀ J_x, so g = GGN / (2·|X|). Also: the time for all nonzero eigenvalues.
curvlinops-for-pytorch is a benchmark-only dependency (`make bench` installs it without its dependencies'
torch pins; torch stays 2.13.0).

Run: `.venv/bin/python benchmarks/spectrum.py [--inputs 1000] [--top 20] [--cli-inputs 500] [--threads 2]`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LESION_NO_PROGRESS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.sparse.linalg import eigsh  # noqa: E402

from lesion.data import load  # noqa: E402
from lesion.devices import resolve_device  # noqa: E402
from lesion.geometry.metric import MetricOperator  # noqa: E402
from lesion.geometry.spectrum import spectrum, top_eigenpairs  # noqa: E402
from lesion.nets import build_net  # noqa: E402
from lesion.nets.checkpoint import save_checkpoint  # noqa: E402
from lesion.train import TrainSettings, train  # noqa: E402


def curvlinops_top(model: torch.nn.Module, x: torch.Tensor, top: int) -> tuple[np.ndarray, float]:
    """The top eigenvalues of g by curvlinops' GGN operator and scipy's eigsh, and the seconds they took."""
    from curvlinops import GGNLinearOperator

    params = [p for p in model.parameters()]
    loss = torch.nn.MSELoss(reduction="sum")
    start = time.perf_counter()
    ggn = GGNLinearOperator(model, loss, params, [(x, torch.zeros(len(x), 10, device=x.device))],
                            check_deterministic=False)
    theirs = eigsh(ggn.to_scipy(), k=top, which="LA", return_eigenvectors=False)
    return np.sort(theirs)[::-1] / (2 * len(x)), time.perf_counter() - start


def fastest(command: list[str], env: dict[str, str], runs: int = 3) -> float:
    """The shortest wall time of `runs` runs of a command (it must succeed)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def cli_comparison(model: torch.nn.Module, config: dict, x: torch.Tensor, top: int, threads: int,
                   device: str = "cpu") -> None:
    """`lesion spectrum --top K` as a user runs it, start-up subtracted, against curvlinops on the same inputs."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "LESION_NO_PROGRESS": "1"}
    installed = Path(sys.executable).with_name("lesion")
    lesion = [str(installed)] if installed.exists() else [sys.executable, "-m", "lesion.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(Path(tmp) / "mlp2.pt", model.cpu(), "mlp2", config)
        model.to(x.device)
        out = Path(tmp) / "spectrum.json"
        command = [*lesion, "spectrum", "--model", str(checkpoint), "--data", "mnist5k", "--inputs", str(len(x)),
                   "--top", str(top), "--device", device, "--json", str(out)]
        t_command = fastest(command, env)
        t_import = fastest([sys.executable, "-c", "import torch"], env)
        ours = np.array(json.loads(out.read_text())["eigenvalues"][:top])
    try:
        runs = [curvlinops_top(model, x, top) for _ in range(3)]  # the least of 3, as for the command
        theirs, t_theirs = runs[0][0], min(t for _, t in runs)
    except Exception as err:  # noqa: BLE001
        print(f"\nwhole command `lesion spectrum --top {top} --inputs {len(x)}`: {t_command:.2f} s, `import torch` "
              f"{t_import:.2f} s; curvlinops fails here ({type(err).__name__})")
        return
    rel = np.abs(ours - theirs) / np.abs(theirs)
    work = t_command - t_import
    print(f"\nwhole command `lesion spectrum --top {top} --inputs {len(x)}`: {t_command:.2f} s, `import torch` "
          f"{t_import:.2f} s, so {work:.2f} s of work; curvlinops GGN + eigsh in-process: {t_theirs:.2f} s; "
          f"ratio {t_theirs / work:.1f}x; largest relative difference {rel.max():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cli-inputs", type=int, default=500, help="inputs of the whole-command comparison")
    parser.add_argument("--device", default="cpu", help="where lesion and curvlinops run: cpu (default) or cuda")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    data = load("mnist5k")
    model, config = build_net("mlp2", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=10, seed=0))
    model.eval().to(device)
    x = data.x_train[: args.inputs].to(device)
    print(f"mlp2 (266,610 parameters) trained 10 epochs on mnist5k; {len(x)} inputs; top {args.top}; "
          f"{args.threads} threads; device {device}")

    top_eigenpairs(MetricOperator(model, x[:50]), 5, "gram")  # warm-up (CUDA kernels, cuSOLVER handles)
    start = time.perf_counter()
    op = MetricOperator(model, x)
    ours, _, route = top_eigenpairs(op, args.top, "gram")
    ours = np.asarray(torch.as_tensor(ours).cpu())
    t_ours = time.perf_counter() - start

    try:
        theirs, t_theirs = curvlinops_top(model, x, args.top)
    except Exception as err:  # noqa: BLE001 - a peer that cannot run here (on this device, say): lesion's figures still stand
        print(f"lesion ({route} route): {t_ours:.2f} s; curvlinops fails here ({type(err).__name__}: {err})")
    else:
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
    cli_comparison(model, config, data.x_train[: args.cli_inputs].to(device), args.top, args.threads, args.device)


if __name__ == "__main__":
    main()
