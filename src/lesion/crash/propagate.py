"""Certified bounds on the output change caused by crash sets, by bound propagation (issue 19, item 2;
SPEC §2.1's d(x, S) for every S of a budget at once).

Crashing the set S of hidden layer l (indicator s ∈ {0, 1}^N, Σ s = f) changes that layer's output by
Δh_l = −h_l ⊙ s, so the next pre-activation changes by Δz_{l+1} = A s with A = −W_{l+1} diag(h_l): linear in
s. For a linear function g·s, the maximum over every crash set is exact and cheap — the sum of the f largest
g_i (with some units fixed in or out of the set: their part plus the r largest of the free units). Every
later layer is relaxed linearly around the clean network (CROWN-style back-substitution): with Δz_j in
[lo_j, hi_j], Δh_j = φ(z_j + Δz_j) − φ(z_j) lies between two affine functions of Δz_j (the ReLU triangle;
constant interval bounds for other monotone activations), so any linear function of the output change is
bounded above by an affine function of s, maximised exactly over the crash sets. With the crash in the last
hidden layer and raw outputs nothing is relaxed: the bound is the exact maximum.

A batch of *nodes* is evaluated at once: node b is input `rows[b]` with units `inside[b]` forced into the
crash set and units `outside[b]` forced out (branch and bound refines nodes; the root has none fixed).
Everything is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lesion.crash.structure import MLPStructure
from lesion.errors import LesionError
from lesion.nets.activations import ScaledReLU

NEG = -float("inf")


def relu_slope(act: nn.Module) -> float | None:
    """k when `act` is x ↦ max(0, k·x) (piecewise linear: relaxed by the triangle), else None."""
    if isinstance(act, nn.ReLU):
        return 1.0
    if isinstance(act, ScaledReLU):
        return act.k
    return None


def is_monotone(act: nn.Module) -> bool:
    """Whether the activation is non-decreasing, so that its image of an interval is given by the end points
    (LeakyReLU only with a slope ≥ 0, ELU with α ≥ 0: LeakyReLU(−1) is |z|; SiLU, GELU and Mish dip below 0)."""
    if isinstance(act, nn.LeakyReLU):
        return act.negative_slope >= 0
    if isinstance(act, nn.ELU):
        return act.alpha >= 0
    if isinstance(act, ScaledReLU) or type(act).__name__ == "ScaledSigmoid":
        return getattr(act, "k", 1.0) >= 0
    return isinstance(act, (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softplus))


def check_monotone(act: nn.Module) -> None:
    """Refuse activations whose interval image is not given by their end points."""
    if not is_monotone(act):
        raise LesionError(f"certified crash bounds need monotone non-decreasing activations (ReLU, sigmoid, tanh); "
                          f"{act} is not")


def top_sum(g: torch.Tensor, inside: torch.Tensor, free: torch.Tensor, remaining: torch.Tensor,
            with_set: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """max over crash sets of g·s: g (B, R, N); the units `inside` (B, N) always crashed, the `remaining` (B,)
    others chosen among the `free` (B, N) ones. Returns the maxima (B, R) and, with `with_set`, the crash
    set attaining each as a mask (B, R, N). −inf where fewer free units than remaining."""
    fixed = (g * inside.unsqueeze(1)).sum(-1)
    values = torch.where(free.unsqueeze(1), g, torch.full_like(g, NEG))
    top = int(remaining.max()) if len(remaining) else 0
    if top == 0:
        chosen_mask = inside.unsqueeze(1).expand_as(g).clone() if with_set else None
        return fixed, chosen_mask
    best, where = torch.topk(values, top, dim=-1)  # (B, R, top)
    take = torch.arange(top, device=g.device) < remaining.view(-1, 1, 1)
    picked = torch.where(take, best, torch.zeros_like(best))
    total = fixed + picked.sum(-1)  # −inf when an infeasible pick reached a non-free unit
    if not with_set:
        return total, None
    chosen = inside.unsqueeze(1).expand_as(g).clone()
    chosen.scatter_(-1, where, take | chosen.gather(-1, where))
    return total, chosen


@dataclass
class Relaxation:
    """Δh ≤ up_slope·Δz + up_shift and Δh ≥ low_slope·Δz + low_shift for one layer, per node (B, N_j)."""

    up_slope: torch.Tensor
    up_shift: torch.Tensor
    low_slope: torch.Tensor
    low_shift: torch.Tensor


def relax(act: nn.Module, z: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> Relaxation:
    """Linear bounds of Δh = φ(z + Δz) − φ(z) for Δz in [lo, hi] (elementwise, clean pre-activation z)."""
    with torch.no_grad():
        clean = act(z)
        k = relu_slope(act)
        if k is None:  # monotone: the interval's ends, as constants
            zero = torch.zeros_like(z)
            return Relaxation(zero, act(z + hi) - clean, zero, act(z + lo) - clean)
        low_end, high_end = z + lo, z + hi
        off = high_end <= 0
        on = low_end >= 0
        unstable = ~(off | on)
        width = (high_end - low_end).clamp(min=1e-300)
        chord = torch.where(unstable, high_end / width, torch.zeros_like(z))
        up_slope = torch.where(on, torch.ones_like(z), chord)
        up_shift = torch.where(on, z, torch.where(unstable, chord * (z - low_end), torch.zeros_like(z)))
        keep_line = unstable & (high_end >= -low_end)  # lower bound αu with α ∈ {0, 1}: the closer one
        low_slope = torch.where(on | keep_line, torch.ones_like(z), torch.zeros_like(z))
        low_shift = low_slope * z
        return Relaxation(k * up_slope, k * up_shift - clean, k * low_slope, k * low_shift - clean)


class CrashPropagation:
    """Bounds on linear functions of the output change for crash sets of `faults` units of hidden layer
    `layer` (1-based) of an MLP, for inputs whose clean activations are computed once here."""

    def __init__(self, structure: MLPStructure, layer: int, x: torch.Tensor, faults: int) -> None:
        if not 1 <= layer <= structure.depth:
            raise LesionError(f"hidden layer {layer} does not exist: the model has {structure.depth}")
        for act in structure.activations[layer:]:
            check_monotone(act)
        self.structure, self.layer, self.faults = structure, layer, faults
        self.weights = [w.detach().double().cpu() for w in structure.weights]
        self.biases = [None if b is None else b.detach().double().cpu() for b in structure.biases]
        h = x.reshape(len(x), -1).double().cpu()
        pre = []  # clean pre-activations z_1 … z_{L+1}
        with torch.no_grad():
            for j, weight in enumerate(self.weights):
                z = h @ weight.T + (0 if self.biases[j] is None else self.biases[j])
                pre.append(z)
                if j < structure.depth:
                    h = structure.activations[j](z.clone())  # a copy: an in-place activation would overwrite `pre`
                if j + 1 == layer:
                    self.hidden = h  # h_l, (X, N)
        self.pre = pre
        self.width = self.hidden.shape[1]
        if not 1 <= faults <= self.width:
            raise LesionError(f"cannot crash {faults} of the {self.width} units of hidden layer {layer}")

    @property
    def exact(self) -> bool:
        """True when nothing is relaxed (crash in the last hidden layer): raw-output bounds are exact."""
        return self.layer == self.structure.depth

    @property
    def outputs(self) -> torch.Tensor:
        """Clean raw outputs (X, m)."""
        return self.pre[-1]

    def crash_matrix(self, rows: torch.Tensor) -> torch.Tensor:
        """A = −W_{l+1} diag(h_l) per node: Δz_{l+1} = A s, shape (B, N_{l+1}, N)."""
        return -self.weights[self.layer].unsqueeze(0) * self.hidden[rows].unsqueeze(1)

    def bound(self, spec: torch.Tensor, rows: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor,
              with_set: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Upper bounds of spec·Δoutput (spec (R, m) or (B, R, m)) over the node's crash sets: (B, R), and the
        crash set maximising each bound's affine function (B, R, N) with `with_set`."""
        free = ~(inside | outside)
        remaining = self.faults - inside.sum(-1)
        A = self.crash_matrix(rows)
        relaxations = []
        for j in range(self.layer + 1, self.structure.depth + 1):  # hidden layers after the crash, 1-based
            eye = torch.eye(self.pre[j - 1].shape[1], dtype=torch.float64)
            both = torch.cat([eye, -eye]).expand(len(rows), -1, -1)
            up, _ = self._back(both, j, A, relaxations, inside, free, remaining)
            n = eye.shape[0]
            lo, hi = -up[:, n:], up[:, :n]
            relaxations.append(relax(self.structure.activations[j - 1], self.pre[j - 1][rows], lo, hi))
        spec = spec.expand(len(rows), -1, -1) if spec.dim() == 2 else spec
        return self._back(spec.double(), self.structure.depth + 1, A, relaxations, inside, free, remaining,
                          with_set)

    def _back(self, spec: torch.Tensor, top: int, A: torch.Tensor, relaxations: list[Relaxation],
              inside: torch.Tensor, free: torch.Tensor, remaining: torch.Tensor, with_set: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Upper bound of spec·Δz_top (top a 1-based layer index after the crash; L + 1 is the output)."""
        M, const = spec, torch.zeros(spec.shape[:2], dtype=torch.float64)
        for j in range(top - 1, self.layer, -1):  # Δz_{j+1} = W_{j+1} Δh_j, then relax hidden layer j
            M = M @ self.weights[j]
            r = relaxations[j - self.layer - 1]
            pos, neg = M.clamp(min=0), M.clamp(max=0)
            const = const + (pos * r.up_shift.unsqueeze(1)).sum(-1) + (neg * r.low_shift.unsqueeze(1)).sum(-1)
            M = pos * r.up_slope.unsqueeze(1) + neg * r.low_slope.unsqueeze(1)
        value, chosen = top_sum(M @ A, inside, free, remaining, with_set)
        return value + const, chosen

    def outputs_after(self, rows: torch.Tensor, crashed: torch.Tensor) -> torch.Tensor:
        """Raw outputs with the crash sets `crashed` (B, N) masks applied to inputs `rows`: (B, m)."""
        h = self.hidden[rows] * (~crashed).double()
        with torch.no_grad():
            for j in range(self.layer, self.structure.depth + 1):
                h = h @ self.weights[j].T + (0 if self.biases[j] is None else self.biases[j])
                if j < self.structure.depth:
                    h = self.structure.activations[j](h)
        return h
