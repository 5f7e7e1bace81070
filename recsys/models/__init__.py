"""Models hold parameters and ``forward`` only: no losses, no I/O. Look them up by name in ``MODELS``."""

from __future__ import annotations

from recsys.config import TrainConfig
from recsys.models.base import EmbeddingModel, Embeddings, Rows, Views, uniform_noise
from recsys.models.lightgcn import LightGCN, SimGCL, XSimGCL
from recsys.models.mf import MF

MODELS: dict[str, type[EmbeddingModel]] = {
    "mf": MF,
    "lightgcn": LightGCN,
    "simgcl": SimGCL,
    "xsimgcl": XSimGCL,
}


def build_model(cfg: TrainConfig, num_users: int, num_items: int) -> EmbeddingModel:
    """Instantiate the model named by a resolved config with its hyperparameters."""
    if cfg.model == "mf":
        return MF(num_users, num_items, cfg.embedding_dim)
    if cfg.model == "lightgcn":
        return LightGCN(num_users, num_items, cfg.embedding_dim, cfg.num_layers)
    assert cfg.noise_eps is not None, "resolve the config first"
    if cfg.model == "simgcl":
        return SimGCL(num_users, num_items, cfg.embedding_dim, cfg.num_layers, cfg.noise_eps)
    return XSimGCL(num_users, num_items, cfg.embedding_dim, cfg.num_layers, cfg.noise_eps, cfg.cl_layer)


__all__ = [
    "MF",
    "MODELS",
    "EmbeddingModel",
    "Embeddings",
    "LightGCN",
    "Rows",
    "SimGCL",
    "Views",
    "XSimGCL",
    "build_model",
    "uniform_noise",
]
