"""Training jobs: a dataset directory in, an artifact directory out (what ``recsys train`` runs).

The module above both training loops: it loads the dataset, matches a warm start, picks the loop of this
process (:func:`recsys.training.loop.fit`) or the Ray Train workers
(:func:`recsys.training.distributed.fit_distributed`), and writes the artifact. Keeping that choice here is
what lets :mod:`recsys.training.distributed` build on :mod:`recsys.training.loop` without the loop knowing
about it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.artifact import write_artifact
from recsys.atomic import check_writable
from recsys.config import TrainConfig
from recsys.data.dataset import load_dataset
from recsys.data.protocol import selection_split
from recsys.errors import InputError
from recsys.training.distributed import ScaleConfig, fit_distributed
from recsys.training.loop import TrainResult, fit
from recsys.training.run import CHECKPOINT_FILE
from recsys.training.warmstart import Parent, WarmStart, check_resume_parent

logger = logging.getLogger(__name__)


def train_artifact(
    dataset_dir: Path,
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    scale: ScaleConfig | None = None,
    init_from: Parent | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Load a dataset, train, and write the artifact to ``out`` (what ``recsys train`` runs).

    In this process, checkpoints go to ``<out>.ckpt/`` after every epoch and are removed once the artifact
    is written; ``resume`` continues from there after a crash or a kill. With ``scale.workers`` > 1 the run
    goes to Ray Train workers (:func:`recsys.training.distributed.fit_distributed`), whose checkpoints live in
    Ray Train's storage instead. With ``init_from`` (``--init-from``) the run is warm-started from that
    artifact (:mod:`recsys.training.warmstart`; give ``cfg`` from
    :meth:`~recsys.training.warmstart.Parent.inherit_config`) and the artifact records it as its parent.
    ``callback`` gets each epoch's record (single process).
    """
    distributed = scale is not None and scale.workers > 1
    if distributed and resume:
        msg = "--resume continues a single-process run; Ray Train workers restart with --max-failures"
        raise InputError(msg)
    if distributed and init_from is not None:
        msg = "--init-from warm-starts a single-process run; it is not wired to Ray Train workers yet"
        raise InputError(msg)
    check_writable(out, force=force)
    dataset = load_dataset(dataset_dir)
    checkpoint_dir = Path(f"{out}.ckpt")
    init = None if init_from is None else WarmStart.match(init_from, dataset, cfg.protocol)
    if distributed:
        assert scale is not None
        result = fit_distributed(dataset, cfg, scale, progress=progress)
    else:
        if not resume or (checkpoint_dir / CHECKPOINT_FILE).is_file():  # else fit names the missing file
            check_resume_parent(checkpoint_dir, init_from, resume=resume)
        result = fit(
            dataset,
            cfg,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=progress,
            callback=callback,
            init=init,
        )
    assert result.train_pairs is not None
    write_artifact(
        out,
        dataset=dataset,
        config=result.config.to_dict(),
        state_dict=result.model.state_dict(),
        user_emb=result.embeddings.user,
        item_emb=result.embeddings.item,
        train_pairs=result.train_pairs,
        metrics=artifact_metrics(result),
        history=result.history,
        force=force,
        parent=None if init is None else init.record(),
    )
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    logger.info("wrote %s (best epoch %d)", out, result.best_epoch)
    return result


def artifact_metrics(result: TrainResult) -> dict[str, Any]:
    """The artifact's ``metrics.json``: the protocol, the selected epoch, its selection and test metrics."""
    split = selection_split(result.config.protocol)
    return {
        "protocol": result.config.protocol,
        "metric": result.config.metric,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "selection_split": split,
        split: result.selection,
        "test": result.test,
        "train_seconds": result.seconds,
    }
