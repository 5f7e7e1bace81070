"""Data-parallel training on Ray Train: sharding, equivalence with one process, artifact, restart.

One local Ray (127.0.0.1, 2 CPUs) serves the whole module; each Ray Train run starts 2 CPU workers. The
default suite runs one of them; the restart and accuracy checks are marked ``slow``.
"""

import json
import sys

import pytest
import torch

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
from pipelines.synthetic import SyntheticConfig, generate
from recsys.artifact import load_artifact
from recsys.cli import main
from recsys.config import TrainConfig
from recsys.data.dataset import Dataset, load_dataset
from recsys.errors import InputError
from recsys.evaluation.evaluate import evaluate_split
from recsys.runtime import init_ray
from recsys.training.distributed import ScaleConfig, fit_distributed
from recsys.training.jobs import train_artifact
from recsys.training.loop import Replica, fit
from recsys.training.objectives import Batch


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    init_ray(num_cpus=2, log_to_driver=False)
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}  # loopback only
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    log = root / "log.csv"
    generate(SyntheticConfig(num_users=120, num_items=80, num_interactions=3000, seed=2), log, progress=False)
    spec = LogSpec("csv", time_col="timestamp")
    return ingest(IngestConfig(out=root / "ds", spec=spec, input=log, split="temporal")).out


def two_communities(size=8):
    """Users 0..size-1 like items 0..size-1, the others the others; each user withholds one item."""
    train, held = [], []
    for side in range(2):
        for j in range(size):
            for k in range(size):
                (held if k == j else train).append((side * size + j, side * size + k))
    t, h = torch.tensor(train).T, torch.tensor(held).T
    return Dataset(num_users=2 * size, num_items=2 * size, train=t, valid=h, test=h)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_partition_every_global_batch(world_size):
    """The replicas' shards, in rank order, are the global batch: no row lost or repeated, sizes within 1."""
    for rows in (0, 1, 2, 7, 256, 257):
        batch = Batch(torch.arange(rows), torch.arange(rows) + 1000, torch.arange(rows) + 2000)
        shards = [Replica(rank, world_size).shard(batch) for rank in range(world_size)]
        for field in range(3):
            assert torch.equal(torch.cat([s[field] for s in shards]), batch[field])
        sizes = [s.users.numel() for s in shards]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_replica_and_scale_config_reject_bad_values(dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="rank must be in"):
        Replica(2, 2)
    with pytest.raises(InputError, match="--use-gpu, --address need --workers 2 or more"):
        ScaleConfig(workers=1, use_gpu=True, address="auto")
    with pytest.raises(InputError, match="workers must be >= 1"):
        ScaleConfig(workers=0)
    with pytest.raises(InputError, match="--resume continues a single-process run"):
        train_artifact(dataset_dir, TrainConfig(), tmp_path / "m", resume=True, scale=ScaleConfig(workers=2))
    with pytest.raises(InputError, match="does not match the workers"):
        fit_distributed(two_communities(), TrainConfig(device="cuda"), ScaleConfig(workers=2))


def test_cli_two_workers_take_the_steps_of_one_process_and_write_an_artifact(
    ray_local, dataset_dir, tmp_path, capsys
):
    """One Ray Train run, end to end: ``recsys train --workers 2``, load, evaluate.

    LightGCN with no L2 term has a plain mean BPR loss, so the shards' weighted gradient sum is the global
    batch's gradient and 2 workers must take the steps of 1 process up to float rounding. The batch size
    leaves a 1-row tail batch, so one worker trains on an empty shard at the end of every epoch.
    """
    data = load_dataset(dataset_dir)
    pairs = data.train.size(1)
    batch_size = next((b for b in range(200, 600) if pairs % b == 1), pairs - 1)
    cfg = TrainConfig(
        model="lightgcn", embedding_dim=16, reg_weight=0.0, batch_size=batch_size, epochs=3, seed=4
    )
    one = fit(data, cfg, progress=False)
    out = tmp_path / "model"
    args = ["train", "-q", "--dataset", str(dataset_dir), "--out", str(out), "--model", "lightgcn"]
    args += ["--embedding-dim", "16", "--reg-weight", "0", "--batch-size", str(batch_size)]
    assert main([*args, "--epochs", "3", "--seed", "4", "--workers", "2"]) == 0
    assert "trained lightgcn" in capsys.readouterr().out
    art = load_artifact(out)
    torch.testing.assert_close(art.user_emb, one.embeddings.user, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(art.item_emb, one.embeddings.item, atol=1e-5, rtol=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == one.best_epoch and metrics["epochs_run"] == 3
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for a, b in zip(one.history, history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)  # averaged over both workers' rows
        assert b["valid"] == pytest.approx(a["valid"], abs=1e-5)
    assert not (tmp_path / "model.ckpt").exists()
    # The artifact holds the selected epoch's weights: evaluating them again gives the recorded numbers.
    test = evaluate_split(data, art.user_emb, art.item_emb, split="test", baselines=()).metrics
    assert test["recall@20"] == pytest.approx(metrics["test"]["recall@20"], abs=1e-5)
    assert main(["evaluate", "-q", "--artifact", str(out), "--dataset", str(dataset_dir)]) == 0
    report = json.loads((out / "eval_test.json").read_text())
    assert report["metrics"]["recall@20"] == pytest.approx(test["recall@20"])


class KillRankOneOnce:
    """Epoch callback: rank 1 logs each epoch it finishes, and dies once after ``epoch`` (a lost worker)."""

    def __init__(self, log, epoch):
        self.log, self.epoch = log, epoch

    def __call__(self, record):
        import ray.train

        if ray.train.get_context().get_world_rank() != 1:
            return
        seen = self.log.read_text().split() if self.log.exists() else []
        self.log.write_text(" ".join([*seen, str(record["epoch"])]))
        if record["epoch"] == self.epoch and str(self.epoch) not in seen:
            msg = "injected worker failure"
            raise RuntimeError(msg)


@pytest.mark.slow  # two more Ray Train runs, one with a worker-group restart: too slow for the default suite
def test_restarted_workers_end_exactly_as_an_uninterrupted_run(ray_local, tmp_path):
    """Ray restarts the worker group from rank 0's epoch checkpoint, every rank's noise stream included."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    data = two_communities()
    cfg = TrainConfig(model="xsimgcl", embedding_dim=8, batch_size=37, epochs=4, seed=2)
    full = fit_distributed(data, cfg, ScaleConfig(workers=2), progress=False)
    log = tmp_path / "epochs"
    scale = ScaleConfig(workers=2, max_failures=1, storage_path=str(tmp_path / "ray"))
    restarted = fit_distributed(data, cfg, scale, progress=False, callback=KillRankOneOnce(log, 2))
    assert log.read_text().split() == ["1", "2", "3", "4"]  # resumed after epoch 2, not from scratch
    assert torch.equal(full.embeddings.user, restarted.embeddings.user)
    assert torch.equal(full.embeddings.item, restarted.embeddings.item)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in full.history]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in restarted.history]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_two_workers_reach_the_recall_of_one(ray_local, tmp_path_factory, seed, capsys):
    """Equivalence check of issue #7 (run once by hand; numbers in the README's Scaling section)."""
    root = tmp_path_factory.mktemp("equiv")
    log = root / "log.csv"
    generate(
        SyntheticConfig(num_users=1000, num_items=800, num_interactions=30_000, seed=0), log, progress=False
    )
    ds = ingest(IngestConfig(out=root / "ds", spec=LogSpec("csv", time_col="timestamp"), input=log)).out
    data = load_dataset(ds)
    cfg = TrainConfig(model="xsimgcl", embedding_dim=32, batch_size=2048, epochs=20, seed=seed)
    one = fit(data, cfg, progress=False)
    two = fit_distributed(data, cfg, ScaleConfig(workers=2), progress=False)
    with capsys.disabled():
        print(
            f"\nseed {seed}: valid recall@20 1 worker {one.selection['recall@20']:.4f} "
            f"(epoch {one.best_epoch}), 2 workers {two.selection['recall@20']:.4f} (epoch {two.best_epoch}); "
            f"test {one.test['recall@20']:.4f} vs {two.test['recall@20']:.4f}"
        )
    assert two.selection["recall@20"] == pytest.approx(one.selection["recall@20"], abs=0.01)
