"""inferkit: short-run inference and learning for deep latent-variable models."""

from inferkit.errors import UserError
from inferkit.interfaces import (
    DataSet,
    DataSplit,
    GradientFlow,
    HasLayerConditionals,
    HasObservationNoise,
    HasSGDGroups,
    Inference,
    Latents,
    Model,
    Sampler,
    SGDGroup,
    Tuner,
    TuneResult,
    UnnormalizedModel,
)
from inferkit.objective import KLObjective, LogDetEstimator, flow_log_density, kl_objective
from inferkit.registry import list_plugins, load_dataset, load_model, load_sampler, load_tuner

__all__ = [
    "DataSet",
    "DataSplit",
    "GradientFlow",
    "HasLayerConditionals",
    "HasObservationNoise",
    "HasSGDGroups",
    "Inference",
    "KLObjective",
    "Latents",
    "LogDetEstimator",
    "Model",
    "SGDGroup",
    "Sampler",
    "TuneResult",
    "Tuner",
    "UnnormalizedModel",
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
