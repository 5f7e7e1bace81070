"""Refit after selection (``recsys train --refit``) and the below-baseline warning."""

import json
import logging
import math

import numpy as np
import pytest
import torch

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
from recsys.artifact import load_artifact, load_artifact_model, read_history
from recsys.cli import build_parser, main
from recsys.config import TrainConfig, config_from_dict
from recsys.data.dataset import load_dataset
from recsys.data.protocol import excluded_splits
from recsys.errors import InputError
from recsys.evaluation.evaluate import evaluate_artifact, evaluate_split
from recsys.inference.recommend import Recommender
from recsys.training.distributed import ScaleConfig
from recsys.training.jobs import train_artifact


def planted_log(path, users=200, items=150, groups=6, per_user=20, noise=0.15, seed=0):
    """Users of ``groups`` communities, each mostly picking items of its own group, with a mild long tail.

    Structure a graph model learns in a few epochs and beats both reference rows on (lightgcn, lr 0.01,
    d 32, 10 epochs: valid Recall@20 0.41 against graph-filter 0.36 and popular 0.28).
    """
    rng = np.random.default_rng(seed)
    group = np.arange(items) % groups
    weight = 1.0 / np.sqrt(1 + np.arange(items))
    rows = ["user_id,item_id,timestamp"]
    for u in range(users):
        p = np.where(group == u % groups, weight, weight * noise)
        for t, i in enumerate(rng.choice(items, size=per_user, replace=False, p=p / p.sum())):
            rows.append(f"u{u},i{i},{t}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    """200 users x 150 items; temporal split, 3 valid and 3 test events per user (2,800 training pairs)."""
    root = tmp_path_factory.mktemp("refit")
    planted_log(root / "log.csv")
    spec = LogSpec("csv", time_col="timestamp")
    config = IngestConfig(
        out=root / "ds", spec=spec, input=root / "log.csv", split="temporal", valid_n=3, test_n=3
    )
    return ingest(config).out


def small(**values):
    """A quick lightgcn config (11 steps per epoch on train, 14 on train ∪ valid)."""
    base = {
        "model": "lightgcn",
        "embedding_dim": 16,
        "batch_size": 256,
        "lr": 0.01,
        "epochs": 5,
        "seed": 1,
        "baseline_check": False,
    }
    return TrainConfig(**{**base, **values})


def pair_set(pairs):
    return set(map(tuple, pairs.T.tolist()))


def seen_set(art):
    return {
        (u, int(i))
        for u in range(len(art.seen_indptr) - 1)
        for i in art.seen_indices[art.seen_indptr[u] : art.seen_indptr[u + 1]]
    }


def test_refit_learns_and_masks_valid_for_the_selected_step_count(planted_dir, tmp_path):
    data = load_dataset(planted_dir)
    out = tmp_path / "m"
    result = train_artifact(planted_dir, small(refit="valid"), out, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    history, refit = read_history(out), read_history(out, refit=True)
    # The step count is the selection run's best, taken from its log; the refit ends exactly there.
    best_step = history[metrics["best_epoch"] - 1]["step"]
    assert metrics["best_step"] == best_step == metrics["refit"]["steps"] == refit[-1]["step"]
    assert result.best_step == best_step
    per_epoch = math.ceil((data.train.size(1) + data.valid.size(1)) / 256)
    assert [r["step"] for r in refit] == [min(e * per_epoch, best_step) for e in range(1, len(refit) + 1)]
    assert len(refit) == math.ceil(best_step / per_epoch)
    assert all("valid" not in r and "test" not in r for r in refit)  # a refit selects on nothing
    assert metrics["refit"]["pairs"] == data.train.size(1) + data.valid.size(1)
    assert metrics["trained_on"] == ["train", "valid"] and metrics["held_out"] == ["test"]
    assert metrics["refit"]["selected_test"] == result.selected_test != result.test
    # seen.npz holds everything the model learned: serving never recommends a valid item again.
    art = load_artifact(out)
    assert seen_set(art) == pair_set(data.train) | pair_set(data.valid)
    assert art.trained_splits == ("train", "valid") and art.held_out_splits == ("test",)
    # Evaluated, the refit model's test figures are its own, and the filters see train ∪ valid as it did.
    report = evaluate_artifact(out, planted_dir, split="test", ks=(20,), baselines=("popular",))
    assert report.model is not None and report.model.metrics["recall@20"] == pytest.approx(
        result.test["recall@20"]
    )
    with pytest.raises(InputError, match="refit 'valid'"):
        evaluate_artifact(out, planted_dir, split="valid", baselines=())
    raw_users = art.users.sort("user_idx")["raw_id"].to_list()
    raw_items = art.items.sort("item_idx")["raw_id"].to_list()
    recs = Recommender(art).recommend(raw_users, k=30)
    known = {(raw_users[u], raw_items[i]) for u, i in pair_set(data.train) | pair_set(data.valid)}
    assert not any(
        (user, item) in known for user, rec in zip(raw_users, recs, strict=True) for item in rec.items
    )
    # Test is still held out, and the reported figures are the refit model's, as evaluation computes them.
    report = evaluate_split(data, art.user_emb, art.item_emb, split="test")
    assert report.model is not None
    for key in ("recall@20", "ndcg@20"):
        assert report.model.metrics[key] == pytest.approx(metrics["test"][key], abs=1e-6)


def test_refit_all_learns_test_and_says_it_has_no_held_out_figures(planted_dir, tmp_path, capsys):
    data = load_dataset(planted_dir)
    conf = tmp_path / "refit.toml"
    conf.write_text('model = "lightgcn"\nembedding_dim = 16\nepochs = 3\nbaseline_check = false\n')
    out = tmp_path / "deploy"
    argv = ["train", "-q", "--dataset", str(planted_dir), "--config", str(conf), "--out", str(out)]
    assert main([*argv, "--refit", "all"]) == 0
    assert "no held-out test figures" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test" not in metrics and "no held-out figures" in metrics["test_not_held_out"]
    assert metrics["held_out"] == [] and metrics["trained_on"] == ["train", "valid", "test"]
    assert set(metrics["refit"]["selected_test"]) >= {"recall@20", "ndcg@20"}  # the selected model's, honest
    art = load_artifact_model(out)
    assert art.held_out_splits == ()
    assert seen_set(art) == pair_set(data.train) | pair_set(data.valid) | pair_set(data.test)
    with pytest.raises(
        InputError, match="refit 'all' trains on train ∪ valid ∪ test, so no split is held out"
    ):
        excluded_splits("test", art.protocol, art.refit)
    with pytest.raises(InputError, match="no split is held out"):  # `recsys evaluate` refuses it too
        evaluate_artifact(out, planted_dir, split="test", baselines=())
    # The config round-trips: the file's values, the flag, and back through `recsys train --config`.
    saved = json.loads((out / "config.json").read_text())["config"]
    assert (saved["refit"], saved["baseline_check"], saved["epochs"]) == ("all", False, 3)
    assert config_from_dict(saved) == TrainConfig(**saved)
    again = tmp_path / "again.toml"
    again.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in saved.items() if v is not None))
    out2 = tmp_path / "deploy2"
    assert (
        main(["train", "-q", "--dataset", str(planted_dir), "--config", str(again), "--out", str(out2)]) == 0
    )
    assert json.loads((out2 / "config.json").read_text())["config"] == saved
    assert torch.equal(load_artifact_model(out2).user_emb, art.user_emb)


def test_a_bare_refit_flag_means_valid_and_bad_values_are_input_errors(tmp_path):
    args = build_parser().parse_args(["train", "--dataset", "d", "--out", "o", "--refit"])
    assert args.refit == "valid"
    args = build_parser().parse_args(["train", "--dataset", "d", "--out", "o", "--refit", "all"])
    assert args.refit == "all"
    with pytest.raises(InputError, match="unknown refit 'some'; expected one of none, valid, all"):
        TrainConfig(refit="some")
    with pytest.raises(InputError, match="refit 'valid' needs the honest protocol"):
        TrainConfig(refit="valid", protocol="paper")
    with pytest.raises(InputError, match="baseline_check must be true or false"):
        config_from_dict({"baseline_check": "yes"})
    with pytest.raises(InputError, match="--refit valid retrains in this process"):  # before Ray starts
        train_artifact(tmp_path, small(refit="valid"), tmp_path / "m", scale=ScaleConfig(workers=2))


class Killed(Exception):
    """Stands for a kill of the training process."""


def test_a_killed_refit_resumes_without_redoing_the_selection(planted_dir, tmp_path, caplog):
    cfg = small(refit="valid", epochs=4)
    full = train_artifact(planted_dir, cfg, tmp_path / "full", progress=False)
    assert full.refit is not None and full.refit["epochs"] >= 2  # so the kill below lands inside the refit

    def kill_in_the_refit(record):
        if record.get("phase") == "refit":
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        train_artifact(planted_dir, cfg, out, progress=False, callback=kill_in_the_refit)
    assert (tmp_path / "killed.ckpt" / "selection.json").is_file() and not out.exists()
    phases = []
    with caplog.at_level(logging.INFO, logger="recsys.training"):
        resumed = train_artifact(
            planted_dir,
            cfg,
            out,
            resume=True,
            progress=False,
            callback=lambda r: phases.append(r.get("phase")),
        )
    assert phases and set(phases) == {"refit"}  # no selection epoch ran again
    assert "resumed after selection" in caplog.text and "resumed the refit from epoch 1" in caplog.text
    assert torch.equal(resumed.embeddings.user, full.embeddings.user)
    assert torch.equal(resumed.embeddings.item, full.embeddings.item)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in read_history(out, refit=True)]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in full.refit_history]
    assert not (tmp_path / "killed.ckpt").exists()


def test_warns_in_one_line_when_the_selected_model_is_below_a_reference_row(planted_dir, tmp_path, caplog):
    data = load_dataset(planted_dir)
    # The reference rows as the public API computes them (the graph filter's SVD is seeded by the run's seed).
    rows = evaluate_split(data, None, None, split="valid", baselines=("popular", "graph-filter"), seed=1)
    expected = {row.name: row.metrics["recall@20"] for row in rows.baselines}
    # A learning rate too small to move the random init: the selected model ranks about at random.
    collapsed = small(lr=1e-6, epochs=1, baseline_check=True)
    with caplog.at_level(logging.WARNING, logger="recsys.training.jobs"):
        train_artifact(planted_dir, collapsed, tmp_path / "collapsed", progress=False)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "\n" not in text and "below popular and graph-filter on valid" in text
    assert f"popular {expected['popular']:.4f}" in text and "--model xsimgcl" in text
    check = json.loads((tmp_path / "collapsed" / "metrics.json").read_text())["baselines_on_valid"]
    assert check["below"] == ["popular", "graph-filter"]
    assert check["popular"] == pytest.approx(expected["popular"], abs=1e-6)
    assert check["graph-filter"] == pytest.approx(expected["graph-filter"], abs=1e-6)
    caplog.clear()
    # Trained well, it beats both rows: no warning, and the comparison is recorded all the same.
    good = small(embedding_dim=32, epochs=10, baseline_check=True)
    with caplog.at_level(logging.WARNING, logger="recsys.training.jobs"):
        train_artifact(planted_dir, good, tmp_path / "good", progress=False)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    check = json.loads((tmp_path / "good" / "metrics.json").read_text())["baselines_on_valid"]
    assert check["below"] == [] and check["model"] > max(expected.values())


def test_resume_may_add_a_refit_to_a_killed_selection_run(planted_dir, tmp_path):
    """``refit`` and ``baseline_check`` act after selection, so a selection checkpoint accepts a change."""
    out = tmp_path / "m"

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train_artifact(planted_dir, small(epochs=3), out, progress=False, callback=kill_after_two)
    resumed = train_artifact(planted_dir, small(epochs=3, refit="valid"), out, resume=True, progress=False)
    assert resumed.refit is not None and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["config"]["refit"] == "valid"
