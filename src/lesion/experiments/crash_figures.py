"""Reproductions of [R]'s figures (issue "Crash robustness", item 6). Each function computes the figure's
data with the public API, writes `<name>.json` and `<name>.png` into a folder, and returns the data.

- r-fig3 / r-fig4: Omega against the Lipschitz constant K for [R]'s random 4-4-4-4-1 nets (ReLU / sigmoid),
  on a grid of [0, 1]^4, f = 1, 2, 3 crashes anywhere in the hidden layers;
- r-fig5: f = 1 crash at depth 1, 2, 3 (hidden layer L, L−1, L−2) against K: the depth effect inverts at K = 1;
- r-fig6: Omega against a common scale of all weights (ReLU and sigmoid);
- r-fig7 (and Fig. 10): 784-48-10 ReLU nets trained on mnist5k with dropout 0, 0.1, 0.2, 0.3: measured Omega
  and Erf_av against f = 1..5, and which networks tolerate 3 crashes at ε = 0.15 or 1 at ε = 0.03.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesion.crash import CrashBudget, budget_bound, exact_omega, mlp_structure, output_bounds
from lesion.crash.worst import worst_case
from lesion.data import load
from lesion.data.grid import input_grid
from lesion.nets import build_net
from lesion.report.jsonio import provenance, write_json
from lesion.report.plots import Series, line_plot
from lesion.train import TrainSettings, evaluate, train


def _random_net(seed: int, activation: str, K: float, scale: float = 1.0) -> torch.nn.Module:
    """random-R with activation slope chosen so that its Lipschitz constant is K (sigmoid: k = 4K)."""
    k = K if activation == "relu" else 4.0 * K
    model, _ = build_net(f"random-{seed}", activation=activation, k=k)
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
    return model.double().eval()


def _omega_row(model: torch.nn.Module, x: torch.Tensor, layers: Sequence[int], faults: int) -> dict[str, float]:
    structure = mlp_structure(model)
    widths = tuple(structure.widths[l - 1] for l in layers)
    r = exact_omega(structure, x, CrashBudget(tuple(layers), widths, faults), time_limit=None)
    return {"omega_av": r.omega_av, "omega_mav": r.omega_mav, "omega_max": r.omega_max}


def _geomean(values: Sequence[float]) -> float:
    positive = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in positive) / len(positive)) if positive else 0.0


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = np.log(np.asarray(xs)), np.log(np.maximum(np.asarray(ys), 1e-300))
    return float(np.polyfit(lx, ly, 1)[0])


def lipschitz_sweep(out: Path, activation: str, name: str, Ks: Sequence[float] = tuple(np.logspace(-1, 1, 9)),
                    faults: Sequence[int] = (1, 2, 3), nets: int = 5, steps: int = 10) -> dict[str, Any]:
    """[R] Fig. 3 (ReLU) / Fig. 4 (sigmoid): Omega_av and Omega_max against K, f crashes anywhere in the four
    hidden layers of random 4-4-4-4-1 nets, geometric mean over `nets` nets, inputs on a steps^4 grid."""
    x = input_grid(4, steps).double()
    rows = []
    for K in Ks:
        for f in faults:
            per_net = [_omega_row(_random_net(seed, activation, float(K)), x, (1, 2, 3, 4), f) for seed in range(nets)]
            rows.append({"K": float(K), "faults": f, **{key: _geomean([r[key] for r in per_net])
                                                         for key in ("omega_av", "omega_mav", "omega_max")}})
    series, slopes = [], {}
    for f in faults:
        mine = [r for r in rows if r["faults"] == f]
        slopes[f] = _slope([r["K"] for r in mine], [r["omega_av"] for r in mine])
        series.append(Series(f"Omega_av, f={f} (slope {slopes[f]:.2f})", [r["K"] for r in mine],
                             [r["omega_av"] for r in mine]))
        if activation == "relu":
            series.append(Series(f"Omega_max, f={f}", [r["K"] for r in mine], [r["omega_max"] for r in mine],
                                 style="--"))
    note = (f"[R] random 4-4-4-4-1 {activation} nets (weights N(1, 5²), no biases), geometric mean over {nets} nets; "
            f"{len(x):,} grid inputs in [0,1]^4; every crash set of f units among the 16 hidden units (exact, float64)")
    line_plot(out / f"{name}.png", series, "Lipschitz constant K", "Omega (‖F − F_S‖∞)",
              f"[R] Fig. {'3' if activation == 'relu' else '4'}: Omega vs K, {activation}", note, logx=True, logy=True)
    result = {"figure": name, "activation": activation, "rows": rows, "log_log_slopes": slopes, "nets": nets,
              "inputs": len(x), "paper": "ReLU: slope K^4 (Eq. 4); sigmoid: saturates, K^4 only for K << 1",
              "provenance": provenance(seeds=list(range(nets)))}
    write_json(out / f"{name}.json", result)
    return result


def depth_sweep(out: Path, Ks: Sequence[float] = tuple(np.logspace(-1, 1, 9)), nets: int = 5, steps: int = 10,
                activation: str = "sigmoid") -> dict[str, Any]:
    """[R] Fig. 5: Omega_av of one crash at depth 1, 2, 3 (hidden layer 4, 3, 2 of 4) against K."""
    x = input_grid(4, steps).double()
    rows = []
    for K in Ks:
        for depth in (1, 2, 3):
            layer = 5 - depth
            per_net = [_omega_row(_random_net(seed, activation, float(K)), x, (layer,), 1) for seed in range(nets)]
            rows.append({"K": float(K), "depth": depth, "layer": layer,
                         "omega_av": _geomean([r["omega_av"] for r in per_net])})
    series = [Series(f"depth {d} (hidden layer {5 - d})", [r["K"] for r in rows if r["depth"] == d],
                     [r["omega_av"] for r in rows if r["depth"] == d]) for d in (1, 2, 3)]
    below = [r for r in rows if r["K"] < 1]
    above = [r for r in rows if r["K"] > 1]

    def ordered(group: list[dict[str, Any]], increasing: bool) -> bool:
        ok = True
        for K in sorted({r["K"] for r in group}):
            vals = [next(r["omega_av"] for r in group if r["K"] == K and r["depth"] == d) for d in (1, 2, 3)]
            ok &= all((a < b) if increasing else (a > b) for a, b in zip(vals, vals[1:], strict=False))
        return ok

    inversion = {"deeper_is_smaller_below_1": ordered(below, False), "deeper_is_larger_above_1": ordered(above, True)}
    note = (f"[R] random 4-4-4-4-1 {activation} nets, geometric mean over {nets}; {len(x):,} grid inputs; all 4 "
            "single crashes of the layer (exact). Depth 1 = last hidden layer. ReLU nets without biases are "
            "positively homogeneous (Omega ∝ K^4 at every depth), so the inversion is shown with sigmoid.")
    line_plot(out / "r-fig5.png", series, "Lipschitz constant K", "Omega_av", "[R] Fig. 5: depth of the crash vs K",
              note, logx=True, logy=True)
    result = {"figure": "r-fig5", "activation": activation, "rows": rows, "inversion": inversion,
              "paper": "K < 1: deeper crash, lower error; K > 1: the opposite", "provenance": provenance()}
    write_json(out / "r-fig5.json", result)
    return result


def weight_scale_sweep(out: Path, scales: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0), nets: int = 5,
                       steps: int = 10, K: float = 1.0) -> dict[str, Any]:
    """[R] Fig. 6: Omega_av against a common factor on every weight, ReLU and sigmoid, f = 1 anywhere."""
    x = input_grid(4, steps).double()
    rows = []
    for activation in ("relu", "sigmoid"):
        for scale in scales:
            per_net = [_omega_row(_random_net(seed, activation, K, scale), x, (1, 2, 3, 4), 1) for seed in range(nets)]
            rows.append({"activation": activation, "scale": scale,
                         "omega_av": _geomean([r["omega_av"] for r in per_net])})
    slopes = {a: _slope([r["scale"] for r in rows if r["activation"] == a],
                        [r["omega_av"] for r in rows if r["activation"] == a]) for a in ("relu", "sigmoid")}
    series = [Series(f"{a} (log-log slope {slopes[a]:.2f})", [r["scale"] for r in rows if r["activation"] == a],
                     [r["omega_av"] for r in rows if r["activation"] == a]) for a in ("relu", "sigmoid")]
    note = (f"[R] random 4-4-4-4-1 nets, K = {K}, every weight multiplied by the factor; geometric mean over {nets}; "
            f"{len(x):,} grid inputs; one crash anywhere (exact). Five weight layers: ReLU scales as factor^5.")
    line_plot(out / "r-fig6.png", series, "weight scale factor", "Omega_av", "[R] Fig. 6: scaling the weights",
              note, logx=True, logy=True)
    result = {"figure": "r-fig6", "rows": rows, "log_log_slopes": slopes,
              "paper": "ReLU: ×10 on the weights multiplies the error by 10^L; sigmoid saturates",
              "provenance": provenance()}
    write_json(out / "r-fig6.json", result)
    return result


def dropout_study(out: Path, dropouts: Sequence[float] = (0.0, 0.1, 0.2, 0.3), epochs: int = 20,
                  max_faults: int = 5, seed: int = 0, certify_seconds: float = 30.0) -> dict[str, Any]:
    """[R] Fig. 7 and Fig. 10: 784-48-10 ReLU nets trained on mnist5k with several dropout rates; exact Omega
    (raw outputs, the 1,000 test inputs) and Erf_av against f; tolerance at ε = 0.15 (3 crashes) and 0.03 (1)
    on softmax outputs, where Erf/2 and Erf_av/2 bound the change (softmax is ½-Lipschitz in the ∞-norm).
    The certified column (issue 19): the certified worst case on softmax outputs (`crash.worst`, at most
    `certify_seconds` a budget) — tolerated for certain when its upper bound is within ε, certainly not when
    a crash set found exceeds ε — for the worst input (Omega_max) and for the mean over inputs of each
    input's worst set (Omega_mav)."""
    data = load("mnist5k")
    x = data.x_test
    networks = []
    for rate in dropouts:
        model, _ = build_net("mlp1-48", data.input_shape, 10, seed=seed, dropout=rate)
        train(model, data.x_train, data.y_train, TrainSettings(epochs=epochs, seed=seed))
        model.eval()
        structure = mlp_structure(model)
        C = output_bounds(structure, x)
        rows = []
        for f in range(1, max_faults + 1):
            budget = CrashBudget((1,), (48,), f)
            raw = exact_omega(structure, x, budget, time_limit=None)
            bound = budget_bound(structure, f, (1,), C)
            row = {"faults": f, "omega_av": raw.omega_av, "omega_std": raw.omega_std, "omega_mav": raw.omega_mav,
                   "omega_max": raw.omega_max, "erf": bound.erf, "erf_av": bound.erf_av}
            if f in (1, 3):
                soft = exact_omega(structure, x, budget, output="softmax", time_limit=None)
                worst = worst_case(structure, x, 1, [f], "softmax", certify_seconds)[0]
                row.update(softmax_omega_av=soft.omega_av, softmax_omega_mav=soft.omega_mav,
                           softmax_omega_max=soft.omega_max, softmax_erf_av=bound.erf_av / 2,
                           softmax_erf=bound.erf / 2,
                           softmax_certified={k: getattr(worst, k) for k in (
                               "omega_max_lower", "omega_max_upper", "omega_mav_lower", "omega_mav_upper")})
            rows.append(row)
        three, one = rows[2], rows[0]
        networks.append({
            "dropout": rate, "test_accuracy": evaluate(model, x, data.y_test).accuracy, "C": list(C.values),
            "rows": rows, "tolerates_3_at_0.15": _tolerates(three, 0.15), "tolerates_1_at_0.03": _tolerates(one, 0.03)})
    fs = list(range(1, max_faults + 1))
    series = []
    for i, net in enumerate(networks):
        rows = net["rows"]
        color = {"color": f"C{i}"}
        series.append(Series(f"Omega_av, dropout {net['dropout']}", fs, [r["omega_av"] for r in rows],
                             [max(0.0, r["omega_av"] - r["omega_std"]) for r in rows],
                             [r["omega_av"] + r["omega_std"] for r in rows], extra=color))
        series.append(Series(f"Erf_av, dropout {net['dropout']}", fs, [r["erf_av"] for r in rows], style="--",
                             extra=color))
    note = (f"784-48-10 ReLU nets trained {epochs} epochs on mnist5k (4,000 digits; [R] used full MNIST); Omega "
            f"exact over every crash set and the {len(x):,} test inputs, raw outputs, ‖·‖∞; band: ± one std over "
            "(set, input) pairs; C measured on the same inputs.")
    line_plot(out / "r-fig7.png", series, "crashed hidden units f", "error on the output",
              "[R] Fig. 7/10: Omega_av and Erf_av vs f under dropout", note)
    result = {"figure": "r-fig7", "networks": networks, "inputs": len(x),
              "paper": "dropout 0: cannot tolerate 3 crashes at 0.15; 0.1–0.3 can; only 0.2 and 0.3 tolerate 1 "
                       "crash at 0.03 (on probability outputs)",
              "provenance": provenance(seed=seed, data=data.to_dict())}
    write_json(out / "r-fig7.json", result)
    return result


def _tolerates(row: dict[str, Any], epsilon: float) -> dict[str, Any]:
    """Whether a budget's softmax change stays within ε: by Erf and Erf_av (bounds), by measured Omega_av, and
    certified for the worst input and for each input's worst set on average (True / False / None: undecided,
    the bracket straddles ε)."""
    cert = row["softmax_certified"]

    def decided(lower: float, upper: float) -> bool | None:
        return True if upper <= epsilon else False if lower > epsilon else None

    return {"by_erf": row["softmax_erf"] <= epsilon, "by_erf_av": row["softmax_erf_av"] <= epsilon,
            "by_omega_av": row["softmax_omega_av"] <= epsilon,
            "certified_worst_input": decided(cert["omega_max_lower"], cert["omega_max_upper"]),
            "certified_mean_of_worst": decided(cert["omega_mav_lower"], cert["omega_mav_upper"])}


FIGURES = {
    "r-fig3": lambda out, quick: lipschitz_sweep(out, "relu", "r-fig3", **_quick(quick)),
    "r-fig4": lambda out, quick: lipschitz_sweep(out, "sigmoid", "r-fig4", **_quick(quick)),
    "r-fig5": lambda out, quick: depth_sweep(out, **_quick(quick)),
    "r-fig6": lambda out, quick: weight_scale_sweep(out, **({"nets": 2, "steps": 5} if quick else {})),
    "r-fig7": lambda out, quick: dropout_study(out, **({"epochs": 3, "max_faults": 3, "certify_seconds": 5.0}
                                                      if quick else {})),
}
FIGURES["r-fig10"] = FIGURES["r-fig7"]


def _quick(quick: bool) -> dict[str, Any]:
    return {"Ks": (0.1, 1.0, 10.0), "nets": 2, "steps": 5} if quick else {}
