"""Training configuration: one frozen dataclass, parsed once at the edge (CLI flags or a TOML file)."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from recsys.data.protocol import Refit, parse_protocol, parse_refit
from recsys.errors import InputError
from recsys.models.registry import MODELS, ModelSpec, contrastive_models

CL_NEGATIVES = ("in_batch", "full", "metanode")
KEY_WEIGHTS = ("uniform", "degree")
REC_LOSSES = ("bpr", "softmax", "bsl")
REC_DENOMINATORS = ("sampled", "full", "metanode")
REC_POOLS = ("uniform", "popularity")

# Named bundles of optimisation settings. ``reference`` is the authors' configuration exactly (SELFRec
# conf/SimGCL.yaml and conf/XSimGCL.yaml); ``fast`` reaches the authors' accuracy in 3 epochs instead of 8
# (docs/benchmarks.md) but converges 0.4–1.3 % lower on test over seeds on three graphs, so it is not the
# default. Each names every field it sets, so either can be the default; the dataclass defaults below
# equal ``PRESETS[DEFAULT_PRESET]`` (a test checks it).
PRESETS: dict[str, dict[str, Any]] = {
    "reference": {"lr": 1e-3, "batch_size": 2048},
    "fast": {"lr": 5e-3, "batch_size": 2048},
}
DEFAULT_PRESET = "reference"

# The stopping rule's wait for a warm start (``--init-from``), unless a config file or flag sets it. A cold
# run waits out the dip that follows the contrastive term from a random start (``min_steps``, and a long
# patience); a warm start has none, and on the six warm runs measured a patience of 500 steps selected the
# same epoch as 2,500 (docs/benchmarks.md, "the stopping rule for a warm start"): 1,000 keeps a 2x margin.
WARM_PATIENCE_STEPS = 1000


def option(default: Any, text: str, **metadata: Any) -> Any:
    """A :class:`TrainConfig` field with its help text, the one description of it (``recsys train --help``).

    Args:
        default: The field's default.
        text: What the field means, as the CLI shows it (``metadata["help"]``).
        **metadata: More for the CLI, e.g. ``choices``.
    """
    return field(default=default, metadata={"help": text, **metadata})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run. Written, resolved, into the artifact's ``config.json``.

    Each field's meaning is its ``help`` metadata (:func:`option`), which ``recsys train --help`` shows;
    comments beside a few fields say why they are as they are.

    λ, ε and τ (``cl_weight``, ``noise_eps``, ``temperature``) are ``None`` until :meth:`resolved`, meaning
    "the model's own value" (:data:`recsys.models.registry.MODELS`). Training resolves the config first, so
    for a contrastive model they are floats everywhere after that, the artifact's ``config.json`` included.
    ``mf`` and ``lightgcn`` have no contrastive term and never read them; resolving leaves them as given
    (``None`` unless set) instead of inventing values that would have no effect.
    """

    model: str = option("xsimgcl", "model to train")
    preset: str = option(
        DEFAULT_PRESET,
        "optimisation settings to start from: reference (the authors' configuration exactly) or fast "
        "(learning rate 0.005: the authors' accuracy in 3 epochs instead of 8, ~1% lower at convergence); "
        "flags override them",
        choices=tuple(PRESETS),
    )  # config_from_dict applies it: flags and config-file keys override the preset's settings
    embedding_dim: int = option(64, "embedding size d")
    num_layers: int = option(2, "propagation layers L (ignored by mf)")
    cl_weight: float | None = option(None, "λ, contrastive loss weight")
    noise_eps: float | None = option(None, "ε, noise magnitude")
    temperature: float | None = option(None, "τ of InfoNCE")
    cl_layer: int = option(1, "l*, the layer XSimGCL contrasts with the final embedding")
    reg_weight: float = option(1e-4, "L2 regularisation weight")
    lr: float = option(1e-3, "Adam learning rate")
    batch_size: int = option(2048, "interactions per batch")
    epochs: int = option(1000, "maximum epochs (a safety cap: the stopping rule ends the run)")
    eval_every: int = option(1, "evaluate every N epochs")
    # Steps, not evaluations: the rule then waits as long on a dataset of 19 batches per epoch as on one of
    # 396. The dip that follows the contrastive term lasted up to ~1,200 steps on the graphs measured
    # (docs/benchmarks.md).
    patience_steps: int = option(
        2500,
        "stop once this many optimiser steps pass without a better --metric on the selection split (steps, "
        "not evaluations: the same wait on small and large datasets; a warm start waits at most "
        f"{WARM_PATIENCE_STEPS:,} unless set)",
    )
    min_steps: int = option(2500, "never stop before this many optimiser steps (a warm start: 0 unless set)")
    metric: str = option("recall@20", "model-selection metric")
    protocol: str = option(
        "honest",
        "honest: train on train, select on valid, test once; paper: train on train+valid, best test epoch "
        "(as the authors)",
    )  # recsys.data.protocol says which splits each one uses
    refit: str = option(
        "none",
        "after selecting on valid, retrain from scratch (same seed and config) for the selected step count "
        "on more data: valid = train+valid (test stays held out and is reported), all = train+valid+test "
        "(the model to deploy: no held-out figures), none = keep the selected model; --refit alone: valid",
        choices=tuple(r.value for r in Refit),
        const=Refit.VALID.value,  # the CLI's bare --refit
    )  # recsys.data.protocol says what each refit learns, masks when served and holds out
    baseline_check: bool = option(
        True,
        "after selection, compare the model with the popular and graph-filter rows on the selection split "
        "and warn if it is below either (true/false; the graph filter takes up to a minute on gowalla)",
    )
    seed: int = option(0, "seed of initialisation, sampling and noise")
    device: str = option("auto", "auto (CUDA if available), cpu or cuda")
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice)")
    cl_negatives: str = option(
        "in_batch",
        "InfoNCE negatives of simgcl/xsimgcl: in_batch (as published), full (all users/items, exact) or "
        "metanode (all, through k-means meta-nodes; docs/metanode.md)",
    )
    metanode_clusters: int = option(1024, "K, meta-nodes per side (clipped to the number of users/items)")
    metanode_second_order: bool = option(
        True, "add the diagonal-variance term to the meta-node logits (true/false)"
    )
    metanode_refresh_epochs: int = option(1, "re-run k-means every N epochs")
    metanode_kmeans_iters: int = option(
        10, "Lloyd iterations of the first k-means (later ones: 3, warm-started)"
    )
    metanode_full_below: int = option(8192, "use the exact full loss on a side with at most this many nodes")
    metanode_detach: bool = option(
        False, "no gradient through the meta-nodes' means and variances, to the anchors only (true/false)"
    )
    metanode_key_weight: str = option(
        "uniform",
        "key weights ω of full/metanode: uniform, or degree (ω_v = N·deg(v)/Σ deg, close to the popularity "
        "weighting of in-batch negatives)",
    )
    metanode_probe_every: int = option(
        0,
        "every N steps log the gap to the exact loss and the anchor-gradient cosine (probe_gap, "
        "probe_grad_cos in the epoch record; 0: off)",
    )
    # The recommendation term of every model. BPR stays the default until the accuracy benchmark (issue 22)
    # shows a softmax-family recipe better on every graph shape.
    rec_loss: str = option(
        "bpr",
        "recommendation loss of every model: bpr (one sampled negative per pair, as published), softmax "
        "(sampled softmax: cosine scores / τ, over the batch's positive items and --rec-negatives shared "
        "items) or bsl (bilateral softmax: softmax with a log-mean-exp over each user's positives in the "
        "batch, temperature --bsl-temperature)",
        choices=REC_LOSSES,
    )
    rec_temperature: float = option(0.1, "τ of the softmax/bsl loss (logits are scores / τ)")
    rec_negatives: int = option(
        1024,
        "M, items drawn once per batch and shared by all its rows as negatives of softmax/bsl, besides the "
        "batch's positive items (in-batch negatives); 0: in-batch only",
    )
    rec_pool: str = option(
        "uniform",
        "how the M shared items are drawn (with replacement): uniform, or popularity (∝ training degree)",
        choices=REC_POOLS,
    )
    rec_logq: bool = option(
        True,
        "log-Q correction of softmax/bsl: subtract from each negative's logit the log of its expected count "
        "among the batch's negatives (in-batch items come ∝ popularity) (true/false)",
    )
    rec_denominator: str = option(
        "sampled",
        "the softmax/bsl denominator: sampled (in-batch and M shared items), full (every item, exact) or "
        "metanode (every item, through k-means meta-nodes of the item embeddings: the --metanode-* options)",
        choices=REC_DENOMINATORS,
    )
    rec_cosine: bool = option(
        True, "softmax/bsl score by cosine similarity (true) or by the raw dot product (false)"
    )
    bsl_temperature: float = option(
        0.1, "τ₂ of bsl: the temperature of its log-mean-exp over each user's positives in the batch"
    )

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            msg = f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}"
            raise InputError(msg)
        if self.preset not in PRESETS:
            msg = f"unknown preset {self.preset!r}; expected one of {', '.join(PRESETS)}"
            raise InputError(msg)
        parse_protocol(self.protocol)
        parse_refit(self.refit, self.protocol)
        if not isinstance(self.baseline_check, bool):
            msg = f"baseline_check must be true or false, got {self.baseline_check!r}"
            raise InputError(msg)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            msg = f"device must be auto, cpu or cuda, got {self.device!r}"
            raise InputError(msg)
        for name in ("embedding_dim", "num_layers", "batch_size", "epochs", "eval_every", "patience_steps"):
            if getattr(self, name) < 1:
                msg = f"{name} must be >= 1, got {getattr(self, name)}"
                raise InputError(msg)
        if self.min_steps < 0:
            msg = f"min_steps must be >= 0, got {self.min_steps}"
            raise InputError(msg)
        if self.lr <= 0 or self.reg_weight < 0:
            msg = f"lr must be > 0 and reg_weight >= 0, got {self.lr} and {self.reg_weight}"
            raise InputError(msg)
        if self.temperature is not None and self.temperature <= 0:
            msg = f"temperature must be > 0, got {self.temperature}"
            raise InputError(msg)
        if "cl_layer" in self.spec.config_args and not 1 <= self.cl_layer <= self.num_layers:
            msg = f"cl_layer must be in [1, num_layers={self.num_layers}], got {self.cl_layer}"
            raise InputError(msg)
        self._check_negatives()
        self._check_rec()

    @property
    def spec(self) -> ModelSpec:
        """The registry entry of :attr:`model`: its class, objective and defaults."""
        return MODELS[self.model]

    def _check_negatives(self) -> None:
        if self.cl_negatives not in CL_NEGATIVES:
            msg = f"unknown cl_negatives {self.cl_negatives!r}; expected one of {', '.join(CL_NEGATIVES)}"
            raise InputError(msg)
        if self.cl_negatives != "in_batch" and not self.spec.contrastive:
            msg = (
                f"cl_negatives={self.cl_negatives!r} needs a contrastive model "
                f"({', '.join(contrastive_models())}), got model={self.model!r}"
            )
            raise InputError(msg)
        if self.metanode_key_weight not in KEY_WEIGHTS:
            msg = (
                f"unknown metanode_key_weight {self.metanode_key_weight!r}; "
                f"expected one of {', '.join(KEY_WEIGHTS)}"
            )
            raise InputError(msg)
        for flag in ("metanode_second_order", "metanode_detach"):
            if not isinstance(getattr(self, flag), bool):
                msg = f"{flag} must be true or false, got {getattr(self, flag)!r}"
                raise InputError(msg)
        minimum = {
            "metanode_clusters": 1,
            "metanode_refresh_epochs": 1,
            "metanode_kmeans_iters": 1,
            "metanode_full_below": 0,
            "metanode_probe_every": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                msg = f"{name} must be an integer >= {low}, got {value!r}"
                raise InputError(msg)

    def _check_rec(self) -> None:
        for name, choices in (
            ("rec_loss", REC_LOSSES),
            ("rec_denominator", REC_DENOMINATORS),
            ("rec_pool", REC_POOLS),
        ):
            if getattr(self, name) not in choices:
                msg = f"unknown {name} {getattr(self, name)!r}; expected one of {', '.join(choices)}"
                raise InputError(msg)
        for flag in ("rec_logq", "rec_cosine"):
            if not isinstance(getattr(self, flag), bool):
                msg = f"{flag} must be true or false, got {getattr(self, flag)!r}"
                raise InputError(msg)
        for name in ("rec_temperature", "bsl_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                msg = f"{name} must be a number > 0, got {value!r}"
                raise InputError(msg)
        negatives = self.rec_negatives
        if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
            msg = f"rec_negatives must be an integer >= 0, got {self.rec_negatives!r}"
            raise InputError(msg)
        if self.rec_denominator == "metanode" and not self.rec_cosine:
            msg = "rec_denominator='metanode' scores by cosine similarity: it needs rec_cosine=true"
            raise InputError(msg)

    def resolved(self) -> TrainConfig:
        """This config with the model's own λ, ε and τ (the authors' values) where they are ``None``.

        The result has no ``None`` among the three for a contrastive model (the registry gives all three);
        for ``mf`` and ``lightgcn``, which have no defaults, it is the config unchanged.
        """
        unset: dict[str, Any] = {k: v for k, v in self.spec.defaults.items() if getattr(self, k) is None}
        return replace(self, **unset)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def parse_bool(text: str) -> bool:
    """``true/yes/1/on`` or ``false/no/0/off`` (any case) -> bool, for command-line flags."""
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    msg = f"expected true or false, got {text!r}"
    raise ValueError(msg)


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a config from a mapping: its preset's settings first, then the mapping's own values.

    An unknown key is an error (a typo must not be silently ignored).
    """
    _check_keys(values, source)
    preset = values.get("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        msg = f"{source}: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}"
        raise InputError(msg)
    try:
        return TrainConfig(**{**PRESETS[preset], **values})
    except TypeError as exc:
        msg = f"{source}: {exc}"
        raise InputError(msg) from exc


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file: top-level keys are :class:`TrainConfig` fields."""
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: no such config file"
        raise InputError(msg)
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path}: invalid TOML: {exc}"
        raise InputError(msg) from exc
    _check_keys(values, str(path))
    return values


def _check_keys(values: dict[str, Any], source: str) -> None:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        msg = f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        raise InputError(msg)
