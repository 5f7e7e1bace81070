"""Build a model by name: the registry's class names resolved to classes, with the config fields they take."""

from __future__ import annotations

from recsys.config import TrainConfig
from recsys.models.base import EmbeddingModel
from recsys.models.lightgcn import LightGCN, SimGCL, XSimGCL
from recsys.models.mf import MF

CLASSES: dict[str, type[EmbeddingModel]] = {cls.__name__: cls for cls in (MF, LightGCN, SimGCL, XSimGCL)}


def build_model(cfg: TrainConfig, num_users: int, num_items: int) -> EmbeddingModel:
    """Instantiate the model named by a resolved config, with the config fields its registry entry names.

    The class and the fields it takes come from :data:`recsys.models.registry.MODELS`.
    """
    spec = cfg.spec
    args = {name: getattr(cfg, name) for name in spec.config_args}
    assert None not in args.values(), "resolve the config first"
    return CLASSES[spec.model_class](num_users, num_items, **args)
