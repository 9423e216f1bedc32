"""Upper bounds on d(x, S) = ‖F(x) − F_S(x)‖∞ over every crash set S of a node (issue 19; SPEC §2.1), from
the linear bounds of `propagate`: raw outputs through the rows ±e_k, softmax outputs through the pairwise
differences of the logits (softmax is a function of them only).

Softmax: with p' = softmax(z + Δ) and U_jk ≥ max_S (Δ_j − Δ_k),
    p'_k ≤ 1 / (1 + Σ_{j≠k} exp(z_j − z_k − U_kj)),   p'_k ≥ 1 / (1 + Σ_{j≠k} exp(z_j − z_k + U_jk)),
each sum's terms bounded separately (sound, not exact), so |p'_k − p_k| is at most the larger distance of p_k
to those two ends.
"""

from __future__ import annotations

import torch

from lesion.crash.propagate import NEG, CrashPropagation


def raw_spec(m: int) -> torch.Tensor:
    """Rows e_k and −e_k: the upper bounds of Δ_k and −Δ_k."""
    eye = torch.eye(m, dtype=torch.float64)
    return torch.cat([eye, -eye])


def pair_spec(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows e_j − e_k for every ordered pair j ≠ k, with their j and k."""
    j, k = torch.nonzero(~torch.eye(m, dtype=torch.bool), as_tuple=True)
    spec = torch.zeros(len(j), m, dtype=torch.float64)
    spec[torch.arange(len(j)), j] = 1.0
    spec[torch.arange(len(j)), k] = -1.0
    return spec, j, k


class DistanceBound:
    """Upper bounds of max over a node's crash sets of d(x, S), for raw or softmax outputs."""

    def __init__(self, propagation: CrashPropagation, output: str) -> None:
        self.propagation, self.output = propagation, output
        m = propagation.outputs.shape[1]
        self.m = m
        if output == "raw" or m == 1:  # one output: its softmax is 1 whatever the crash (bounded by 0 below)
            self.spec = raw_spec(m)
        else:
            self.spec, self.j, self.k = pair_spec(m)
            self.probs = torch.softmax(propagation.outputs, dim=-1)

    @property
    def exact(self) -> bool:
        """Whether the bound equals the maximum (raw outputs, crash in the last hidden layer)."""
        return self.output == "raw" and self.propagation.exact

    def __call__(self, rows: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(upper bound of max_S d(x, S) per node (B,), a crash set per node (B, N) attaining the bound's most
        critical row: a candidate for the lower bound)."""
        upper, chosen = self.propagation.bound(self.spec, rows, inside, outside, with_set=True)
        if self.output == "raw" or self.m == 1:
            best = upper.argmax(-1)
            value = upper.gather(1, best.view(-1, 1)).squeeze(1)
            if self.output == "softmax":
                value = torch.zeros_like(value)
        else:
            value, best = self._softmax(rows, upper)
        sets = chosen[torch.arange(len(rows)), best]
        return value.clamp(min=0.0), sets

    def _softmax(self, rows: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, B = self.m, len(rows)
        U = torch.full((B, m, m), 0.0, dtype=torch.float64)
        U[:, self.j, self.k] = upper  # U[b, j, k] ≥ max (Δ_j − Δ_k)
        z = self.propagation.outputs[rows]
        gap = z.unsqueeze(1) - z.unsqueeze(2)  # gap[b, k, j] = z_j − z_k
        off = ~torch.eye(m, dtype=torch.bool)
        high = 1.0 / (1.0 + torch.where(off, torch.exp(gap - U), 0.0).sum(-1))  # U[b, k, j]: Δ_k − Δ_j
        low = 1.0 / (1.0 + torch.where(off, torch.exp(gap + U.transpose(1, 2)), 0.0).sum(-1))
        p = self.probs[rows]
        worst = torch.maximum(high - p, p - low)  # (B, m)
        value, k = worst.max(-1)
        rise = (high - p).gather(1, k.view(-1, 1)).squeeze(1) >= (p - low).gather(1, k.view(-1, 1)).squeeze(1)
        # the row that most limits the bound: for a rise of p_k, Δ_k − Δ_j largest; for a fall, Δ_j − Δ_k
        rows_k = torch.where(rise.view(-1, 1), U[torch.arange(B), k], U[torch.arange(B), :, k])
        rows_k[torch.arange(B), k] = NEG
        j = rows_k.argmax(-1)
        first, second = torch.where(rise, k, j), torch.where(rise, j, k)
        index = first * (m - 1) + second - (second > first).long()
        return value, index


def output_distance(after: torch.Tensor, clean: torch.Tensor, output: str) -> torch.Tensor:
    """‖F_S(x) − F(x)‖∞ over the last axis, of raw outputs or of their softmax (SPEC §2.1)."""
    if output == "softmax":
        after, clean = torch.softmax(after, -1), torch.softmax(clean, -1)
    return (after - clean).abs().amax(-1)


def distances(propagation: CrashPropagation, output: str, rows: torch.Tensor, crashed: torch.Tensor
              ) -> torch.Tensor:
    """d(x, S) for inputs `rows` and crash-set masks `crashed` (B, N), by a forward of the layers after the
    crash, in float64."""
    return output_distance(propagation.outputs_after(rows, crashed), propagation.outputs[rows], output)
