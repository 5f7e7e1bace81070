"""Models hold parameters and ``forward`` only: no losses, no I/O. :func:`build_model` builds one by name."""

from __future__ import annotations

from recsys.config import TrainConfig
from recsys.models.base import EmbeddingModel, Embeddings, Rows, Views, perturb, uniform_noise
from recsys.models.lightgcn import LightGCN, SimGCL, XSimGCL
from recsys.models.mf import MF

CLASSES: dict[str, type[EmbeddingModel]] = {cls.__name__: cls for cls in (MF, LightGCN, SimGCL, XSimGCL)}


def build_model(cfg: TrainConfig, num_users: int, num_items: int) -> EmbeddingModel:
    """Instantiate the model named by a resolved config, with the config fields its registry entry names.

    The class and the fields it takes come from :data:`recsys.model_registry.MODELS`.
    """
    spec = cfg.spec
    args = {name: getattr(cfg, name) for name in spec.config_args}
    assert None not in args.values(), "resolve the config first"
    return CLASSES[spec.model_class](num_users, num_items, **args)


__all__ = [
    "CLASSES",
    "MF",
    "EmbeddingModel",
    "Embeddings",
    "LightGCN",
    "Rows",
    "SimGCL",
    "Views",
    "XSimGCL",
    "build_model",
    "perturb",
    "uniform_noise",
]
