"""recsys: graph contrastive recommendation from raw interaction logs to an HTTP endpoint.

The Python API, one function per stage, each the library call behind its ``recsys`` subcommand::

    import recsys

    data = recsys.ingest("data/sample/interactions.csv", "out/data", split="temporal", time_col="timestamp")
    model = recsys.train(data, "out/xsimgcl", model="xsimgcl", epochs=20)
    print(recsys.evaluate(model, data))
    print(recsys.load(model).recommend([42], k=5))

Kept import-light on purpose: each function imports its stage when called, and :class:`Recommender` and
:class:`TrainConfig` are resolved on first use, so ``import recsys``, ``recsys --help`` and the ingest
pipeline never pay for torch or Ray. See ``docs/python.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys._version import __version__

if TYPE_CHECKING:
    import torch

    from recsys.config import TrainConfig
    from recsys.evaluation.report import EvaluationReport
    from recsys.inference.recommend import Recommender


__all__ = ["Recommender", "TrainConfig", "__version__", "evaluate", "ingest", "load", "train"]

_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".txt": "lightgcn"}

# Names resolved on first use (PEP 562), so that ``import recsys`` stays light.
_LAZY = {"Recommender": "recsys.inference.recommend", "TrainConfig": "recsys.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'recsys' has no attribute {name!r}"
    raise AttributeError(msg)


def ingest(log: str | Path, out: str | Path, *, format: str | None = None, **options: Any) -> Path:
    """Clean, split and id-map a raw log into a dataset directory (``recsys ingest``).

    Args:
        log: The log file: CSV, TSV, Parquet, JSON Lines, or LightGCN ``user item item ...`` text.
        out: The dataset directory to write (atomically; an existing one needs ``force=True``).
        format: ``csv``, ``tsv``, ``parquet``, ``jsonl`` or ``lightgcn``; default: from the file's suffix.
        **options: Fields of :class:`pipelines.readers.LogSpec` (``user_col``, ``item_col``, ``time_col``,
            ``rating_col``, ``separator``, ...) and of :class:`pipelines.IngestConfig` (``split``,
            ``valid_n``, ``test_n``, ``min_user_interactions``, ``seed``, ``force``, ...).

    Returns:
        The dataset directory, to pass to :func:`train` and :func:`evaluate`.

    Raises:
        InputError: an unreadable log, an unknown option, or options that contradict each other.
    """
    from pipelines.ingest import IngestConfig
    from pipelines.ingest import ingest as run_ingest
    from pipelines.readers import LogSpec
    from recsys.errors import InputError

    log = Path(log)
    if format is None:
        format = _SUFFIX_FORMATS.get(log.suffix.lower())
        if format is None:
            known = ", ".join(_SUFFIX_FORMATS.values())
            msg = f"{log}: cannot tell the format from the suffix {log.suffix!r}; pass format= one of {known}"
            raise InputError(msg)
    spec_names = {f.name for f in fields(LogSpec)} - {"format"}
    config_names = {f.name for f in fields(IngestConfig)} - {"out", "spec", "input"}
    _check_options(options, spec_names | config_names, "ingest")
    spec = LogSpec(format, **{k: v for k, v in options.items() if k in spec_names})
    config = {k: v for k, v in options.items() if k in config_names}
    if config.get("split") == "preset":
        msg = "the preset split reads a train and a test file: use `recsys ingest --split preset`"
        raise InputError(msg)
    return run_ingest(IngestConfig(out=Path(out), spec=spec, input=log, **config)).out


def train(
    dataset: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    **config: Any,
) -> Path:
    """Train a model on a dataset directory and write its artifact (``recsys train``).

    Args:
        dataset: A dataset directory written by :func:`ingest`.
        out: The artifact directory to write (atomically; an existing one needs ``force=True``).
        force: Replace an existing artifact.
        resume: Continue from the checkpoint ``<out>.ckpt/`` of an interrupted run.
        progress: Show a progress bar (a log line every 30 s off a terminal).
        **config: Fields of :class:`TrainConfig` (``model``, ``preset``, ``epochs``, ``cl_weight``, ...),
            over the preset's values, as ``recsys train`` flags and ``--config`` files give them.

    Returns:
        The artifact directory, to pass to :func:`evaluate` and :func:`load`.
    """
    from recsys.config import config_from_dict
    from recsys.training.jobs import train_artifact

    cfg = config_from_dict(config, source="train")
    train_artifact(Path(dataset), cfg, Path(out), resume=resume, force=force, progress=progress)
    return Path(out)


def evaluate(
    artifact: str | Path | None,
    dataset: str | Path,
    *,
    split: str = "test",
    k: Iterable[int] = (10, 20, 50),
    baselines: Iterable[str] = ("popular", "random"),
    protocol: str | None = None,
    device: str = "cpu",
) -> EvaluationReport:
    """Full-ranking metrics of an artifact beside reference rows (``recsys evaluate``).

    Args:
        artifact: An artifact directory written by :func:`train`, or ``None`` for the baselines alone.
        dataset: The dataset directory it was trained on (checked against the artifact's record).
        split: ``valid`` or ``test``.
        k: Cut-offs of the metrics.
        baselines: Reference rows: ``popular``, ``random``, ``graph-filter``.
        protocol: ``honest`` or ``paper``; default: the artifact's (honest without one).
        device: Where to score the model: ``cpu``, ``cuda`` or ``auto``.

    Returns:
        The report; ``print`` shows it as the CLI's table, ``.to_dict()`` gives its JSON.
    """
    from recsys.data.dataset import load_dataset
    from recsys.evaluation.evaluate import evaluate_artifact, evaluate_split
    from recsys.runtime import resolve_device

    options: dict[str, Any] = {"split": split, "ks": tuple(k), "baselines": tuple(baselines)}
    if artifact is None:
        return evaluate_split(
            load_dataset(Path(dataset)),
            protocol=protocol or "honest",
            device=resolve_device(device),
            **options,
        )
    return evaluate_artifact(artifact, dataset, protocol=protocol, device=resolve_device(device), **options)


def load(artifact: str | Path, device: str | torch.device = "cpu") -> Recommender:
    """A :class:`Recommender` over an artifact: ``recommend``, ``recommend_new_user``, ``similar_items``.

    The artifact is validated as serving does; nothing is unpickled.
    """
    from recsys.inference.recommend import Recommender

    return Recommender.from_artifact(artifact, device)


def _check_options(options: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        from recsys.errors import InputError

        msg = f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        raise InputError(msg)
