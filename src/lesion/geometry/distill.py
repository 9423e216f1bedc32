"""Label-free repair by distillation from the undamaged network (issue 15, beyond compensation).

The damaged network (deleted weights D held at zero) is trained to reproduce the *undamaged* network's outputs
on unlabelled calibration inputs: the loss is the temperature-scaled Kullback–Leibler divergence

    L(w) = T² · mean_x KL( softmax(f(x; w₀)/T) ‖ softmax(f(x; w)/T) ),    w_D = 0,

minimised by Adam with a one-cycle learning rate (warm-up over the first tenth of the steps, cosine decay to
zero), small minibatches, dropout off. No label is read: the teacher is the user's own trained network, so a
chip that lost units can be repaired from inputs it sees in the field. Started from a compensated network
(`compensate+distill:E`) it refines the closed-form fit.

Compute, in epoch-equivalents (`RecoveryProblem.epochs`): the teacher's forward over the calibration inputs
(a forward counts 1/3 of a forward and backward pass; no more of them than the run's steps read) plus `epochs` ×
the training-set size examples passed forward and backward.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from lesion.errors import LesionError
from lesion.train import train_one_cycle

DISTILL_LR = 3e-3  # one-cycle peak; 1e-3 … 4e-3 gave the same accuracy on mlp1-400 (benchmarks/recovery.py)
DISTILL_BATCH = 8
DISTILL_TEMPERATURE = 4.0
DISTILL_CALIBRATION = 2048  # unlabelled inputs, at most


def _logits(out: torch.Tensor) -> torch.Tensor:
    """Outputs as rows of class scores: (inputs, classes), or (inputs·tokens, vocabulary) for per-token models."""
    return out.reshape(-1, out.shape[-1])


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over rows (module docstring)."""
    s, t = _logits(student) / temperature, _logits(teacher) / temperature
    return F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True) \
        * temperature ** 2


def distill(problem: Any, epochs: float = 0.5, start_weights: torch.Tensor | None = None, seed: int = 0,
            calibration: int = DISTILL_CALIBRATION, lr: float = DISTILL_LR, batch: int = DISTILL_BATCH,
            temperature: float = DISTILL_TEMPERATURE) -> tuple[Any, torch.Tensor]:
    """Train the damaged network (from `start_weights` on the damage hyperplane, else naive deletion) towards the
    undamaged network's outputs on the first `calibration` training inputs, for `epochs` epoch-equivalents of
    examples (module docstring). Returns the method's result and the weights (w_D = 0 exactly)."""
    from lesion.geometry.recovery import MethodResult

    if not epochs > 0 or calibration < 1 or batch < 1 or not lr > 0 or not temperature > 0:
        raise LesionError(f"distill needs epochs, calibration, batch, lr and temperature > 0 (got epochs={epochs}, "
                          f"calibration={calibration}, batch={batch}, lr={lr}, temperature={temperature})")
    started = time.perf_counter()
    examples = max(1, int(round(epochs * len(problem.x_train))))
    steps = math.ceil(examples / batch)
    x = problem.x_train[:min(calibration, steps * batch)]  # no teacher outputs for inputs a short run never sees
    undamaged = problem.load(problem.w0).eval()
    with torch.no_grad():
        teacher = torch.cat([undamaged(x[i:i + 1024]) for i in range(0, len(x), 1024)])
    teacher = teacher.reshape(len(x), -1, teacher.shape[-1])  # per input: its rows (tokens of a per-token view)
    w = problem.w0 * problem.mask if start_weights is None else start_weights
    model = problem.load(w).eval()  # dropout off: the student should match the teacher's deterministic outputs
    train_one_cycle(model, len(x), steps, batch, lr, seed,
                    lambda idx: distill_loss(model(x[idx]), teacher[idx], temperature),
                    problem.flat.unflatten(problem.mask), "distillation")
    w = problem.flat.weights_of(model).to(w.dtype) * problem.mask
    acc, loss_value = problem.evaluate(w)
    compute = problem.epochs(len(x) / 3) + problem.epochs(steps * batch)
    return MethodResult("distill", acc, loss_value, compute, time.perf_counter() - started,
                        details={"epochs": epochs, "calibration": len(x), "lr": lr, "batch": batch,
                                 "temperature": temperature, "steps": steps}), w
