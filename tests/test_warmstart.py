"""Warm start: ids matched by raw id, the init rules against a naive per-row loop, training."""

import json
from dataclasses import replace

import polars as pl
import pytest
import torch

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
from pipelines.synthetic import SyntheticConfig, generate
from recsys.artifact import load_artifact, load_state_dict
from recsys.cli import main
from recsys.config import WARM_PATIENCE_STEPS, TrainConfig
from recsys.data.dataset import load_dataset
from recsys.errors import InputError
from recsys.training.jobs import train_artifact
from recsys.training.run import prepare_run
from recsys.training.warmstart import (
    WarmStart,
    load_parent,
    match_ids,
    warm_start_embeddings,
)


def test_match_ids_by_text_with_missing_ids():
    known = pl.Series([10, 20, 30])
    new = pl.Series(["30", "x", "10", "20", "40"])  # a later version whose ids became strings
    assert match_ids(known, new).tolist() == [2, -1, 0, 1, -1]
    assert match_ids(pl.Series(["a"]), pl.Series([], dtype=pl.String)).tolist() == []


def naive_warm_start(parent_user, parent_item, user_match, item_match, pairs, random_user, random_item):
    """The rules of recsys.training.warmstart, one row at a time."""
    edges = list(zip(pairs[0].tolist(), pairs[1].tolist(), strict=True))
    user, item = random_user.clone(), random_item.clone()
    for u, m in enumerate(user_match.tolist()):
        if m >= 0:
            user[u] = parent_user[m]
    informed = set()
    for i, m in enumerate(item_match.tolist()):
        if m >= 0:
            item[i] = parent_item[m]
            informed.add(i)
            continue
        neighbours = [u for u, j in edges if j == i and user_match[u] >= 0]
        if neighbours:
            item[i] = torch.stack([parent_user[user_match[u]] for u in neighbours]).mean(0)
            informed.add(i)
    for u, m in enumerate(user_match.tolist()):
        if m < 0:
            mine = [i for v, i in edges if v == u and i in informed]
            if mine:
                user[u] = torch.stack([item[i] for i in mine]).mean(0)
    return user, item


def test_init_rules_match_a_naive_per_row_computation():
    g = torch.Generator().manual_seed(0)
    parent_user, parent_item = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    # 8 users (5 new: 2, 4, 5, 6, 7), 7 items (3 new: 1, 4, 6)
    user_match = torch.tensor([3, 0, -1, 5, -1, -1, -1, -1])
    item_match = torch.tensor([4, -1, 0, 2, -1, 1, -1])
    pairs = torch.tensor(
        [
            [0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 6, 7, 0],
            # item 1: known neighbours 0, 1; item 4: known 3 and new 4; item 6: new users 5, 7 only
            [0, 1, 1, 4, 2, 3, 4, 4, 6, 6, 1, 6, 5],
        ]
    )
    random_user, random_item = torch.randn(8, 4, generator=g), torch.randn(7, 4, generator=g)
    args = (parent_user, parent_item, user_match, item_match, pairs, random_user, random_item)
    start, sources = warm_start_embeddings(*args)
    user, item = naive_warm_start(*args)
    torch.testing.assert_close(start.user, user)
    torch.testing.assert_close(start.item, item)
    assert sources.counts() == {
        "users_known": 3,
        "users_folded_in": 3,  # 2 (items 2, 3), 4 (item 4), 6 (item 1)
        "users_random": 2,  # 5 and 7: only item 6, which has no known neighbour
        "items_known": 4,
        "items_from_neighbours": 2,
        "items_random": 1,
    }
    assert torch.equal(start.item[6], random_item[6]) and torch.equal(start.user[5], random_user[5])
    assert torch.equal(random_user, args[5])  # the inputs are not modified


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Two versions of one log: v1 without 15 users and 8 items, v2 all of it, and an MF artifact on v1."""
    root = tmp_path_factory.mktemp("warm")
    log = root / "all.csv"
    generate(SyntheticConfig(num_users=120, num_items=80, num_interactions=3000, seed=2), log, progress=False)
    df = pl.read_csv(log)
    users = sorted(df["user_id"].drop_nulls().unique().to_list())
    items = sorted(df["item_id"].drop_nulls().unique().to_list())
    old = df.filter(~pl.col("user_id").is_in(users[-15:]) & ~pl.col("item_id").is_in(items[:8]))
    old.write_csv(root / "old.csv")
    spec = LogSpec("csv", time_col="timestamp")
    v1 = ingest(IngestConfig(out=root / "v1", spec=spec, input=root / "old.csv", split="temporal")).out
    v2 = ingest(IngestConfig(out=root / "v2", spec=spec, input=log, split="temporal")).out
    cfg = TrainConfig(model="lightgcn", embedding_dim=8, batch_size=256, epochs=2, seed=1, device="cpu")
    train_artifact(v1, cfg, root / "m1", progress=False)
    return {"root": root, "v1": v1, "v2": v2, "m1": root / "m1"}


def test_prepare_run_starts_from_the_parent_layer_0_by_raw_id(versions):
    parent = load_parent(versions["m1"])
    data = load_dataset(versions["v2"])
    cfg = parent.inherit_config({})
    warm = WarmStart.match(parent, data, cfg.protocol)
    run = prepare_run(data, cfg.resolved(), torch.device("cpu"), init=warm)
    user, item = run.order.restore(run.model.user_emb.detach(), run.model.item_emb.detach())
    # Known ids: exactly the parent's trained layer 0 (model.pt), looked up by raw id.
    table = load_state_dict(versions["m1"])["embedding"]
    old_users = load_artifact(versions["m1"]).users
    new_users = pl.read_parquet(versions["v2"] / "users.parquet")
    for raw in old_users["raw_id"].sample(10, seed=0):
        old = old_users.filter(pl.col("raw_id") == raw)["user_idx"][0]
        new = new_users.filter(pl.col("raw_id") == raw)["user_idx"][0]
        assert torch.equal(user[new], table[old])
    counts = warm.sources().counts()
    assert counts["users_known"] == old_users.height and counts["users_folded_in"] > 0
    assert counts["items_from_neighbours"] > 0
    # Everything else equals the naive rules over the model's own random init.
    fresh = prepare_run(data, cfg.resolved(), torch.device("cpu"))
    randoms = fresh.order.restore(fresh.model.user_emb.detach(), fresh.model.item_emb.detach())
    naive = naive_warm_start(parent.user, parent.item, warm.user_match, warm.item_match, data.train, *randoms)
    torch.testing.assert_close(user, naive[0])
    torch.testing.assert_close(item, naive[1])


def test_init_shrink_scales_every_inherited_row_and_is_recorded(versions):
    data = load_dataset(versions["v2"])
    plain, shrunk = load_parent(versions["m1"]), load_parent(versions["m1"], 0.3)
    torch.testing.assert_close(shrunk.user, 0.3 * plain.user)
    assert shrunk.record()["shrink"] == 0.3 and plain.record()["shrink"] == 1.0
    cfg = plain.inherit_config({}).resolved()
    runs = [
        prepare_run(data, cfg, torch.device("cpu"), init=WarmStart.match(p, data, cfg.protocol))
        for p in (plain, shrunk)
    ]
    (user_a, item_a), (user_b, item_b) = (
        run.order.restore(run.model.user_emb.detach(), run.model.item_emb.detach()) for run in runs
    )
    # Known rows and the rows derived from them (means are linear) shrink; random rows stay as drawn.
    src = WarmStart.match(plain, data, cfg.protocol).sources()
    inherited_users = src.known_users | src.folded_users
    inherited_items = src.known_items | src.neighbour_items
    torch.testing.assert_close(user_b[inherited_users], 0.3 * user_a[inherited_users])
    torch.testing.assert_close(item_b[inherited_items], 0.3 * item_a[inherited_items])
    assert torch.equal(user_b[~inherited_users], user_a[~inherited_users])
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(InputError, match="--init-shrink"):
            load_parent(versions["m1"], bad)


def test_init_shrink_without_a_parent_is_an_error(versions, tmp_path, capsys):
    argv = [
        "train",
        "-q",
        "--dataset",
        str(versions["v2"]),
        "--out",
        str(tmp_path / "m"),
        "--init-shrink",
        "0.5",
    ]
    assert main(argv) == 1
    assert "--init-shrink scales a warm start's parent rows" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_config_comes_from_the_artifact_then_file_then_flags(versions, tmp_path):
    parent = load_parent(versions["m1"])
    trained = load_artifact(versions["m1"]).config["config"]
    warm_stopping = {"patience_steps": WARM_PATIENCE_STEPS, "min_steps": 0}
    assert trained["patience_steps"] > WARM_PATIENCE_STEPS and trained["min_steps"] > 0
    assert parent.inherit_config({}).to_dict() == {**trained, **warm_stopping}
    cfg = parent.inherit_config({"lr": 0.01, "epochs": 3})
    assert (cfg.model, cfg.embedding_dim, cfg.lr, cfg.epochs, cfg.seed) == ("lightgcn", 8, 0.01, 3, 1)
    assert parent.inherit_config({"preset": "fast"}).lr == 5e-3  # the preset's lr, not the parent's
    chosen = parent.inherit_config({"patience_steps": 4000, "min_steps": 10})
    assert (chosen.patience_steps, chosen.min_steps) == (4000, 10)  # a file or flag still decides
    patient = {**trained, "patience_steps": 300}  # a parent that waited less than a warm start would
    impatient = replace(
        parent, artifact=replace(parent.artifact, config={**parent.artifact.config, "config": patient})
    )
    assert impatient.inherit_config({}).patience_steps == 300
    with pytest.raises(InputError, match=r"lightgcn artifact, not 'xsimgcl' \(from my.toml\)"):
        parent.inherit_config({"model": "xsimgcl"}, "my.toml")
    with pytest.raises(InputError, match="embedding size.*d = 8, not embedding_dim 16"):
        parent.inherit_config({"embedding_dim": 16})
    # Through the CLI: --config then the flags override the artifact; another --model is refused.
    (tmp_path / "c.toml").write_text("lr = 0.02\nepochs = 2\n")
    argv = ["train", "-q", "--dataset", str(versions["v2"]), "--init-from", str(versions["m1"])]
    assert (
        main([*argv, "--config", str(tmp_path / "c.toml"), "--epochs", "1", "--out", str(tmp_path / "a")])
        == 0
    )
    written = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (written["config"]["lr"], written["config"]["epochs"]) == (0.02, 1)
    assert written["parent"]["artifact_id"] == load_artifact(versions["m1"]).artifact_id
    assert main([*argv, "--model", "mf", "--out", str(tmp_path / "b")]) == 1
    assert not (tmp_path / "b").exists()


class Killed(Exception):
    """Stands for a kill of the training process."""


def test_warm_started_artifact_records_its_parent_and_resumes_exactly(versions, tmp_path):
    parent = load_parent(versions["m1"])
    cfg = parent.inherit_config({"epochs": 3})
    full = train_artifact(versions["v2"], cfg, tmp_path / "full", progress=False, init_from=parent)
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    record = config["parent"]
    assert record["artifact_id"] == parent.artifact_id and record["path"] == str(versions["m1"].resolve())
    assert record["trained_at"] == parent.artifact.config["trained_at"]
    assert record["dataset_sha256"] == parent.artifact.config["dataset"]["meta_sha256"]
    assert sum(v for k, v in record["init"].items() if k.startswith("users")) == full.embeddings.user.size(0)
    assert config["dataset"]["options"]["split"] == "temporal"  # the ingest options, for the next version
    # The report names the parent (its lineage line).
    page = tmp_path / "report.html"
    argv = ["report", "-q", "--artifact", str(tmp_path / "full"), "--dataset", str(versions["v2"])]
    assert main([*argv, "--baselines", "none", "--out", str(page)]) == 0
    assert f"warm-started from {parent.artifact_id} ({versions['m1'].resolve()}" in page.read_text()

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        train_artifact(versions["v2"], cfg, out, progress=False, init_from=parent, callback=kill_after_two)
    # The parent must be given again, the same one: the artifact names it.
    with pytest.raises(InputError, match="started with --init-from an artifact with id"):
        train_artifact(versions["v2"], cfg, out, progress=False, resume=True)
    with pytest.raises(InputError, match="init-shrink 0.5"):  # another factor: the artifact would misname it
        train_artifact(
            versions["v2"], cfg, out, progress=False, resume=True, init_from=load_parent(versions["m1"], 0.5)
        )
    resumed = train_artifact(versions["v2"], cfg, out, progress=False, resume=True, init_from=parent)
    assert torch.equal(resumed.embeddings.user, full.embeddings.user)
    assert torch.equal(resumed.embeddings.item, full.embeddings.item)
    assert json.loads((out / "config.json").read_text())["parent"] == record
    assert not (tmp_path / "resumed.ckpt").exists()
