"""Bad crash sets found by search: the lower side of the certified worst case (issue 19, item 2).

Every set found is evaluated exactly (a float64 forward of the layers after the crash), so its distance is a
true lower bound of max_S d(x, S). Two searches share one evaluation of "the current set with one unit
changed" for every unit at once (a rank-one change of the first pre-activation after the crash):
- greedy: from the empty set, add the unit that raises the objective most, f times;
- swaps: replace one member by one non-member while that raises the objective (best swap first).
The objective is d(x, S) per input (for Omega_max and Omega_mav) or its mean over the inputs (one set for all
inputs: Omega_worst_set).
"""

from __future__ import annotations

import time

import torch

from lesion.crash.distance_bounds import output_distance
from lesion.crash.propagate import CrashPropagation

CANDIDATE_BYTES = 32 << 20  # working tensor of one chunk of candidate evaluations


def _forward_from(prop: CrashPropagation, z: torch.Tensor) -> torch.Tensor:
    """Raw outputs from pre-activations z of layer l + 1 (any leading shape)."""
    structure = prop.structure
    with torch.no_grad():
        for j in range(prop.layer, structure.depth):  # 0-based: activation j, then Linear j + 1
            z = structure.activations[j](z)
            bias = prop.biases[j + 1]
            z = z @ prop.weights[j + 1].T + (0 if bias is None else bias)
    return z


def _base(prop: CrashPropagation, rows: torch.Tensor, crashed: torch.Tensor) -> torch.Tensor:
    """z_{l+1} with the sets `crashed` (B, N) applied."""
    lost = prop.hidden[rows] * crashed.double()
    return prop.pre[prop.layer][rows] - lost @ prop.weights[prop.layer].T


def _chunk(prop: CrashPropagation, per_row: int) -> int:
    width = prop.pre[prop.layer].shape[1] + max(w.shape[0] for w in prop.weights[prop.layer:])
    return max(1, CANDIDATE_BYTES // (8 * max(1, per_row) * width))


def added(prop: CrashPropagation, output: str, rows: torch.Tensor, crashed: torch.Tensor) -> torch.Tensor:
    """d(x, S ∪ {i}) for every unit i (B, N); −inf where i is already in S."""
    out = []
    step = _chunk(prop, prop.width)
    W = prop.weights[prop.layer]
    for lo in range(0, len(rows), step):
        r, c = rows[lo:lo + step], crashed[lo:lo + step]
        column = prop.hidden[r].unsqueeze(-1) * W.T.unsqueeze(0)  # (b, N, N_{l+1}): unit i's part of z
        z = _base(prop, r, c).unsqueeze(1) - column
        d = output_distance(_forward_from(prop, z), prop.outputs[r].unsqueeze(1), output)
        out.append(d.masked_fill(c, -float("inf")))
    return torch.cat(out)


def greedy(prop: CrashPropagation, output: str, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input, a set of f units grown greedily on d(x, S): (masks (B, N), distances (B,))."""
    crashed = torch.zeros(len(rows), prop.width, dtype=torch.bool)
    value = torch.zeros(len(rows), dtype=torch.float64)
    for _ in range(prop.faults):
        d = added(prop, output, rows, crashed)
        value, best = d.max(-1)
        crashed[torch.arange(len(rows)), best] = True
    return crashed, value


def greedy_common(prop: CrashPropagation, output: str, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One set for all inputs `rows`, grown greedily on the mean of d(x, S): (mask (N,), mean)."""
    crashed = torch.zeros(prop.width, dtype=torch.bool)
    mean = 0.0
    for _ in range(prop.faults):
        total = added(prop, output, rows, crashed.expand(len(rows), -1)).sum(0)
        best = int(total.argmax())
        mean = float(total[best]) / len(rows)
        crashed[best] = True
    return crashed, mean


def _swapped(prop: CrashPropagation, output: str, rows: torch.Tensor, crashed: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d(x, S − {u} + {v}) for one set S (N,) on inputs `rows`: (B, |S|, N − |S|), members and non-members."""
    members, others = torch.nonzero(crashed).flatten(), torch.nonzero(~crashed).flatten()
    W = prop.weights[prop.layer]
    per_row = len(members) * len(others)
    out = []
    step = _chunk(prop, per_row)
    for lo in range(0, len(rows), step):
        r = rows[lo:lo + step]
        h = prop.hidden[r]
        base = _base(prop, r, crashed.expand(len(r), -1))
        back = h[:, members].unsqueeze(-1) * W.T[members].unsqueeze(0)  # (b, |S|, N1): restore u
        away = h[:, others].unsqueeze(-1) * W.T[others].unsqueeze(0)  # (b, N−|S|, N1): crash v
        z = base[:, None, None, :] + back.unsqueeze(2) - away.unsqueeze(1)
        out.append(output_distance(_forward_from(prop, z), prop.outputs[r][:, None, None, :], output))
    return torch.cat(out), members, others


def improve(prop: CrashPropagation, output: str, rows: torch.Tensor, crashed: torch.Tensor, value: torch.Tensor,
            common: bool = False, deadline: float | None = None, rounds: int = 50
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-swap hill climbing. Per input (common False: crashed (B, N), value (B,)), or one set for all `rows`
    (common True: crashed (N,), value a 0-d mean). Stops at a local optimum, after `rounds`, or at
    `deadline` (time.monotonic())."""
    if common:
        for _ in range(rounds):
            if deadline is not None and time.monotonic() > deadline:
                break
            if bool(crashed.all()) or not bool(crashed.any()):  # nothing to swap
                break
            d, members, others = _swapped(prop, output, rows, crashed)
            mean = d.mean(0)
            best = int(mean.argmax())
            if float(mean.flatten()[best]) <= float(value) * (1 + 1e-12):
                break
            u, v = divmod(best, len(others))
            crashed = crashed.clone()
            crashed[members[u]], crashed[others[v]] = False, True
            value = mean.flatten()[best]
        return crashed, value
    crashed, value = crashed.clone(), value.clone()
    for b in range(len(rows)):
        if deadline is not None and time.monotonic() > deadline:
            break
        one, val = improve(prop, output, rows[b:b + 1], crashed[b], value[b], True, deadline, rounds)
        crashed[b], value[b] = one, val
    return crashed, value
