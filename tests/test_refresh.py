"""`recsys refresh` end to end against a real Ray Serve on 127.0.0.1, started once for the module.

Model v1 is trained on an old log that lacks some users and items and is served; a refresh with the whole
log promotes a warm-started challenger with no failed request during the swap, and the new users get
answers; a refresh on corrupted training data is not promoted, and the service keeps its model.
"""

import json
import shutil
import threading
import urllib.error
import urllib.request

import polars as pl
import pytest
import torch
from toy_artifact import make_artifact

from pipelines.refresh import EXIT_NOT_PROMOTED, RefreshConfig, champion_scorer, ingest_like
from pipelines.synthetic import SyntheticConfig, generate
from recsys.artifact import load_artifact, read_history
from recsys.cli import main
from recsys.data.dataset import Dataset
from recsys.errors import InputError
from recsys.inference.recommend import Recommender
from recsys.training.jobs import train_artifact
from recsys.training.warmstart import load_parent
from serving.app import ServeArgs
from serving.runner import running

PORT = 18241
BASE = f"http://127.0.0.1:{PORT}"
TOKEN = "refresh-token"
TRAIN = ["--preset", "fast", "--embedding-dim", "32", "--batch-size", "256", "--cl-weight", "0.05"]


def get(path):
    try:
        with urllib.request.urlopen(f"{BASE}{path}", timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """v1: an XSimGCL artifact on the log without its last 40 users and 20 items, served on PORT."""
    root = tmp_path_factory.mktemp("refresh")
    log = root / "all.csv"
    generate(
        SyntheticConfig(num_users=400, num_items=200, num_interactions=10_000, seed=4), log, progress=False
    )
    df = pl.read_csv(log)
    users = sorted(df["user_id"].drop_nulls().unique().to_list())
    items = sorted(df["item_id"].drop_nulls().unique().to_list())
    df.filter(~pl.col("user_id").is_in(users[-40:]) & ~pl.col("item_id").is_in(items[-20:])).write_csv(
        root / "old.csv"
    )
    ingest = ["ingest", "-q", "--format", "csv", "--time-col", "timestamp", "--split", "temporal"]
    assert main([*ingest, "--input", str(root / "old.csv"), "--out", str(root / "v1-data")]) == 0
    train = [
        "train",
        "-q",
        "--dataset",
        str(root / "v1-data"),
        "--model",
        "xsimgcl",
        *TRAIN,
        "--epochs",
        "15",
    ]
    assert main([*train, "--out", str(root / "v1")]) == 0
    args = ServeArgs(artifact=str((root / "v1").resolve()), admin_token=TOKEN, num_cpus=0.5)
    with running(args, port=PORT):
        yield {"root": root, "log": log, "v1": root / "v1", "new_users": users[-40:], "known_user": users[0]}


def refresh_argv(champion, workdir, *more):
    return ["refresh", "-q", "--champion", str(champion), "--workdir", str(workdir), *more, "--epochs", "5"]


@pytest.mark.serve
def test_refresh_promotes_a_warm_started_challenger_without_failing_a_request(world, capsys):
    v1 = load_artifact(world["v1"])
    new_user = world["new_users"][0]
    assert get(f"/recommend/{new_user}")[0] == 404
    assert get("/model")[1]["parent"] is None  # v1 was trained from scratch

    done, failures, versions = threading.Event(), [], []

    def load():
        after = 0
        for _ in range(100_000):  # bounded: before, during and a little after the swap
            status, body = get(f"/recommend/{world['known_user']}?k=5")
            if status != 200:
                failures.append((status, body))
            versions.append(body.get("model_version"))
            after += done.is_set()
            if after >= 20:
                break

    thread = threading.Thread(target=load)
    thread.start()
    workdir = world["root"] / "run-1"
    argv = refresh_argv(
        world["v1"], workdir, "--log", str(world["log"]), "--serve-url", BASE, "--token", TOKEN
    )
    try:
        code = main(argv)
    finally:
        done.set()
        thread.join(timeout=120)
    out = capsys.readouterr().out
    assert code == 0, out
    challenger = load_artifact(workdir / "challenger")
    assert "decision: PROMOTE" in out and "outcome: promoted" in out and "recall@20" in out
    assert not failures and not thread.is_alive()
    assert set(versions) == {v1.artifact_id, challenger.artifact_id}  # the swap happened under load
    history = [json.loads(line) for line in (workdir / "challenger" / "log.jsonl").read_text().splitlines()]
    best = json.loads((workdir / "challenger" / "metrics.json").read_text())["best_epoch"]
    trained = f"trained {len(history)} epochs ({history[-1]['step']:,} steps) in "
    assert trained in out and f"; best epoch {best} (valid recall@20 " in out
    assert "ended by the epoch cap" in out  # --epochs 5, fewer steps than the rule's patience

    status, body = get(f"/recommend/{new_user}?k=5")
    assert status == 200 and len(body["items"]) == 5 and body["model_version"] == challenger.artifact_id
    model = get("/model")[1]
    assert model["artifact_id"] == challenger.artifact_id
    assert model["parent"]["artifact_id"] == v1.artifact_id
    assert model["parent"]["path"] == str(world["v1"].resolve())
    assert model["parent"]["trained_at"] == v1.config["trained_at"]
    state = json.loads((workdir / "state.json").read_text())
    assert state["promoted"]["to"] == BASE and state["challenger"]["artifact_id"] == challenger.artifact_id
    # The ingest options came from the champion: the same temporal split of the new log.
    meta = json.loads((workdir / "dataset" / "meta.json").read_text())
    assert meta["options"]["split"] == "temporal" and meta["options"]["spec"]["time_col"] == "timestamp"

    # Re-run: promoted already (state.json), nothing is retrained or reloaded.
    assert main(argv) == 0
    assert "outcome: already promoted" in capsys.readouterr().out
    # A crash after the reload but before the state was written: /model shows it is served; not reloaded.
    del state["promoted"]
    (workdir / "state.json").write_text(json.dumps(state))
    assert main(argv) == 0
    assert "already serves" in capsys.readouterr().out
    world["served"] = workdir / "challenger"
    # v1 is no longer served: refreshing it against this service is refused before any work (exit 4).
    other = world["root"] / "run-other"
    assert (
        main(
            refresh_argv(
                world["v1"], other, "--log", str(world["log"]), "--serve-url", BASE, "--token", TOKEN
            )
        )
        == 4
    )
    assert "not the champion" in capsys.readouterr().err and not (other / "dataset").exists()


def corrupt(dataset, out):
    """A copy of a dataset whose training items are shuffled across users (valid and test stay clean)."""
    shutil.copytree(dataset, out)
    train = pl.read_parquet(out / "train.parquet")
    perm = torch.randperm(train.height, generator=torch.Generator().manual_seed(0)).numpy()
    shuffled = train.with_columns(pl.Series("item_idx", train["item_idx"].to_numpy()[perm]))
    shuffled.unique(["user_idx", "item_idx"]).sort("user_idx", "item_idx").write_parquet(
        out / "train.parquet"
    )
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "corrupted": "train items shuffled"}))
    return out


@pytest.mark.serve
def test_a_refresh_with_a_worse_challenger_is_not_promoted(world, capsys):
    champion = world.get("served", world["v1"])  # what the service serves (the test above may have swapped)
    served = get("/model")[1]["artifact_id"]
    assert served == load_artifact(champion).artifact_id
    clean = world["root"] / "clean"
    ingest = ["ingest", "-q", "--format", "csv", "--time-col", "timestamp", "--split", "temporal"]
    assert main([*ingest, "--input", str(world["log"]), "--out", str(clean)]) == 0
    bad = corrupt(clean, world["root"] / "corrupted")
    workdir = world["root"] / "run-bad"
    argv = refresh_argv(champion, workdir, "--dataset", str(bad), "--serve-url", BASE, "--token", TOKEN)
    assert main(argv) == EXIT_NOT_PROMOTED
    out = capsys.readouterr().out
    assert "decision: KEEP THE CHAMPION" in out and "outcome: not promoted" in out
    decision = json.loads((workdir / "decision.json").read_text())
    assert not decision["promote"] and decision["challenger"]["recall@20"] < decision["threshold"]
    assert get("/model")[1]["artifact_id"] == served
    assert "promoted" not in json.loads((workdir / "state.json").read_text())


class Killed(Exception):
    """Stands for a kill of the refresh process while it trains."""


@pytest.mark.serve
def test_a_refresh_killed_while_training_resumes_on_re_run(world, capsys):
    workdir = world["root"] / "run-killed"
    parent = load_parent(world["v1"])
    data = ingest_like(parent.artifact, world["log"], workdir)  # stage 1 as refresh runs it

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):  # stage 2, killed after two epochs
        train_artifact(
            data,
            parent.inherit_config({"epochs": 5}),
            workdir / "challenger",
            progress=False,
            init_from=parent,
            callback=kill_after_two,
        )
    killed = (workdir / "challenger.ckpt" / "log.jsonl").read_text().splitlines()
    assert main(refresh_argv(world["v1"], workdir, "--log", str(world["log"]))) == 0
    assert "outcome: promoted: the new model is the artifact" in capsys.readouterr().out
    history = (workdir / "challenger" / "log.jsonl").read_text().splitlines()
    # The first two epochs are the killed run's own records (their timings too): continued, not restarted.
    assert len(history) == 5 and history[:2] == killed
    assert not (workdir / "challenger.ckpt").exists()


@pytest.mark.serve
def test_bad_refresh_options_are_clear_errors(world, tmp_path):
    with pytest.raises(InputError, match="--log FILE .* or --dataset DIR, not both"):
        RefreshConfig(champion=world["v1"], workdir=tmp_path)
    with pytest.raises(InputError, match="needs the service's admin token"):
        RefreshConfig(champion=world["v1"], workdir=tmp_path, log=world["log"], serve_url=BASE)
    with pytest.raises(InputError, match="--margin must be >= 0"):
        RefreshConfig(champion=world["v1"], workdir=tmp_path, log=world["log"], margin=-0.1)
    # A work directory of another champion is refused.
    (tmp_path / "state.json").write_text(json.dumps({"champion": {"artifact_id": "other"}}))
    assert main(refresh_argv(world["v1"], tmp_path, "--log", str(world["log"]))) == 1


def test_the_champion_scores_a_new_version_by_raw_id(tmp_path):
    """Known users keep their rows, new ones are folded in (or get popular items), new items are masked."""
    champion = load_artifact(make_artifact(tmp_path, "v1"))  # users ann, bob, cy; items 10, 20, 30, 40
    ds = tmp_path / "v2"
    ds.mkdir()
    pl.DataFrame({"user_idx": [0, 1, 2], "raw_id": ["ann", "dan", "eve"]}).write_parquet(ds / "users.parquet")
    pl.DataFrame({"item_idx": [0, 1, 2], "raw_id": [20, 50, 10]}).write_parquet(ds / "items.parquet")
    # ann: 20; dan (new): 10, 20, 50; eve (new): 50 only, which v1 does not know
    train = torch.tensor([[0, 1, 1, 1, 2], [0, 0, 1, 2, 1]])
    data = Dataset(3, 3, train, train[:, :0], train[:, :0], path=ds)
    scorer, coverage = champion_scorer(champion, data, train)
    assert coverage == {
        "users_known": 1,
        "users_folded_in": 1,
        "users_popular_fallback": 1,
        "items_known": 2,
        "items_unknown": 1,
    }
    scores = torch.empty(3, 3)
    scorer(torch.arange(3), scores)
    rec = Recommender(champion)
    ann = rec.user_emb[0] @ rec.item_emb[[1, 0]].T  # v1 rows of items 20 and 10
    dan = rec.fold_in(torch.tensor([0, 1])) @ rec.item_emb[[1, 0]].T
    eve = rec.item_degree[[1, 0]].float()  # the popular fallback: training counts
    for row, expected in zip(scores, (ann, dan, eve), strict=True):
        torch.testing.assert_close(row[[0, 2]], expected)
        assert row[1] == -torch.inf  # item 50: not recommendable by v1


def test_training_log_reader_names_the_file_and_line_it_cannot_parse(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"epoch": 1, "step": 4}\n\n{"epoch": 2, "step": 8}\n{"epoch": 3,\n')
    with pytest.raises(InputError, match=r"log\.jsonl: line 4: not valid JSON"):
        read_history(tmp_path)
    (tmp_path / "log.jsonl").write_text('{"epoch": 1, "step": 4}\n\n{"epoch": 2, "step": 8}\n')
    assert [r["step"] for r in read_history(tmp_path)] == [4, 8]  # blank lines skipped
    with pytest.raises(InputError, match=r"log\.jsonl: cannot read"):
        read_history(tmp_path / "missing")
