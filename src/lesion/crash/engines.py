"""Distances d(x, S) = ‖F(x) − F_S(x)‖_q for batches of crash sets (SPEC §2.1), in float64.

The general engine: the clean activations up to the first crashed layer are computed once; for a batch of
sets, the units of each set are zeroed and only the layers after the crash run, batched over sets. Works
for any depth, raw or softmax outputs. (The additive engine for one hidden layer is in `additive`.)
"""

from __future__ import annotations

import numpy as np
import torch

from lesion.crash.budget import CrashBudget
from lesion.crash.structure import MLPStructure

NORM_ORDERS = {"inf": float("inf"), "1": 1.0, "2": 2.0}


class GeneralEngine:
    """Batched forward of the layers after the crash for an MLP, on inputs whose clean activations are given."""

    def __init__(self, structure: MLPStructure, activations: list[torch.Tensor], budget: CrashBudget, norm: str,
                 output: str) -> None:
        self.structure, self.budget, self.norm, self.output = structure, budget, norm, output
        self.first = min(budget.layers)  # 1-based hidden layer of the first possible crash
        self.start = activations[self.first - 1]  # (N, N_first), float64
        self.weights = [w.double() for w in structure.weights]
        self.biases = [None if b is None else b.double() for b in structure.biases]
        self.clean = _transform(activations[-1], output)

    def distances(self, sets: np.ndarray, inputs: slice = slice(None)) -> np.ndarray:
        """d(x, S) for crash sets `sets` (B, f) of global unit indices and the inputs `inputs`: (B, inputs)."""
        keep = self._keep(sets)
        h = self.start[inputs].unsqueeze(0) * keep[self.first].unsqueeze(1)  # (B, N, N_first)
        with torch.no_grad():
            for layer in range(self.first, self.structure.depth + 1):  # Linear layer `layer` (0-based) reads h
                bias = self.biases[layer]
                h = h @ self.weights[layer].T + (0 if bias is None else bias)
                if layer < self.structure.depth:
                    h = self.structure.activations[layer](h)
                    if layer + 1 in keep:
                        h = h * keep[layer + 1].unsqueeze(1)
            diff = _transform(h, self.output) - self.clean[inputs].unsqueeze(0)
            return torch.linalg.vector_norm(diff, ord=NORM_ORDERS[self.norm], dim=-1).numpy()

    def _keep(self, sets: np.ndarray) -> dict[int, torch.Tensor]:
        keep = {}
        for layer, offset, width in zip(self.budget.layers, self.budget.offsets, self.budget.widths, strict=True):
            mask = np.ones((len(sets), width))
            rows, cols = np.nonzero((sets >= offset) & (sets < offset + width))
            mask[rows, sets[rows, cols] - offset] = 0.0
            keep[layer] = torch.from_numpy(mask)
        return keep


def _transform(outputs: torch.Tensor, output: str) -> torch.Tensor:
    return torch.softmax(outputs, dim=-1) if output == "softmax" else outputs
