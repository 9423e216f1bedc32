"""Random against adversarial weight perturbations of the same size (SPEC §3.3–3.4, [G] §3, Fig. 2).

At norm σ: random directions (a campaign of uniform unit-sphere directions), the adversarial direction
σ·u* with u* in the span of the top-k eigenvectors of g (the single eigenvector and sign that raise the loss
most on the analysis inputs, then the combination of the k, refined by projected gradient ascent on the unit
sphere of the span), the loss-gradient direction (first-order baseline), the top eigenvector alone, and a
greedy search of float32 bit flips whose total weight change stays within σ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesion.damage import Perturbation, Realised, batched_damaged_outputs
from lesion.damage.bits import flip_bits
from lesion.damage.campaign import Campaign
from lesion.errors import LesionError
from lesion.geometry.flat import FlatModel
from lesion.geometry.metric import MetricOperator
from lesion.geometry.response import small_perturbation_response
from lesion.geometry.spectrum import top_eigenpairs
from lesion.nets.outputs import flat_labels


def _loss_fn(view: FlatModel, x: torch.Tensor, y: torch.Tensor):  # noqa: ANN202
    def loss(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(view(x, w), flat_labels(y))

    return loss


def _accuracy(view: FlatModel, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[int]]:
    """Accuracy of the network with weights w on (x, y), and its prediction counts per class."""
    with torch.no_grad():
        out = torch.cat([view(x[i:i + 4096], w) for i in range(0, len(x), 4096)])
    pred = out.argmax(1)
    finite = torch.isfinite(out).all(1)
    counts = torch.bincount(pred[finite], minlength=out.shape[1]).tolist()
    return float(((pred == flat_labels(y)) & finite).double().mean()), counts


def gradient_direction(view: FlatModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇_w L / ‖∇_w L‖ on (x, y) at the view's weights: the first-order direction of steepest loss increase."""
    grad = torch.func.grad(_loss_fn(view, x, y))(view.weights)
    norm = grad.norm()
    if norm == 0:
        raise LesionError("the loss gradient is zero on the analysis inputs")
    return grad / norm


def adversarial_direction(op: MetricOperator, x: torch.Tensor, y: torch.Tensor, sigma: float, k: int = 20,
                          steps: int = 60, eigenpairs: tuple | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """u* (unit norm) in the span of the top-k eigenvectors of g maximising the loss of w + σu on (x, y);
    `eigenpairs` (values, vectors, route) from `top_eigenpairs` avoids computing them again."""
    values, vectors, route = eigenpairs if eigenpairs is not None else top_eigenpairs(op, k)
    vectors = vectors.to(op.weights)
    loss = _loss_fn(op.flat, x, y)
    with torch.no_grad():
        trials = [(float(loss(op.weights + sign * sigma * vectors[:, i])), i, sign)
                  for i in range(vectors.shape[1]) for sign in (1.0, -1.0)]
    best_loss, best_i, best_sign = max(trials)
    c = torch.zeros(vectors.shape[1], dtype=op.weights.dtype, device=op.weights.device)
    c[best_i] = best_sign
    best_c = c.clone()

    def objective(coef: torch.Tensor) -> torch.Tensor:
        return loss(op.weights + sigma * vectors @ (coef / coef.norm()))

    step = 0.5
    for _ in range(steps):  # projected (normalised) gradient ascent on the unit sphere of the span
        grad = torch.func.grad(objective)(c)
        if grad.norm() == 0:
            break
        trial = c + step * grad / grad.norm()
        trial = trial / trial.norm()
        with torch.no_grad():
            value = float(objective(trial))
        if value > best_loss:
            best_loss, best_c, c = value, trial.clone(), trial
        else:
            step /= 2
            if step < 1e-3:
                break
    u = vectors @ best_c
    info = {"eigenvalues": [float(v) for v in values], "route": route, "k": int(vectors.shape[1]),
            "best_single": {"index": best_i, "sign": best_sign}, "coefficients": best_c.tolist(),
            "analysis_loss": best_loss}
    return u / u.norm(), info


def greedy_bitflips(view: FlatModel, x: torch.Tensor, y: torch.Tensor, sigma: float, max_flips: int = 20,
                    candidates: int = 256, exact_checks: int = 64) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Greedy float32 bit flips raising the loss on (x, y) while ‖Δw‖ ≤ σ in total: at each step the flips of
    the bits of the `candidates` weights with the largest loss gradient are ranked by their first-order gain,
    the best `exact_checks` are evaluated exactly (in one batched pass) and the best is applied."""
    flat = view.weights.clone()
    loss = _loss_fn(view, x, y)
    spent = 0.0
    flips: list[dict[str, Any]] = []
    base = view.unflatten(view.weights)
    for _ in range(max_flips):
        grad = torch.func.grad(loss)(flat)
        top = torch.topk(grad.abs(), min(candidates, view.n)).indices
        idx = top.repeat_interleave(32)
        bits = torch.arange(32, device=view.device).repeat(len(top))
        flipped = flip_bits(flat[idx].float(), torch.arange(len(idx)), bits).to(flat.dtype)
        delta = flipped - flat[idx]
        room = sigma**2 - spent
        exact = flipped.double() - flat[idx].double()  # the budget in float64: a float32 square can round below it
        ok = torch.isfinite(flipped) & (exact**2 <= room) & (delta != 0)
        if not bool(ok.any()):
            break
        gain = torch.where(ok, grad[idx] * delta, torch.tensor(-math.inf, dtype=flat.dtype, device=flat.device))
        order = torch.argsort(gain, descending=True)[: min(exact_checks, int(ok.sum()))]
        configs = []
        for j in order.tolist():
            trial = flat.clone()
            trial[idx[j]] = flipped[j]
            changed = {n: t for n, t in view.unflatten(trial).items() if not torch.equal(t, base[n])}
            configs.append(Realised(changed))
        outs = batched_damaged_outputs(view.model, configs, x, desc="bit flips")
        losses = torch.stack([F.cross_entropy(o, flat_labels(y)) for o in outs])
        best = int(torch.argmax(torch.nan_to_num(losses, nan=-math.inf)))
        with torch.no_grad():
            current = float(loss(flat))
        if float(losses[best]) <= current:
            break
        j = order[best].item()
        before = float(flat[idx[j]])
        flat[idx[j]] = flipped[j]
        spent += float(exact[j] ** 2)
        flips.append({"weight": int(idx[j]), "bit": int(bits[j]), "before": before, "after": float(flipped[j]),
                      "loss": float(losses[best])})
    return flat, flips


@dataclass(frozen=True)
class AttackResult:
    """Accuracies at perturbation norm σ (issue "Metric tensor", item 5 keys), with provenance."""

    sigma: float
    clean_accuracy: float
    random_accuracy: dict[str, Any]
    adversarial_accuracy: float
    gradient_accuracy: float
    top_eigenvector_accuracy: float
    bitflip_accuracy: float
    collapse: dict[str, Any]
    analysis_inputs: int
    evaluation_inputs: int
    details: dict[str, Any] = field(default_factory=dict)
    halving: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


HALVING_STEPS = 6  # bisections in log σ after the bracket: σ to within a factor 2^(1/64) ≈ 1.1%
HALVING_LIMIT = 30  # doublings (or halvings) from σ = 1 before giving up: 1e-9 … 1e9


def halving_norm(accuracy_at: Any, level: float, start: float = 1.0, steps: int = HALVING_STEPS,
                 limit: int = HALVING_LIMIT) -> dict[str, Any]:
    """The smallest σ along one direction at which accuracy falls to `level` or below: a geometric bracket from
    `start` (doubling while above, halving while not), then `steps` bisections in log σ. Returns {"norm": the
    bracket's upper end (accuracy ≤ level there), "bracket": [σ with accuracy above level, norm],
    "evaluations"}; "norm" is None when σ = start·2^limit leaves accuracy above the level. Accuracy along a ray
    need not fall monotonically: this is the first crossing the bracket meets (SPEC §3.4 perturbation norm)."""
    calls = 0

    def below(sigma: float) -> bool:
        nonlocal calls
        calls += 1
        return accuracy_at(sigma) <= level

    lo, hi = 0.0, start
    if below(start):
        for _ in range(limit):
            lo = hi / 2
            if not below(lo):
                break
            hi, lo = lo, 0.0
        else:
            return {"norm": hi, "bracket": [0.0, hi], "evaluations": calls}
    else:
        for _ in range(limit):
            lo, hi = hi, hi * 2
            if below(hi):
                break
        else:
            return {"norm": None, "bracket": [hi, None], "evaluations": calls}
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if below(mid):
            hi = mid
        else:
            lo = mid
    return {"norm": hi, "bracket": [lo, hi], "evaluations": calls}


def halving_norms(view: FlatModel, x: torch.Tensor, y: torch.Tensor, clean: float, adversarial: torch.Tensor,
                  directions: int, seed: int = 0) -> dict[str, Any]:
    """‖du‖ that halves accuracy (issue 21, item 1): along the adversarial direction (unit norm) and along
    `directions` uniformly random unit directions (their median and range), on (x, y)."""
    level = 0.5 * clean
    w = view.weights

    def along(u: torch.Tensor) -> dict[str, Any]:
        return halving_norm(lambda sigma: _accuracy(view, w + sigma * u, x, y)[0], level)

    gen = torch.Generator(device="cpu").manual_seed(seed + 31)
    random = []
    for _ in range(directions):
        u = torch.randn(w.shape, generator=gen, dtype=torch.float64).to(device=w.device, dtype=w.dtype)
        random.append(along(u / u.norm()))
    reached = sorted(r["norm"] for r in random if r["norm"] is not None)
    median = float(np.median(reached)) if len(reached) == len(random) and reached else None
    return {"level": level, "adversarial": along(adversarial), "random": random, "random_median": median,
            "random_range": [reached[0], reached[-1]] if reached else None,
            "random_reached": len(reached), "directions": directions}


def attack(model: nn.Module, x_analysis: torch.Tensor, y_analysis: torch.Tensor, x_eval: torch.Tensor,
           y_eval: torch.Tensor, sigma: float = 1.0, directions: int = 1000, k: int = 20, seed: int = 0,
           bitflips: bool = True, halving: int = 0) -> AttackResult:
    """Compare random and designed perturbations of norm σ (SPEC §3.4): directions designed on the analysis
    inputs, accuracies measured on the evaluation inputs. With `halving` > 0, also the norm that halves
    accuracy along the adversarial direction and along that many random ones (`halving_norms`)."""
    if not sigma > 0:
        raise LesionError(f"σ must be positive, got {sigma}")
    op = MetricOperator(model, x_analysis)
    view = op.flat
    clean, _ = _accuracy(view, view.weights, x_eval, y_eval)
    # the random directions in the same space as the designed ones: the trainable weights w (SPEC §0), not frozen ones
    frozen = set(dict(model.named_parameters())) - set(view.layout.names)
    trainable = ",".join(view.layout.names) if frozen else "all"
    campaign = Campaign(model, x_eval, y_eval, [Perturbation("sphere", sigma, trainable)], seed=seed)
    random = campaign.run(samples=directions).accuracy
    eigenpairs = top_eigenpairs(op, k)
    u_adv, info = adversarial_direction(op, x_analysis, y_analysis, sigma, k, eigenpairs=eigenpairs)
    adv, counts = _accuracy(view, view.weights + sigma * u_adv, x_eval, y_eval)
    u_grad = gradient_direction(view, x_analysis, y_analysis)
    grad_acc, _ = _accuracy(view, view.weights + sigma * u_grad, x_eval, y_eval)
    v1 = eigenpairs[1][:, 0].to(view.dtype)
    eig_acc = min(_accuracy(view, view.weights + s * sigma * v1, x_eval, y_eval)[0] for s in (1.0, -1.0))
    bit_acc, flips = float("nan"), []
    if bitflips:
        flipped, flips = greedy_bitflips(view, x_analysis, y_analysis, sigma)
        bit_acc, _ = _accuracy(view, flipped, x_eval, y_eval)
    response = small_perturbation_response(op, sigmas=(sigma * 1e-3, sigma * 1e-2, sigma * 1e-1, sigma),
                                           directions=10, seed=seed)
    dominant = int(np.argmax(counts))
    collapse = {"class": dominant, "share": counts[dominant] / max(sum(counts), 1), "prediction_counts": counts}
    details = {"adversarial": info, "bitflips": flips, "directions": directions, "k": k, "seed": seed,
               "response": response}
    halved = halving_norms(view, x_eval, y_eval, clean, u_adv, halving, seed) if halving else {}
    return AttackResult(sigma, clean, random, adv, grad_acc, eig_acc, bit_acc, collapse, len(x_analysis),
                        len(x_eval), details, halved)
