"""The multilayer perceptron [R] analyses (SPEC §2.2), read off any model, or a clear refusal.

An MLP here is a chain of Linear layers, each hidden one followed by one elementwise activation φ with a
known (or given) Lipschitz constant, and a linear output layer; flatten, dropout and identity modules are
allowed anywhere (they do nothing at evaluation). Hidden layer l (1-based) is the output of the activation
after Linear layer l; the output layer is Linear layer L+1.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from lesion.damage.chain import chain_leaves, sequential_leaves
from lesion.errors import LesionError
from lesion.nets.activations import lipschitz_constant, output_bound

_IGNORED = (nn.Flatten, nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class MLPStructure:
    """Weights (N_l × N_{l−1}) and biases of the L+1 Linear layers, the activation of each hidden layer, and
    the names the model uses for them."""

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor | None, ...]
    activations: tuple[nn.Module, ...]
    linear_names: tuple[str, ...]
    activation_names: tuple[str, ...]

    @property
    def depth(self) -> int:
        """L, the number of hidden layers."""
        return len(self.activations)

    @property
    def widths(self) -> tuple[int, ...]:
        """N_1 … N_L."""
        return tuple(int(w.shape[0]) for w in self.weights[:-1])

    def lipschitz(self, given: float | None = None) -> float:
        """K of SPEC §2.2: the one K of all hidden activations, or the value given for unknown activations."""
        if given is not None:
            if not given > 0:
                raise LesionError(f"K must be positive, got {given}")
            return float(given)
        constants = {lipschitz_constant(a) for a in self.activations}
        if None in constants:
            names = sorted({type(a).__name__ for a in self.activations if lipschitz_constant(a) is None})
            raise LesionError(f"the Lipschitz constant of {', '.join(names)} is not known: give it with --K")
        if len(constants) > 1:
            return float(max(constants))  # the bound holds with the largest K of the layers
        return float(constants.pop())

    def on_cpu(self) -> MLPStructure:
        """The same MLP with its weights on the CPU, where the exact engines (numba) and the bounds run."""
        return replace(self, weights=tuple(w.cpu() for w in self.weights),
                       biases=tuple(None if b is None else b.cpu() for b in self.biases))

    def bounded_outputs(self) -> list[float | None]:
        """C_l when the activation bounds it (sigmoid, tanh: 1), None for unbounded activations (ReLU)."""
        return [output_bound(a) for a in self.activations]


def mlp_structure(model: nn.Module) -> MLPStructure:
    """Read the MLP of SPEC §2.2 off `model`, or raise a LesionError saying why it is not one."""
    leaves = chain_leaves(model)
    if leaves is None or (len(leaves) == 1 and leaves[0][0] == "" and list(model.children())):
        why = (f"{type(model).__name__} has its own forward" if not getattr(model, "lesion_cast_inputs", False)
               else "this model stores half-precision weights and is read with its inputs cast to them; analyse "
               "a float32 copy (model.float()) for the bound")
        if leaves is None and sequential_leaves(model) is not None:
            why = "one module or parameter serves two of its layers; give each layer its own"
        raise LesionError("the crash bound needs an MLP (a chain of Linear layers and elementwise activations); "
                          + why)
    weights, biases, acts, linear_names, act_names = [], [], [], [], []
    expecting_activation = False
    for name, module in leaves:
        if isinstance(module, _IGNORED):
            continue
        if isinstance(module, nn.Linear):
            if expecting_activation:
                raise LesionError(f"Linear layer {name} follows another Linear layer without an activation; "
                                  "merge them or add the activation")
            if any(bool(torch.isnan(t).any()) for t in (module.weight, module.bias) if t is not None):
                raise LesionError(f"{name} holds NaN weights: crash figures of such a network mean nothing")
            weights.append(module.weight.detach())
            biases.append(None if module.bias is None else module.bias.detach())
            linear_names.append(name)
            expecting_activation = True
            continue
        if expecting_activation and (lipschitz_constant(module) is not None or _is_activation(module)):
            if getattr(module, "inplace", False):  # an in-place activation would overwrite the values it reads
                module = copy.copy(module)
                module.inplace = False
            acts.append(module)
            act_names.append(name)
            expecting_activation = False
            continue
        raise LesionError(f"the crash bound needs an MLP of Linear layers and elementwise activations; "
                          f"{name} is a {type(module).__name__}")
    if len(weights) < 2 or len(acts) != len(weights) - 1 or not expecting_activation:
        raise LesionError("the crash bound needs an MLP with at least one hidden layer and a linear output layer")
    return MLPStructure(tuple(weights), tuple(biases), tuple(acts), tuple(linear_names), tuple(act_names))


def _is_activation(module: nn.Module) -> bool:
    """Elementwise activations whose K lesion does not know (the user gives K)."""
    return isinstance(module, nn.GELU | nn.SiLU | nn.ELU | nn.Softplus | nn.Mish | nn.SELU | nn.CELU)


def hidden_activations(structure: MLPStructure, x: torch.Tensor, dtype: torch.dtype = torch.float64
                       ) -> list[torch.Tensor]:
    """Clean outputs y^(l)(x) of hidden layers 1..L and the raw network output, computed in `dtype`:
    a list of L + 1 tensors of shape (N, N_l), the last one (N, m)."""
    h = x.reshape(len(x), -1).to(dtype)
    outs = []
    with torch.no_grad():
        for layer, weight in enumerate(structure.weights):
            bias = structure.biases[layer]
            h = h @ weight.to(dtype).T + (0 if bias is None else bias.to(dtype))
            if layer < structure.depth:
                h = structure.activations[layer](h)
            outs.append(h)
    return outs
