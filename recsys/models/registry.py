"""The one table of models: each name with its class, its training objective and its defaults.

Everything that depends on the model reads :data:`MODELS`: the config (valid names, λ/ε/τ when unset, which
options apply), the CLI (``--model`` and the help of λ/ε/τ), :func:`recsys.models.build.build_model` and the
objective of the training loop (:data:`recsys.training.objectives.OBJECTIVES`). Adding a model is one row here
plus its class and objective.

Classes and objectives are named rather than imported, and resolved by :mod:`recsys.models.build` and
:mod:`recsys.training.objectives`: the config and the CLI read this table at start-up, and must not import
torch to do it (``recsys --help`` and ``recsys ingest`` never load it). A test checks that every name
resolves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

CONTRASTIVE_FIELDS = ("cl_weight", "noise_eps", "temperature")  # λ, ε, τ


@dataclass(frozen=True)
class ModelSpec:
    """What the code needs to know about one model.

    Args:
        name: Its name in configs, on the command line and in artifacts.
        model_class: Its class, a name in :data:`recsys.models.build.CLASSES`.
        objective: Its training loss, a name in :mod:`recsys.training.objectives`.
        config_args: The :class:`~recsys.config.TrainConfig` fields its constructor takes, after the user and
            item counts (each parameter is named like the field).
        uses_graph: Whether it propagates over the user-item graph (training passes it the adjacency).
        defaults: λ, ε and τ (all three: :data:`CONTRASTIVE_FIELDS`) of a model with a contrastive loss, the
            authors' values, filled in by :meth:`~recsys.config.TrainConfig.resolved`; empty for the others.
    """

    name: str
    model_class: str
    objective: str
    config_args: tuple[str, ...]
    uses_graph: bool = True
    defaults: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.defaults and sorted(self.defaults) != sorted(CONTRASTIVE_FIELDS):
            msg = f"{self.name}: a contrastive model's defaults name {', '.join(CONTRASTIVE_FIELDS)}"
            raise ValueError(msg)

    @property
    def contrastive(self) -> bool:
        """Whether its loss has a contrastive term (and so reads λ, ε, τ and ``cl_negatives``)."""
        return bool(self.defaults)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mf", "MF", "rec_objective", ("embedding_dim",), uses_graph=False),
        ModelSpec("lightgcn", "LightGCN", "rec_objective", ("embedding_dim", "num_layers")),
        ModelSpec(
            "simgcl",
            "SimGCL",
            "simgcl_objective",
            ("embedding_dim", "num_layers", "noise_eps"),
            defaults={"cl_weight": 0.5, "noise_eps": 0.1, "temperature": 0.2},
        ),
        ModelSpec(
            "xsimgcl",
            "XSimGCL",
            "xsimgcl_objective",
            ("embedding_dim", "num_layers", "noise_eps", "cl_layer"),
            defaults={"cl_weight": 0.2, "noise_eps": 0.2, "temperature": 0.15},
        ),
    )
}


def contrastive_models() -> tuple[str, ...]:
    """The names of the models with a contrastive loss."""
    return tuple(name for name, spec in MODELS.items() if spec.contrastive)
