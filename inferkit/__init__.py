"""inferkit: short-run inference and learning for deep latent-variable models."""

from inferkit.errors import UserError
from inferkit.interfaces import (
    GradientFlow,
    HasLayerConditionals,
    HasLogLikelihoodEstimate,
    HasLogNormalizerGradient,
    HasObservationNoise,
    Inference,
    Latents,
    Model,
    Sampler,
    Tuner,
    TuneResult,
)
from inferkit.objective import flow_log_density, kl_objective
from inferkit.registry import list_plugins, load_dataset, load_model, load_sampler, load_tuner

__all__ = [
    "GradientFlow",
    "HasLayerConditionals",
    "HasLogLikelihoodEstimate",
    "HasLogNormalizerGradient",
    "HasObservationNoise",
    "Inference",
    "Latents",
    "Model",
    "Sampler",
    "TuneResult",
    "Tuner",
    "UserError",
    "flow_log_density",
    "kl_objective",
    "list_plugins",
    "load_dataset",
    "load_model",
    "load_sampler",
    "load_tuner",
    "train",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "train":  # the trainer pulls in data and I/O; import it on first use
        from inferkit.trainer import train

        return train
    raise AttributeError(f"module 'inferkit' has no attribute {name!r}")
