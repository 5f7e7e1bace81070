"""The accuracy benchmark (`benchmarks/accuracy.py`): its --rows grammar, and a smoke grid on the sample.

The grid test is slow (a short training and the baselines in a subprocess, run twice); the default suite
leaves it out.
"""

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def accuracy(monkeypatch):
    """The benchmark module, imported as its script runs (benchmarks/ on the path)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("accuracy")


def test_rows_are_builtins_and_recipes_with_their_keys(accuracy):
    rows = accuracy.parse_rows(
        ["default,mf,xsimgcl-l005:model=xsimgcl,cl_weight=0.05,popular", "deep:model=lightgcn,num_layers=3"]
    )
    assert [(r.name, r.recipe) for r in rows] == [
        ("default", {}),
        ("mf", {"model": "mf"}),
        ("xsimgcl-l005", {"model": "xsimgcl", "cl_weight": 0.05}),
        ("popular", None),
        ("deep", {"model": "lightgcn", "num_layers": 3}),
    ]
    cfg = accuracy.row_config(rows[2], seed=1, threads=1, max_epochs=4)
    assert (cfg.model, cfg.cl_weight, cfg.seed, cfg.protocol, cfg.epochs) == ("xsimgcl", 0.05, 1, "honest", 4)
    today = accuracy.TrainConfig(protocol="honest", threads=1).resolved()
    assert accuracy.row_config(rows[0], 0, 1, None) == today  # the default row is TrainConfig() as it is now


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("nope", "unknown row 'nope'"),
        ("cl_weight=0.1", "belongs to no recipe"),
        ("x:model=xsimgcl,seed=3", "set by the grid"),
        ("x:model=xsimgcl,cl_wieght=0.1", "cl_wieght"),
        ("x:model=bert", "unknown model"),
        ("mf,mf", "distinct row names"),
        ("mf:model=mf", "bad recipe name"),
    ],
)
def test_bad_rows_name_what_is_wrong(accuracy, text, match):
    with pytest.raises(InputError, match=match):
        accuracy.parse_rows([text])


def _smoke(out: Path) -> tuple[str, str]:
    command = [sys.executable, "benchmarks/accuracy.py", "--graphs", "sample", "--rows", "default,popular"]
    command += ["--seeds", "0", "--max-epochs", "3", "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr  # the table, the log


def _popular_recall(dataset: Path) -> float:
    """Most popular on train, train and valid items masked, Recall@20 on test: a naive per-user loop."""
    train, valid, test = (pl.read_parquet(dataset / f"{s}.parquet") for s in ("train", "valid", "test"))
    num_items = pl.read_parquet(dataset / "items.parquet").height
    popularity = np.bincount(train["item_idx"].to_numpy(), minlength=num_items)
    order = np.lexsort((np.arange(num_items), -popularity))  # ties: smaller index first
    seen = pl.concat([train, valid]).group_by("user_idx").agg("item_idx")
    seen_by_user = {u: set(items) for u, items in seen.iter_rows()}
    recalls = []
    for user, relevant in test.group_by("user_idx").agg("item_idx").iter_rows():
        top = [i for i in order if i not in seen_by_user.get(user, set())][:20]
        recalls.append(len(set(top) & set(relevant)) / len(relevant))
    return float(np.mean(recalls))


@pytest.mark.slow
def test_smoke_grid_reports_rows_from_their_runs_and_skips_them_again(tmp_path):
    table, log = _smoke(tmp_path)
    assert "training sample default seed 0" in log
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["protocol"], summary["seeds"], [g["graph"] for g in summary["graphs"]]) == (
        "honest",
        [0],
        ["sample"],
    )
    default, popular = summary["rows"]
    assert (default["row"], popular["row"], popular["baseline"]) == ("default", "popular", True)

    # The trained row is its artifact's test metrics, selected epoch and training time to it.
    run = tmp_path / "runs/sample/default/seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert default["test_recall@20"]["values"] == [metrics["test"]["recall@20"]]
    assert default["test_ndcg@20"]["values"] == [metrics["test"]["ndcg@20"]]
    assert default["best_epoch"] == [metrics["best_epoch"]] and default["epochs"] == [3]
    assert default["ended_by"] == ["cap"]
    to_best = sum(r["train_seconds"] for r in records if r["epoch"] <= metrics["best_epoch"])
    assert default["train_s_to_best"]["mean"] == pytest.approx(to_best, abs=1e-3)

    # The floor epoch: steps per epoch x 4 products at the mean of the products timed before and after.
    cell = json.loads((tmp_path / "cells/sample/default/seed0.json").read_text())
    train_pairs = summary["graphs"][0]["pairs"]["train"]
    steps = math.ceil(train_pairs / 2048)
    assert summary["graphs"][0]["floor_steps_per_epoch"] == steps
    assert cell["floor_epoch_s"] == pytest.approx(np.mean(cell["floor_spmm_ms"]) / 1000 * 4 * steps, rel=1e-3)
    assert cell["floor_epochs_to_best"] == pytest.approx(to_best / cell["floor_epoch_s"], rel=0.01)
    assert all(ms > 0 for ms in cell["floor_spmm_ms"])

    # The baseline row is most popular computed by hand.
    assert popular["seeds"] == [None]
    assert popular["test_recall@20"]["mean"] == pytest.approx(
        _popular_recall(tmp_path / "graphs/sample"), abs=1e-6
    )

    # The markdown table: a header per graph and one line per row.
    assert "**sample**: " in table and "honest protocol" in table
    assert f"| default | {default['describe']} | 1 | {metrics['test']['recall@20']:.4f} |" in table
    assert "| popular | baseline | - | " in table
    assert (tmp_path / "summary.md").read_text().strip() == table.strip()

    again, log = _smoke(tmp_path)  # every cell is recorded: nothing trains or evaluates again
    assert "training sample" not in log and "baselines" not in log
    assert again == table
