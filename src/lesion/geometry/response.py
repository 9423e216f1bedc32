"""Response of the outputs to random weight perturbations (SPEC §3.3, [G] Eq. 1–3 and 9).

- [G] Eq. 9: for du ~ N(0, σ²/n I), E[duᵀ g du] = (σ²/n) tr g, checked against a Monte Carlo mean;
- [G] Eq. 1–3: for small du, duᵀ g du ≈ mean_x ‖f(x; w + du) − f(x; w)‖², predicted against measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lesion.functional import traceable
from lesion.geometry.metric import MetricOperator
from lesion.stats import RunningMean


def gaussian_expectation(op: MetricOperator, sigma: float, trace: float, samples: int = 500,
                         seed: int = 0) -> dict[str, Any]:
    """(σ²/n) tr g against the Monte Carlo mean of duᵀ g du over Gaussian du, with its 95% interval."""
    gen = torch.Generator().manual_seed(seed)
    running = RunningMean()
    for _ in range(samples):
        du = torch.randn(op.n, generator=gen, dtype=op.weights.dtype).to(op.weights.device) * (sigma / op.n**0.5)
        running.add(op.quadratic(du))
    return {"sigma": sigma, "predicted": sigma**2 / op.n * trace, "monte_carlo": running.mean,
            "ci": list(running.interval()), "samples": samples}


def small_perturbation_response(op: MetricOperator, sigmas: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0),
                                directions: int = 20, seed: int = 0) -> list[dict[str, float]]:
    """Per σ: the mean over random unit directions u of the predicted σ²uᵀgu and of the measured
    mean_x ‖f(w + σu) − f(w)‖², and their relative gap (small σ: the metric is accurate)."""
    gen = torch.Generator().manual_seed(seed)
    units = [torch.randn(op.n, generator=gen, dtype=op.weights.dtype).to(op.weights.device) for _ in range(directions)]
    units = [u / u.norm() for u in units]
    f = op.outputs_fn(op.x)
    rows = []
    with torch.no_grad(), traceable(op.model):
        clean = f(op.weights)
        for sigma in sigmas:
            predicted = sum(op.quadratic(sigma * u) for u in units) / directions
            measured = sum(float(((f(op.weights + sigma * u) - clean) ** 2).sum(1).mean()) for u in units) / directions
            rows.append({"sigma": sigma, "predicted": predicted, "measured": measured,
                         "relative_gap": abs(measured - predicted) / max(predicted, 1e-300)})
    return rows
