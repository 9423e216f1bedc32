"""Reference architectures and loading of a user's model (ARCHITECTURE.md: nets/)."""

from lesion.nets.activations import (
    ScaledReLU,
    ScaledSigmoid,
    lipschitz_constant,
    make_activation,
    output_bound,
)
from lesion.nets.checkpoint import save_checkpoint
from lesion.nets.cnn import ConvNet
from lesion.nets.loading import LoadedModel, load_model, model_digest
from lesion.nets.mlp import MLP
from lesion.nets.presets import PRESETS, build_from_config, build_net, describe_presets, preset_config
from lesion.nets.validate import non_finite_parameters, prepare_model, validate_model

__all__ = [
    "MLP",
    "PRESETS",
    "ConvNet",
    "LoadedModel",
    "ScaledReLU",
    "ScaledSigmoid",
    "build_from_config",
    "build_net",
    "describe_presets",
    "lipschitz_constant",
    "load_model",
    "make_activation",
    "model_digest",
    "non_finite_parameters",
    "output_bound",
    "prepare_model",
    "preset_config",
    "save_checkpoint",
    "validate_model",
]
