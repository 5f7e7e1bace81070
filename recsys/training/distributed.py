"""Data-parallel training on Ray Train: N replicas of the one loop in :mod:`recsys.training.loop`.

Every worker holds the whole graph and embedding table and runs :func:`recsys.training.loop.train_epochs` with
a :class:`TorchReplica`. All workers draw the same global permutation and negatives each epoch (same sampling
seed); worker ``r`` trains on part ``r`` of every global batch, and the gradients are combined into the
global batch's gradient before each Adam step, so N workers take the steps one process would take with the
same ``batch_size``. Only the perturbation noise differs per worker (seeded per rank).

Rank 0 validates, early-stops (its decision is broadcast), and reports an epoch checkpoint through
``ray.train.report``; after the last epoch it tests the selected weights and reports them as the final
checkpoint, which the driver turns into the artifact. Ray starts and supervises the worker processes and
the process group (gloo on CPU, NCCL on GPU); nothing here manages processes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recsys.config import TrainConfig
from recsys.data.dataset import Dataset
from recsys.data.protocol import training_splits
from recsys.errors import InputError
from recsys.models.base import EmbeddingModel, Embeddings
from recsys.models.build import build_model
from recsys.training.loop import Replica, TrainResult, finish_run, train_epochs
from recsys.training.run import TrainState, load_checkpoint, prepare_run, save_checkpoint

logger = logging.getLogger(__name__)

FINAL_FILE = "final.pt"


@dataclass(frozen=True)
class ScaleConfig:
    """Where ``recsys train`` runs. One worker is the plain in-process :func:`recsys.training.loop.fit`.

    Args:
        workers: Data-parallel Ray Train workers; 1 trains in this process without Ray.
        use_gpu: One GPU per worker (NCCL); otherwise CPU workers (gloo).
        address: Ray cluster to join (``auto``, ``ray://host:10001``); unset: start a local Ray on 127.0.0.1.
        storage_path: Ray Train storage for checkpoints (shared storage on a multi-node cluster); unset: a
            temporary directory, removed afterwards.
        max_failures: Restart the workers from the last epoch checkpoint this many times after a failure.
    """

    workers: int = 1
    use_gpu: bool = False
    address: str | None = None
    storage_path: str | None = None
    max_failures: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_failures < 0:
            msg = f"workers must be >= 1 and max_failures >= 0, got {self.workers} and {self.max_failures}"
            raise InputError(msg)
        ray_only = {
            "--use-gpu": self.use_gpu,
            "--address": self.address,
            "--storage-path": self.storage_path,
            "--max-failures": self.max_failures,
        }
        given = [flag for flag, value in ray_only.items() if value]
        if self.workers == 1 and given:
            msg = (
                f"{', '.join(given)} need --workers 2 or more (one worker trains in this process; "
                "choose its device with --device)"
            )
            raise InputError(msg)


@dataclass(frozen=True)
class TorchReplica(Replica):
    """A Ray Train worker: the loop's hooks as collectives over the process group Ray Train set up.

    Why not :class:`~torch.nn.parallel.DistributedDataParallel`: DDP reduces gradients only in a backward
    that follows its own ``forward``, and the objectives call other model methods (``clean_and_perturbed``,
    ``user_emb``); wrapped in DDP they would train silently diverging replicas. The model has one parameter
    (the embedding table), so one all-reduce per step is all DDP would do here anyway.
    """

    def reduce_gradients(self, model: EmbeddingModel, share: float) -> None:
        """Sum over replicas of ``share`` x each one's gradient: the global batch's gradient.

        Each replica's loss is a mean over its ``share`` of the global batch's rows, so the weighted sum
        equals the gradient of the global mean (DDP's plain average is the same for equal shards).
        """
        for param in model.parameters():
            if param.grad is None:  # an empty shard contributes zeros, but must join the collective
                param.grad = torch.zeros_like(param)
            param.grad.mul_(share)
            dist.all_reduce(param.grad)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of ``values`` over the replicas."""
        total = values.clone()
        dist.all_reduce(total)
        return total

    def broadcast(self, value: int) -> int:
        """Rank 0's ``value``, on every replica."""
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        return int(box[0])

    def noise_states(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Every replica's noise generator state, by rank (for rank 0's checkpoint)."""
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states


def fit_distributed(
    dataset: Dataset,
    cfg: TrainConfig,
    scale: ScaleConfig,
    *,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train on ``scale.workers`` Ray Train workers; the same result type as :func:`recsys.training.loop.fit`.

    Args:
        dataset: The dataset; sent to the workers through Ray, so they need no access to its directory.
        cfg: The configuration (model defaults are filled in here).
        scale: Workers, device kind and cluster.
        progress: Show rank 0's progress bars and epoch lines (streamed from the worker).
        callback: Called on every worker with that worker's epoch record (must be picklable).

    Returns:
        The selected model, its embeddings and metrics, computed once on rank 0.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = cfg.resolved()
    # Ray assigns each worker its device; --device may only say "auto" or agree with --use-gpu.
    mismatch = (cfg.device == "cpu") if scale.use_gpu else cfg.device.startswith("cuda")
    if mismatch:
        msg = f"--device {cfg.device} does not match the workers ({'GPU' if scale.use_gpu else 'CPU'})"
        raise InputError(msg)
    config = {
        "dataset": dataset,
        "cfg": cfg,
        "progress": progress,
        "log_level": logging.INFO if progress else logging.WARNING,
        "callback": callback,
    }
    with _ray(scale.address), _storage(scale.storage_path) as storage:
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=scale.workers, use_gpu=scale.use_gpu),
            run_config=RunConfig(
                storage_path=storage,
                failure_config=FailureConfig(max_failures=scale.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),  # the epoch checkpoint, then the final
            ),
        )
        result = trainer.fit()
        assert result.checkpoint is not None, "rank 0 reports the final checkpoint last"
        with result.checkpoint.as_directory() as directory:
            final = torch.load(Path(directory) / FINAL_FILE, map_location="cpu", weights_only=True)
    model = build_model(cfg, dataset.num_users, dataset.num_items)
    model.load_state_dict(final["model"])
    return TrainResult(
        config=cfg,
        model=model,
        embeddings=Embeddings(final["user"], final["item"]),
        best_epoch=final["best_epoch"],
        selection=final["selection"],
        test=final["test"],
        history=final["history"],
        seconds=final["seconds"],
        train_pairs=dataset.pairs(training_splits(cfg.protocol)),
    )


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the run, restore Ray's latest checkpoint if any, train, report."""
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=config["log_level"], format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    cfg: TrainConfig = config["cfg"]
    callback: Callable[[dict[str, Any]], None] | None = config["callback"]
    context = ray.train.get_context()
    replica = TorchReplica(context.get_world_rank(), context.get_world_size())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = prepare_run(config["dataset"], cfg, ray.train.torch.get_device(), rank=replica.rank)
    state = TrainState()
    restored = ray.train.get_checkpoint()
    if restored is not None:  # Ray restarted the workers after a failure (ScaleConfig.max_failures)
        with restored.as_directory() as directory:
            state = load_checkpoint(Path(directory), run, rank=replica.rank)
        logger.info("rank %d resumed after epoch %d", replica.rank, state.epoch)

    def after_epoch(record: dict[str, Any]) -> None:
        noise_rngs = replica.noise_states(run.noise_rng.get_state())
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if replica.rank == 0:
                save_checkpoint(Path(tmp), run, state, noise_rngs=noise_rngs)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(record, checkpoint=checkpoint)  # a barrier: every worker reports every epoch
        if callback is not None:
            callback(record)

    train_epochs(
        run, state, replica, progress=config["progress"] and replica.rank == 0, after_epoch=after_epoch
    )
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if replica.rank == 0:
            result = finish_run(run, state, start=start)
            final = {
                "model": result.model.state_dict(),
                "user": result.embeddings.user,
                "item": result.embeddings.item,
                "best_epoch": result.best_epoch,
                "selection": result.selection,
                "test": result.test,
                "history": result.history,
                "seconds": result.seconds,
            }
            torch.save(final, Path(tmp) / FINAL_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"epoch": state.epoch}, checkpoint=checkpoint)


@contextmanager
def _ray(address: str | None) -> Iterator[None]:
    """Ray for the duration of a block: the running one, the cluster at ``address``, or a local one.

    A local Ray binds to 127.0.0.1 with no dashboard and usage stats off (as ``serving.runner``), and is
    shut down afterwards; a Ray that was already running is left running.
    """
    import ray

    from recsys.runtime import init_ray

    if not init_ray(address):
        yield
        return
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _storage(path: str | None) -> Iterator[str]:
    """``path`` (a local one made absolute, as Ray needs), kept; or a temporary directory, removed after."""
    if path is not None:
        yield path if "://" in path else str(Path(path).resolve())
        return
    tmp = tempfile.mkdtemp(prefix="recsys-train-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
