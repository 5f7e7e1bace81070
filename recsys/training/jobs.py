"""Training jobs: a dataset directory in, an artifact directory out (what ``recsys train`` runs).

The module above both training loops: it loads the dataset, matches a warm start, picks the loop of this
process (:func:`recsys.training.loop.fit`) or the Ray Train workers
(:func:`recsys.training.distributed.fit_distributed`), and writes the artifact. Keeping that choice here is
what lets :mod:`recsys.training.distributed` build on :mod:`recsys.training.loop` without the loop knowing
about it.

Around the loop, a job does two things once the best step is selected:

1. **The baseline check** (``cfg.baseline_check``): the selected model against the ``popular`` and
   ``graph-filter`` rows on the selection split, through the public evaluation API; one warning line when
   it is below either, and the comparison in ``metrics.json``.
2. **The refit** (``cfg.refit``): a fresh run, same seed and config, on the splits the refit learns
   (:mod:`recsys.data.protocol`: train ∪ valid, or all three) for exactly the selection run's best step
   count (steps, not epochs: an epoch over more pairs holds more steps). The artifact is then the refit
   model, ``seen.npz`` holds everything it learned, and test is reported only if it stayed held out.

A refit's checkpoints: the selection run's summary goes to ``<out>.ckpt/selection.json`` once selection
(and the baseline check) ends, and the refit checkpoints to ``<out>.ckpt/refit-<refit>/``; ``--resume``
after a kill during the refit continues the refit from its last epoch, without redoing the selection.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.artifact import write_artifact
from recsys.atomic import atomic_write_text, check_writable
from recsys.config import TrainConfig
from recsys.data.dataset import Dataset, load_dataset
from recsys.data.protocol import Refit, held_out_splits, parse_refit, selection_split, training_splits
from recsys.errors import InputError
from recsys.evaluation.metrics import DEFAULT_KS
from recsys.training.distributed import ScaleConfig, fit_distributed
from recsys.training.loop import TrainResult, fit
from recsys.training.run import CHECKPOINT_FILE
from recsys.training.warmstart import Parent, WarmStart, check_resume_parent

logger = logging.getLogger(__name__)

BASELINE_ROWS = ("popular", "graph-filter")
"""The reference rows a trained model should beat (:data:`recsys.evaluation.baselines.BASELINES`)."""
SELECTION_FILE = "selection.json"


@dataclass
class JobResult(TrainResult):
    """A job's outcome: the artifact's model as :class:`~recsys.training.loop.TrainResult`, and the rest.

    Without a refit the inherited fields are the selection run's. After one, ``model``, ``embeddings``,
    ``test`` (empty after refit ``all``: nothing is held out) and ``train_pairs`` are the refit model's;
    ``best_epoch``, ``selection`` and ``history`` stay the selection run's; ``seconds`` counts both runs.

    Args:
        best_step: The selection run's best step: the refit's step count.
        baselines: The baseline check (:func:`check_baselines`); ``None`` when skipped.
        selected_test: Test metrics of the selected model (``test`` itself without a refit).
        refit: What the refit trained (``mode``, ``splits``, ``pairs``, ``steps``, ``epochs``, ``seconds``);
            ``None`` without one.
        refit_history: The refit's per-epoch records (``refit.jsonl``).
    """

    best_step: int = 0
    baselines: dict[str, Any] | None = None
    selected_test: dict[str, float] = field(default_factory=dict)
    refit: dict[str, Any] | None = None
    refit_history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Selection:
    """What a refit keeps of the selection run: JSON-able, so a killed refit resumes without redoing it.

    Args:
        config: The resolved config of the selection run, as a dict.
        best_epoch: The selected epoch (1-based).
        best_step: The optimiser steps up to and including it.
        selection: Its metrics on the selection split.
        test: The selected model's test metrics.
        history: The selection run's per-epoch records.
        seconds: The selection run's wall time.
        baselines: The baseline check, or ``None``.
    """

    config: dict[str, Any]
    best_epoch: int
    best_step: int
    selection: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]]
    seconds: float
    baselines: dict[str, Any] | None = None

    @classmethod
    def of(cls, result: TrainResult) -> Selection:
        """The summary of a finished selection run."""
        best_step = next(int(r["step"]) for r in result.history if r["epoch"] == result.best_epoch)
        return cls(
            config=result.config.to_dict(),
            best_epoch=result.best_epoch,
            best_step=best_step,
            selection=result.selection,
            test=result.test,
            history=result.history,
            seconds=result.seconds,
        )


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
) -> JobResult:
    """Load a dataset, train, check against the baselines, refit, and write the artifact to ``out``.

    In this process, checkpoints go to ``<out>.ckpt/`` after every epoch and are removed once the artifact
    is written; ``resume`` continues from there after a crash or a kill (in the refit too: see the module
    docstring). With ``scale.workers`` > 1 the run goes to Ray Train workers
    (:func:`recsys.training.distributed.fit_distributed`), whose checkpoints live in Ray Train's storage
    instead; they do not refit. With ``init_from`` (``--init-from``) the run (and its refit) is warm-started
    from that artifact (:mod:`recsys.training.warmstart`; give ``cfg`` from
    :meth:`~recsys.training.warmstart.Parent.inherit_config`) and the artifact records it as its parent.
    ``callback`` gets each epoch's record (single process); a refit epoch's has ``"phase": "refit"``.

    Raises:
        InputError: bad options (``--resume``, ``--init-from`` or ``--refit`` with several workers), a bad
            dataset, or an artifact in the way.
    """
    refit = parse_refit(cfg.refit, cfg.protocol)
    distributed = scale is not None and scale.workers > 1
    if distributed and resume:
        msg = "--resume continues a single-process run; Ray Train workers restart with --max-failures"
        raise InputError(msg)
    if distributed and init_from is not None:
        msg = "--init-from warm-starts a single-process run; it is not wired to Ray Train workers yet"
        raise InputError(msg)
    if distributed and refit is not Refit.NONE:
        msg = (
            f"--refit {refit.value} retrains in this process after selection; it is not wired to Ray Train "
            "workers yet (use --workers 1, or --refit none)"
        )
        raise InputError(msg)
    check_writable(out, force=force)
    dataset = load_dataset(dataset_dir)
    checkpoint_dir = Path(f"{out}.ckpt")
    init = None if init_from is None else WarmStart.match(init_from, dataset, cfg.protocol)
    selected: Selection | None = None
    result: TrainResult | None = None
    if distributed:
        assert scale is not None
        result = fit_distributed(dataset, cfg, scale, progress=progress)
    else:
        if not resume or (checkpoint_dir / CHECKPOINT_FILE).is_file():  # else fit names the missing file
            check_resume_parent(checkpoint_dir, init_from, resume=resume)
        if resume and refit is not Refit.NONE:
            selected = load_selection(checkpoint_dir, cfg)
        elif not resume:
            _clear_refit_state(checkpoint_dir)  # a previous run's: it must not be resumed into this one
        if selected is None:
            result = fit(
                dataset,
                cfg,
                checkpoint_dir=checkpoint_dir,
                resume=resume,
                progress=progress,
                callback=callback,
                init=init,
            )
    if selected is None:
        assert result is not None
        selected = Selection.of(result)
        if cfg.baseline_check:
            selected.baselines = check_baselines(dataset, result.config, result.selection[cfg.metric])
        if refit is not Refit.NONE:
            _clear_refit_state(checkpoint_dir)  # a refit of an earlier selection would not match this one
            save_selection(checkpoint_dir, selected)
    elif cfg.baseline_check and selected.baselines is None:
        selected.baselines = check_baselines(dataset, cfg.resolved(), selected.selection[cfg.metric])
    if refit is Refit.NONE:
        assert result is not None
        job = JobResult(
            **{f.name: getattr(result, f.name) for f in dataclasses.fields(TrainResult)},
            best_step=selected.best_step,
            baselines=selected.baselines if cfg.baseline_check else None,
            selected_test=result.test,
        )
    else:
        job = refit_selected(
            dataset,
            cfg,
            selected,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=progress,
            callback=callback,
            init=init,
        )
    assert job.train_pairs is not None
    write_artifact(
        out,
        dataset=dataset,
        config=job.config.to_dict(),
        state_dict=job.model.state_dict(),
        user_emb=job.embeddings.user,
        item_emb=job.embeddings.item,
        train_pairs=job.train_pairs,
        metrics=artifact_metrics(job),
        history=job.history,
        force=force,
        parent=None if init is None else init.record(),
        refit_history=job.refit_history if job.refit is not None else None,
    )
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    logger.info("wrote %s (best epoch %d%s)", out, job.best_epoch, _refit_note(job))
    return job


def refit_selected(
    dataset: Dataset,
    cfg: TrainConfig,
    selected: Selection,
    *,
    checkpoint_dir: Path,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    init: WarmStart | None = None,
) -> JobResult:
    """Retrain from scratch on the splits ``cfg.refit`` learns, for the selection run's best step count.

    Same seed and config as the selection run (and the same warm start, its neighbour means over the refit's
    pairs); no selection, so the last weights are the model. Checkpoints go to
    ``checkpoint_dir/refit-<refit>/``, which ``resume`` continues when it is there.
    """
    refit = parse_refit(cfg.refit, cfg.protocol)
    splits = training_splits(cfg.protocol, refit)
    directory = checkpoint_dir / f"refit-{refit.value}"
    if init is not None:  # new items and users start from the means over what the refit learns
        init = dataclasses.replace(init, pairs=dataset.pairs(splits))
    logger.info(
        "refit: retraining from scratch on %s for %s steps (the selection run's best, epoch %d)",
        " ∪ ".join(splits),
        f"{selected.best_step:,}",
        selected.best_epoch,
    )

    def each_epoch(record: dict[str, Any]) -> None:
        if callback is not None:
            callback({**record, "phase": "refit"})

    result = fit(
        dataset,
        cfg,
        checkpoint_dir=directory,
        resume=resume and (directory / CHECKPOINT_FILE).is_file(),
        progress=progress,
        callback=each_epoch,
        init=init,
        refit_steps=selected.best_step,
    )
    assert result.train_pairs is not None
    return JobResult(
        config=result.config,
        model=result.model,
        embeddings=result.embeddings,
        best_epoch=selected.best_epoch,
        selection=selected.selection,
        test=result.test,
        history=selected.history,
        seconds=round(selected.seconds + result.seconds, 3),
        train_pairs=result.train_pairs,
        best_step=selected.best_step,
        baselines=selected.baselines if cfg.baseline_check else None,
        selected_test=selected.test,
        refit={
            "mode": refit.value,
            "splits": list(splits),
            "pairs": int(result.train_pairs.size(1)),
            "steps": int(result.history[-1]["step"]),
            "epochs": len(result.history),
            "seconds": result.seconds,
        },
        refit_history=result.history,
    )


def check_baselines(dataset: Dataset, cfg: TrainConfig, value: float) -> dict[str, Any]:
    """Compare the selected model with the ``popular`` and ``graph-filter`` rows on the selection split.

    The rows come from :func:`recsys.evaluation.evaluate.evaluate_split` under the run's protocol, so they
    rank the same users with the same masked items as the selection metric; the model is below a row when
    its ``cfg.metric`` (e.g. Recall@20: the share of a user's held-out items in its top 20, averaged over
    users) is strictly lower. When it is below either, one warning line names the rows and values and says
    what to try.

    Args:
        dataset: The dataset trained on.
        cfg: The resolved config (protocol, metric, seed of the graph filter).
        value: The selected model's ``cfg.metric`` on the selection split.

    Returns:
        ``{"split", "metric", "model", "popular", "graph-filter", "below", "seconds"}``: the values, and the
        rows the model is below.
    """
    from recsys.evaluation.evaluate import evaluate_split  # here: a run without the check never loads it

    split = selection_split(cfg.protocol)
    ks = tuple(sorted({*DEFAULT_KS, int(cfg.metric.split("@")[1])})) if "@" in cfg.metric else DEFAULT_KS
    logger.info(
        "baseline check: %s against %s on %s (--baseline-check false skips it)",
        cfg.model,
        " and ".join(BASELINE_ROWS),
        split,
    )
    tic = time.perf_counter()
    report = evaluate_split(
        dataset, None, None, split=split, protocol=cfg.protocol, ks=ks, baselines=BASELINE_ROWS, seed=cfg.seed
    )
    rows = {row.name: round(float(row.metrics[cfg.metric]), 6) for row in report.baselines}
    below = [name for name, row_value in rows.items() if value < row_value]
    if below:
        logger.warning(
            "warning: the selected %s is below %s on %s (%s %.4f vs %s); try %s",
            cfg.model,
            " and ".join(below),
            split,
            cfg.metric,
            value,
            ", ".join(f"{name} {rows[name]:.4f}" for name in below),
            _advice(cfg),
        )
    return {
        "split": split,
        "metric": cfg.metric,
        "model": value,
        **rows,
        "below": below,
        "seconds": round(time.perf_counter() - tic, 3),
    }


def _advice(cfg: TrainConfig) -> str:
    """What to try when the selected model is below a reference row."""
    if cfg.spec.contrastive:
        return (
            f"a smaller λ (--cl-weight, now {cfg.cl_weight:g}; e.g. 0.05) or another model (--model lightgcn)"
        )
    return "another model (--model xsimgcl --cl-weight 0.05), a larger --lr, or a longer --patience-steps"


def save_selection(checkpoint_dir: Path, selected: Selection) -> None:
    """Write ``selected`` to ``checkpoint_dir/selection.json`` (atomically: a kill keeps the old one)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(checkpoint_dir / SELECTION_FILE, json.dumps(dataclasses.asdict(selected)) + "\n")


def load_selection(checkpoint_dir: Path, cfg: TrainConfig) -> Selection | None:
    """The selection a killed refit started from, or ``None`` if there is none for ``cfg``.

    ``None`` too when the saved selection ran with another config (but for ``refit`` and
    ``baseline_check``, which act after selection): the selection checkpoint then decides, through
    :func:`recsys.training.loop.fit`, whether to continue (a raised ``epochs``) or refuse.
    """
    path = checkpoint_dir / SELECTION_FILE
    if not path.is_file():
        return None
    try:
        selected = Selection(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        msg = f"--resume: cannot read {path}: {exc}"
        raise InputError(msg) from exc
    after = ("refit", "baseline_check")
    saved = {k: v for k, v in selected.config.items() if k not in after}
    current = {k: v for k, v in cfg.resolved().to_dict().items() if k not in after}
    if saved != current:
        return None
    logger.info(
        "resumed after selection: best epoch %d (step %d), %s %.4f",
        selected.best_epoch,
        selected.best_step,
        cfg.metric,
        selected.selection[cfg.metric],
    )
    return selected


def _clear_refit_state(checkpoint_dir: Path) -> None:
    (checkpoint_dir / SELECTION_FILE).unlink(missing_ok=True)
    for directory in checkpoint_dir.glob("refit-*"):
        shutil.rmtree(directory, ignore_errors=True)


def artifact_metrics(result: JobResult) -> dict[str, Any]:
    """The artifact's ``metrics.json``.

    The protocol, the selected epoch and step and their selection metrics, the test metrics of the
    artifact's model (absent when it learned test, after refit ``all``, with ``test_not_held_out`` saying
    so), the splits it learned (``trained_on``, what ``seen.npz`` holds) and those ``held_out`` (empty: no
    honest figures), the baseline check (``baselines_on_<split>``, when it ran) and the refit (``None``
    without one; with one, the selected model's test metrics as ``refit.selected_test``).
    """
    cfg = result.config
    refit = parse_refit(cfg.refit, cfg.protocol)
    split = selection_split(cfg.protocol)
    trained, held_out = training_splits(cfg.protocol, refit), held_out_splits(cfg.protocol, refit)
    metrics: dict[str, Any] = {
        "protocol": cfg.protocol,
        "metric": cfg.metric,
        "best_epoch": result.best_epoch,
        "best_step": result.best_step,
        "epochs_run": len(result.history),
        "selection_split": split,
        split: result.selection,
    }
    if "test" in held_out:
        metrics["test"] = result.test
    else:
        metrics["test_not_held_out"] = (
            f"refit {refit.value!r} trained this model on {' ∪ '.join(trained)}: it has no held-out "
            "figures; refit.selected_test is the selected model's test, trained on train only"
        )
    metrics.update(
        {
            "train_seconds": result.seconds,
            "trained_on": list(trained),
            "held_out": list(held_out),
            "refit": None
            if result.refit is None
            else {**result.refit, "selected_test": result.selected_test},
        }
    )
    if result.baselines is not None:
        metrics[f"baselines_on_{result.baselines['split']}"] = result.baselines
    return metrics


def _refit_note(job: JobResult) -> str:
    if job.refit is None:
        return ""
    return f", refit on {' ∪ '.join(job.refit['splits'])} for {job.refit['steps']:,} steps"
