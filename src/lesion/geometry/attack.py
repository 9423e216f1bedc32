"""Random against adversarial weight perturbations of the same size (SPEC §3.3–3.4, [G] §3, Fig. 2).

At norm σ: random directions (a campaign of uniform unit-sphere directions), the adversarial direction
σ·u* with u* in the span of the top-k eigenvectors of g (the single eigenvector and sign that raise the loss
most on the analysis inputs, then the combination of the k, refined by projected gradient ascent on the unit
sphere of the span), the loss-gradient direction (first-order baseline), the top eigenvector alone (its sign by the
loss on the analysis inputs), and a greedy search of bit flips in each weight's stored format (float32, float16,
bfloat16 or float64 words) whose total weight change from the trained weights w0 stays within σ: ‖w − w0‖ ≤ σ.
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
from lesion.damage.bits import FORMATS, format_for, xor_words
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


FLOAT64_WIDTH = 64  # bits of a float64 word: sign 63, exponent 52–62, mantissa 0–51 (IEEE 754 binary64)


def bit_formats(view: FlatModel) -> dict[str, str]:
    """The word format each trainable parameter is stored in (SPEC §1, bit flip: "in its stored format"): its own
    dtype's (`lesion.damage.bits.format_for`: float32, float16, bfloat16), "float64" for float64 parameters
    (64-bit words, flipped here); a LesionError for a dtype with no bit format. The view's w may be wider than
    the model's weights (a float16 model is analysed in float32): the flips are of the model's words."""
    params = dict(view.model.named_parameters())
    return {name: "float64" if params[name].dtype == torch.float64 else
            format_for(params[name].dtype, f"weights of {name}") for name in view.layout.names}


def _flipped_values(values: torch.Tensor, bits: torch.Tensor, fmt: str) -> torch.Tensor:
    """values[k] with bit bits[k] of its `fmt` word flipped, read back in values' dtype (exactly: `values` hold
    words of `fmt`)."""
    if fmt == "float64":
        words = values.double().contiguous().view(torch.int64)
        one = torch.ones_like(bits, dtype=torch.int64)
        masks = torch.where(bits == FLOAT64_WIDTH - 1, torch.iinfo(torch.int64).min, one << bits.clamp(max=62))
        return torch.bitwise_xor(words, masks.to(words.device)).view(torch.float64).to(values.dtype)
    return xor_words(values.float(), torch.ones_like(bits, dtype=torch.int64) << bits, fmt).to(values.dtype)


def greedy_bitflips(view: FlatModel, x: torch.Tensor, y: torch.Tensor, sigma: float, max_flips: int = 20,
                    candidates: int = 256, exact_checks: int = 64) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Greedy bit flips, in each weight's stored format (`bit_formats`: float32, float16, bfloat16 or float64
    words; SPEC §1 bit flip, §3.4), raising the loss on (x, y) while the total change from the starting weights
    w0 stays within the budget, ‖w − w0‖ ≤ σ (measured against w0, so that flips of one weight twice count once:
    a per-step sum of squares would undercount two moves of a weight in the same direction). At each step the
    flips of the bits of the `candidates` weights with the largest loss gradient are ranked by their first-order
    gain, the best `exact_checks` are evaluated exactly (in one batched pass) and the best is applied. Each flip
    record carries its "format"."""
    flat = view.weights.clone()
    w0 = view.weights.double()
    loss = _loss_fn(view, x, y)
    formats = bit_formats(view)
    kinds = sorted(set(formats.values()))
    kind_of = torch.cat([torch.full((size,), kinds.index(formats[name]), dtype=torch.int64)
                         for name, size in zip(view.layout.names, view.layout.sizes, strict=True)]).to(view.device)
    flips: list[dict[str, Any]] = []
    base = view.unflatten(view.weights)
    dtypes = {n: p.dtype for n, p in view.model.named_parameters()}
    for _ in range(max_flips):
        grad = torch.func.grad(loss)(flat)
        top = torch.topk(grad.abs(), min(candidates, view.n)).indices
        parts = []
        for code, fmt in enumerate(kinds):
            chosen = top[kind_of[top] == code]
            width = FLOAT64_WIDTH if fmt == "float64" else FORMATS[fmt]
            if len(chosen) == 0:
                continue
            bits = torch.arange(width, device=view.device).repeat(len(chosen))
            idx = chosen.repeat_interleave(width)
            parts.append((idx, bits, _flipped_values(flat[idx], bits, fmt), [fmt] * len(idx)))
        idx = torch.cat([p[0] for p in parts])
        bits = torch.cat([p[1] for p in parts])
        flipped = torch.cat([p[2] for p in parts])
        fmt_of = [f for p in parts for f in p[3]]
        delta = flipped - flat[idx]
        # the budget on the total change from w0, in float64 (a float32 square can round below it): the weight's
        # current offset from w0 is replaced by its offset after the flip
        moved = flat.double() - w0
        spent = float((moved**2).sum())
        total = spent - moved[idx] ** 2 + (flipped.double() - w0[idx]) ** 2
        ok = torch.isfinite(flipped) & (total <= sigma**2) & (delta != 0)
        if not bool(ok.any()):
            break
        gain = torch.where(ok, grad[idx] * delta, torch.tensor(-math.inf, dtype=flat.dtype, device=flat.device))
        order = torch.argsort(gain, descending=True)[: min(exact_checks, int(ok.sum()))]
        configs = []
        for j in order.tolist():
            trial = flat.clone()
            trial[idx[j]] = flipped[j]
            # in the model's own dtype (the view's weights are a float32 copy of a half-precision model's; the
            # flipped values are of the model's format, so the cast is exact)
            changed = {n: t.to(dtypes[n]) for n, t in view.unflatten(trial).items() if not torch.equal(t, base[n])}
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
        flips.append({"weight": int(idx[j]), "bit": int(bits[j]), "format": fmt_of[j], "before": before,
                      "after": float(flipped[j]), "loss": float(losses[best]),
                      "norm": math.sqrt(max(float(total[j]), 0.0))})
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
    accuracy along the adversarial direction and along that many random ones (`halving_norms`).

    k is clamped to m·|X| (g has no more nonzero eigenvalues; details "k" is the count used, "k_asked" the
    request); the top eigenvector's sign is the one raising the loss on the analysis inputs; the bit flips are of
    each weight's stored format (details "bitflip_formats", per parameter)."""
    if not sigma > 0:
        raise LesionError(f"σ must be positive, got {sigma}")
    op = MetricOperator(model, x_analysis)
    view = op.flat
    formats = bit_formats(view) if bitflips else {}  # before the work: a dtype with no bit format is refused
    clean, _ = _accuracy(view, view.weights, x_eval, y_eval)
    # the random directions in the same space as the designed ones: the trainable weights w (SPEC §0), not frozen ones
    frozen = set(dict(model.named_parameters())) - set(view.layout.names)
    trainable = ",".join(view.layout.names) if frozen else "all"
    campaign = Campaign(model, x_eval, y_eval, [Perturbation("sphere", sigma, trainable)], seed=seed)
    random = campaign.run(samples=directions).accuracy
    rows = op.inputs * op.m  # g = JᵀJ has rank at most m·|X|: no more eigenvectors with a nonzero eigenvalue
    used = min(k, rows, op.n - 1)
    eigenpairs = top_eigenpairs(op, used)
    u_adv, info = adversarial_direction(op, x_analysis, y_analysis, sigma, used, eigenpairs=eigenpairs)
    adv, counts = _accuracy(view, view.weights + sigma * u_adv, x_eval, y_eval)
    u_grad = gradient_direction(view, x_analysis, y_analysis)
    grad_acc, _ = _accuracy(view, view.weights + sigma * u_grad, x_eval, y_eval)
    # the top eigenvector's sign by the loss on the analysis inputs (SPEC §3.4), never on the evaluation data
    v1 = eigenpairs[1][:, 0].to(view.dtype)
    analysis_loss = _loss_fn(view, x_analysis, y_analysis)
    with torch.no_grad():
        sign = max((1.0, -1.0), key=lambda s: float(analysis_loss(view.weights + s * sigma * v1)))
    eig_acc, _ = _accuracy(view, view.weights + sign * sigma * v1, x_eval, y_eval)
    bit_acc, flips = float("nan"), []
    if bitflips:
        flipped, flips = greedy_bitflips(view, x_analysis, y_analysis, sigma)
        bit_acc, _ = _accuracy(view, flipped, x_eval, y_eval)
    response = small_perturbation_response(op, sigmas=(sigma * 1e-3, sigma * 1e-2, sigma * 1e-1, sigma),
                                           directions=10, seed=seed)
    dominant = int(np.argmax(counts))
    collapse = {"class": dominant, "share": counts[dominant] / max(sum(counts), 1), "prediction_counts": counts}
    details = {"adversarial": info, "bitflips": flips, "directions": directions, "k": used, "k_asked": k,
               "rank_bound": rows, "top_eigenvector_sign": sign, "seed": seed, "response": response,
               "bitflip_formats": formats}
    halved = halving_norms(view, x_eval, y_eval, clean, u_adv, halving, seed) if halving else {}
    return AttackResult(sigma, clean, random, adv, grad_acc, eig_acc, bit_acc, collapse, len(x_analysis),
                        len(x_eval), details, halved)
