"""Reference architectures and loading of a user's model (ARCHITECTURE.md: nets/)."""

from lesion.lazy import lazy_exports

# where each public name lives; loaded on first use, so that the CLI's --help does not import torch
_EXPORTS = {
    "ScaledReLU": "lesion.nets.activations",
    "ScaledSigmoid": "lesion.nets.activations",
    "lipschitz_constant": "lesion.nets.activations",
    "make_activation": "lesion.nets.activations",
    "output_bound": "lesion.nets.activations",
    "save_checkpoint": "lesion.nets.checkpoint",
    "ConvNet": "lesion.nets.cnn",
    "LoadedModel": "lesion.nets.loading",
    "load_model": "lesion.nets.loading",
    "model_digest": "lesion.nets.loading",
    "MLP": "lesion.nets.mlp",
    "PRESETS": "lesion.nets.catalog",
    "describe_presets": "lesion.nets.catalog",
    "build_from_config": "lesion.nets.presets",
    "build_net": "lesion.nets.presets",
    "preset_config": "lesion.nets.presets",
    "non_finite_parameters": "lesion.nets.validate",
    "prepare_model": "lesion.nets.validate",
    "validate_model": "lesion.nets.validate",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


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
