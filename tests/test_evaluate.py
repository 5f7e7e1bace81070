"""The chunked full-ranking evaluator, the protocols, reports and ``recsys evaluate``."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import fields

import numpy as np
import polars as pl
import pytest
import torch
from toy_artifact import random_artifact

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
from recsys.artifact import ArtifactModel, load_artifact, load_artifact_model
from recsys.cli import main
from recsys.data.dataset import Dataset, load_dataset
from recsys.data.protocol import Protocol, excluded_splits, training_splits
from recsys.errors import InputError
from recsys.evaluation.baselines import PopularityScorer, RandomScorer
from recsys.evaluation.evaluate import evaluate_split
from recsys.evaluation.metrics import ranking_metrics
from recsys.evaluation.ranking import GroundTruth, evaluate_embeddings, full_ranking, topk_items
from recsys.evaluation.report import format_report, write_report
from recsys.inference.scoring import EmbeddingScorer, FunctionScorer
from recsys.inference.topk import TOPK_BLOCK, ChunkedPairs, auto_batch_size, excluded_pairs, topk_rows

NUM_USERS, NUM_ITEMS, DIM = 25, 40, 8


def _pairs(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero().t().contiguous()


@pytest.fixture
def toy() -> dict[str, torch.Tensor]:
    """Random embeddings and disjoint train/valid/test pairs; users 0-2 have no test items."""
    g = torch.Generator().manual_seed(0)
    split = torch.randint(0, 12, (NUM_USERS, NUM_ITEMS), generator=g)  # 0-2 train, 3 valid, 4 test
    split[:3][split[:3] == 4] = 5
    split[torch.arange(3, NUM_USERS), torch.arange(3, NUM_USERS)] = 4  # every other user has test items
    return {
        "user": torch.randn(NUM_USERS, DIM, generator=g),
        "item": torch.randn(NUM_ITEMS, DIM, generator=g),
        "train": _pairs(split <= 2),
        "valid": _pairs(split == 3),
        "test": _pairs(split == 4),
    }


def _naive_lists(scores: torch.Tensor, exclude: torch.Tensor, users: list[int], k: int) -> torch.Tensor:
    """Top-k per user with a Python loop over users and items."""
    seen: dict[int, set[int]] = {}
    for u, i in exclude.t().tolist():
        seen.setdefault(u, set()).add(i)
    lists = []
    for u in users:
        ranked = sorted(range(scores.size(1)), key=lambda i: -float(scores[u, i]))
        lists.append([i for i in ranked if i not in seen.get(u, set())][:k])
    return torch.tensor(lists)


def test_equals_naive_per_user_loop(toy) -> None:
    exclude = torch.cat([toy["train"], toy["valid"]], dim=1)
    users = torch.unique(toy["test"][0])
    scores = toy["user"] @ toy["item"].t()
    lists = _naive_lists(scores, exclude, users.tolist(), k=10)
    remap = torch.full((NUM_USERS,), -1)
    remap[users] = torch.arange(users.numel())
    expected = ranking_metrics(
        lists, torch.stack([remap[toy["test"][0]], toy["test"][1]]), [1, 5, 10], num_items=40
    )
    for batch_size in (1, 4, 1000):
        result = evaluate_embeddings(
            toy["user"], toy["item"], toy["test"], exclude=exclude, ks=[1, 5, 10], batch_size=batch_size
        )
        assert result.metrics == pytest.approx(expected, abs=1e-12)
        assert (result.num_users, result.num_skipped) == (NUM_USERS - 3, 3)
    top = topk_items(
        EmbeddingScorer(toy["user"], toy["item"]), users, 10, num_users=25, num_items=40, exclude=exclude
    )
    assert torch.equal(top, lists)


def test_masked_items_never_in_top_k(toy) -> None:
    # Train items get the highest scores, so any leak in the masking would show up at the top.
    boost = torch.zeros(NUM_USERS, NUM_ITEMS)
    boost[toy["train"][0], toy["train"][1]] = 1e6
    scorer = FunctionScorer(lambda users: boost[users] + torch.rand(users.numel(), NUM_ITEMS))
    top = topk_items(
        scorer, torch.arange(NUM_USERS), 20, num_users=25, num_items=40, exclude=toy["train"], batch_size=3
    )
    assert top.shape == (NUM_USERS, 20)
    for u, i in toy["train"].t().tolist():
        assert i not in top[u].tolist()
    # Ground truth that is also excluded can never be hit.
    result = full_ranking(scorer, toy["train"], num_users=25, num_items=40, exclude=toy["train"], ks=[5])
    assert result.metrics["recall@5"] == 0.0


def test_short_lists_are_padded() -> None:
    user, item = torch.ones(2, 1), torch.tensor([[3.0], [2.0], [1.0]])
    exclude = torch.tensor([[0, 0], [0, 2]])  # user 0 keeps only item 1
    top = topk_items(
        EmbeddingScorer(user, item), torch.arange(2), 5, num_users=2, num_items=3, exclude=exclude
    )
    assert top.tolist() == [[1, -1, -1, -1, -1], [0, 1, 2, -1, -1]]
    result = evaluate_embeddings(user, item, torch.tensor([[0, 1], [1, 2]]), exclude=exclude, ks=[5])
    assert result.metrics["recall@5"] == 1.0
    assert result.metrics["precision@5"] == pytest.approx(1 / 5)
    assert result.metrics["mrr@5"] == pytest.approx((1 + 1 / 3) / 2)
    assert result.metrics["coverage@5"] == 1.0


def test_users_without_ground_truth_are_skipped_and_counted(toy) -> None:
    result = evaluate_embeddings(toy["user"], toy["item"], toy["test"][:, toy["test"][0] >= 20], ks=[5])
    assert (result.num_users, result.num_skipped) == (5, 20)
    only = evaluate_embeddings(
        toy["user"][20:],
        toy["item"],
        toy["test"][:, toy["test"][0] >= 20] - torch.tensor([[20], [0]]),
        ks=[5],
    )
    assert result.metrics == pytest.approx(only.metrics)


def test_perfect_scores_give_one() -> None:
    # User u likes exactly items 2u and 2u+1; the embeddings put them on top.
    truth = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 5]])
    item = torch.eye(3).repeat_interleave(2, dim=0)  # items 2u, 2u+1 -> axis u
    result = evaluate_embeddings(torch.eye(3), item, truth, ks=[2])
    for name in ("recall", "ndcg", "precision", "hit", "mrr"):
        assert result.metrics[f"{name}@2"] == pytest.approx(1.0)


def test_popularity_scorer_ranks_by_train_count_with_index_ties() -> None:
    train = torch.tensor([[0, 1, 2, 0, 1, 0], [3, 3, 3, 1, 1, 4]])  # counts: 3 -> 3, 1 -> 2, 4 -> 1
    scorer = PopularityScorer(train, num_items=6)
    top = topk_items(scorer, torch.arange(3), 6, num_users=3, num_items=6)
    assert top[0].tolist() == [3, 1, 4, 0, 2, 5]
    top = topk_items(scorer, torch.arange(3), 3, num_users=3, num_items=6, exclude=train)
    assert top.tolist() == [[0, 2, 5], [4, 0, 2], [1, 4, 0]]


def test_random_scorer_is_reproducible_and_near_chance(toy) -> None:
    def run(seed: int) -> dict[str, float]:
        return full_ranking(
            RandomScorer(seed), toy["test"], num_users=25, num_items=40, ks=[10], batch_size=7
        ).metrics

    assert run(3) == run(3)
    assert run(3) != run(4)
    # Expected precision@10 of a random list is |R_u| / num_items on average.
    big = torch.rand(400, 1000, generator=torch.Generator().manual_seed(1)) < 0.05
    res = full_ranking(RandomScorer(0), _pairs(big), num_users=400, num_items=1000, ks=[50]).metrics
    assert res["precision@50"] == pytest.approx(0.05, abs=0.01)


def test_protocol_exclusion_rules() -> None:
    assert excluded_splits("valid", "honest") == ("train",)
    assert excluded_splits("test", Protocol.HONEST) == ("train", "valid")
    assert excluded_splits("test", "paper") == ("train", "valid")
    assert training_splits("honest") == ("train",)
    assert training_splits("paper") == ("train", "valid")
    with pytest.raises(InputError, match="paper"):
        excluded_splits("valid", "paper")
    with pytest.raises(InputError, match="split"):
        excluded_splits("train")
    with pytest.raises(InputError, match="protocol"):
        excluded_splits("test", "optimistic")


def _dataset(toy) -> Dataset:
    return Dataset(NUM_USERS, NUM_ITEMS, toy["train"], toy["valid"], toy["test"])


def test_evaluate_split_report(toy, tmp_path) -> None:
    ds = _dataset(toy)
    report = evaluate_split(ds, toy["user"], toy["item"], split="test", ks=[5, 10], batch_size=6)
    direct = evaluate_embeddings(
        toy["user"],
        toy["item"],
        toy["test"],
        exclude=torch.cat([toy["train"], toy["valid"]], 1),
        ks=[5, 10],
        item_popularity=torch.bincount(toy["train"][1], minlength=NUM_ITEMS),
    )
    assert report.protocol is Protocol.HONEST
    assert (report.split, report.ks, report.num_users, report.num_skipped) == ("test", (5, 10), 22, 3)
    assert {k: report.metrics[k] for k in direct.metrics} == pytest.approx(direct.metrics)
    assert [row.name for row in report.rows] == ["model", "popular", "random"]
    assert report.excluded == ("train", "valid")

    data = json.loads(write_report(report, tmp_path / "r.json").read_text())
    assert data["protocol"] == "honest"
    assert data["metrics"]["recall@10"] == pytest.approx(report.metrics["recall@10"])
    assert set(data["baselines"]) == {"popular", "random"}
    assert (data["num_users"], data["num_skipped"], data["ks"]) == (22, 3, [5, 10])
    assert set(data["model"]["segments"]["users"]) == {"cold", "regular", "heavy"}
    assert data["segments"]["thresholds"]["head_share"] == 0.2
    assert data["embedding"]["alignment"] == pytest.approx(report.embedding["alignment"])
    assert data["data"]["interactions"]["test"] == toy["test"].size(1)

    table = format_report(report)
    assert table.splitlines()[0].startswith("protocol honest | split test")
    assert "users evaluated 22 | skipped (no ground truth) 3" in table
    assert "recall@10" in table and "coverage@5" in table and "gini@10" in table
    # Each row: one line per K block and one in the segment block.
    assert sum(line.startswith(("model ", "popular", "random")) for line in table.splitlines()) == 9
    assert "head items have >=" in table and "embedding geometry: alignment" in table


def test_paper_protocol_uses_train_and_valid(toy) -> None:
    ds = _dataset(toy)
    honest = evaluate_split(ds, split="test", ks=[5], baselines=["popular"])
    paper = evaluate_split(ds, split="test", protocol="paper", ks=[5], baselines=["popular"])
    assert paper.protocol is Protocol.PAPER and paper.model is None
    train_valid = torch.cat([toy["train"], toy["valid"]], 1)
    expected = full_ranking(
        PopularityScorer(train_valid, NUM_ITEMS),
        toy["test"],
        num_users=25,
        num_items=40,
        exclude=train_valid,
        ks=[5],
        item_popularity=torch.bincount(train_valid[1], minlength=NUM_ITEMS),
    )
    assert {k: paper.baselines[0].metrics[k] for k in expected.metrics} == pytest.approx(expected.metrics)
    assert honest.baselines[0].metrics["popularity@5"] != paper.baselines[0].metrics["popularity@5"]
    with pytest.raises(InputError, match="paper"):
        evaluate_split(ds, split="valid", protocol="paper")


def test_bad_inputs_raise(toy) -> None:
    with pytest.raises(ValueError, match="ground_truth"):
        evaluate_embeddings(toy["user"], toy["item"], torch.tensor([[0], [NUM_ITEMS]]))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_embeddings(toy["user"], toy["item"], toy["test"], batch_size=0)
    with pytest.raises(ValueError, match="item_emb"):
        EmbeddingScorer(toy["user"], toy["item"][:, :3])
    with pytest.raises(InputError, match="do not fit the dataset.s 25 users"):
        evaluate_split(_dataset(toy), toy["user"][:5], toy["item"])
    with pytest.raises(InputError, match="baseline"):
        evaluate_split(_dataset(toy), baselines=["oracle"])
    assert auto_batch_size(40_981) == 1637
    assert auto_batch_size(10) == 4096


@pytest.mark.gpu
def test_follows_the_embeddings_device(toy) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = evaluate_embeddings(toy["user"], toy["item"], toy["test"], exclude=toy["train"], ks=[5])
    gpu = evaluate_embeddings(
        toy["user"].cuda(), toy["item"].cuda(), toy["test"], exclude=toy["train"], ks=[5]
    )
    assert gpu.metrics == pytest.approx(cpu.metrics, abs=1e-6)


LOG = "user_id,item_id\n" + "".join(f"u{u},i{(u * 7 + j * 3) % 23}\n" for u in range(30) for j in range(8))


@pytest.fixture
def tiny_dataset(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    out = tmp_path / "ds"
    ingest(IngestConfig(out=out, spec=LogSpec("csv"), input=path, split="random", seed=0))
    return out


def test_cli_evaluate_artifact(tiny_dataset, tmp_path, capsys) -> None:
    artifact = tmp_path / "run"
    ds, user, item = random_artifact(tiny_dataset, artifact)
    code = main(
        ["evaluate", "-q", "--artifact", str(artifact), "--dataset", str(tiny_dataset), "--k", "5,10"]
    )
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("protocol honest | split test (excluding train + valid)")
    assert any(line.startswith("mf ") for line in lines)
    assert any(line.startswith("popular ") for line in lines)
    assert f"wrote {artifact / 'eval_test.json'}" in out
    data = json.loads((artifact / "eval_test.json").read_text())
    assert data["protocol"] == "honest" and data["split"] == "test" and data["ks"] == [5, 10]
    assert data["artifact"] == str(artifact)
    assert data["num_users"] + data["num_skipped"] == ds.num_users
    expected = evaluate_split(ds, user, item, ks=[5, 10], baselines=())
    assert data["metrics"] == pytest.approx(expected.metrics)
    assert f"{expected.metrics['recall@5']:.4f}" in out


def test_cli_evaluate_reads_the_protocol_from_the_artifact(tiny_dataset, tmp_path) -> None:
    artifact = tmp_path / "run"
    random_artifact(tiny_dataset, artifact)
    config = json.loads((artifact / "config.json").read_text())
    config["config"]["protocol"] = "paper"
    (artifact / "config.json").write_text(json.dumps(config))
    args = ["evaluate", "-q", "--artifact", str(artifact), "--dataset", str(tiny_dataset), "--k", "5"]
    assert main([*args, "--baselines", "none"]) == 0
    assert json.loads((artifact / "eval_test.json").read_text())["protocol"] == "paper"
    assert main([*args, "--baselines", "none", "--protocol", "honest"]) == 0
    assert json.loads((artifact / "eval_test.json").read_text())["protocol"] == "honest"


def test_cli_evaluate_refuses_an_artifact_of_another_dataset(tiny_dataset, tmp_path, capsys, caplog) -> None:
    """Same counts, other data: the digest recorded at training names the mismatch."""
    artifact = tmp_path / "run"
    random_artifact(tiny_dataset, artifact)
    recorded = json.loads((artifact / "config.json").read_text())["dataset"]["meta_sha256"]
    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["note"] = "re-ingested"
    (other / "meta.json").write_text(json.dumps(meta))
    args = ["evaluate", "-q", "--artifact", str(artifact), "--dataset", str(other), "--k", "5"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and recorded[:12] in err and "--allow-other-dataset" in err
    actual = hashlib.sha256((other / "meta.json").read_bytes()).hexdigest()
    assert actual[:12] in err
    assert main([*args, "--allow-other-dataset"]) == 0
    assert any("warning:" in r.message and recorded[:12] in r.message for r in caplog.records)


def test_cli_evaluate_baselines_only_and_errors(tiny_dataset, tmp_path, capsys) -> None:
    out_file = tmp_path / "b.json"
    assert (
        main(
            [
                "evaluate",
                "-q",
                "--dataset",
                str(tiny_dataset),
                "--split",
                "valid",
                "--k",
                "3",
                "--out",
                str(out_file),
            ]
        )
        == 0
    )
    data = json.loads(out_file.read_text())
    assert data["model"] is None and data["split"] == "valid" and data["excluded"] == ["train"]
    capsys.readouterr()

    code = main(["evaluate", "-q", "--artifact", str(tmp_path / "missing"), "--dataset", str(tiny_dataset)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("recsys evaluate: error: ") and "missing" in err

    code = main(["evaluate", "-q", "--dataset", str(tiny_dataset), "--split", "valid", "--protocol", "paper"])
    assert code == 1
    assert "paper" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--dataset", str(tiny_dataset), "--k", "0,5"])


def test_cli_evaluate_filter_on(tiny_dataset, tmp_path, capsys) -> None:
    """``--filter-on train+valid`` refits the tuned filter on train + valid; the row says so."""
    out_file = tmp_path / "f.json"
    args = ["evaluate", "-q", "--dataset", str(tiny_dataset), "--k", "5", "--baselines", "gf-cf,graph-filter"]
    assert main([*args, "--filter-on", "train+valid", "--out", str(out_file)]) == 0
    rows = json.loads(out_file.read_text())["baselines"]
    for name in ("gf-cf", "graph-filter"):
        details = rows[name]["details"]
        assert (
            details["applied_to"] == "train ∪ valid"
            and details["refit"]
            and details["selected_on"] == "valid"
        )
    assert rows["graph-filter"]["details"]["filter"] in ("gf-cf", "chebycf", "bspm")
    capsys.readouterr()
    code = main([*args, "--split", "valid", "--filter-on", "train+valid"])
    assert code == 1 and "hold the evaluated split 'valid'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--filter-on", "test"])


def test_the_evaluate_command_ends_at_once_with_its_output_written(tiny_dataset, tmp_path) -> None:
    """Run as a process, `recsys evaluate` skips the interpreter's teardown (os._exit) once its handler has
    returned, so its streams and its JSON must be complete by then. It loads neither polars nor pandas."""
    artifact = tmp_path / "run"
    random_artifact(tiny_dataset, artifact)
    out = tmp_path / "eval.json"
    args = ["evaluate", "--artifact", str(artifact), "--dataset", str(tiny_dataset), "--k", "5"]
    # Buffered stdout (a pipe, PYTHONUNBUFFERED unset), as under a benchmark or CI: lost if not flushed.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-X", "importtime", "-m", "recsys.cli"]
    done = subprocess.run(
        [*command, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("protocol honest") and done.stdout.endswith(f"wrote {out}\n")
    assert "popular on test (honest): recall@5" in done.stderr  # the log, flushed before the exit
    assert json.loads(out.read_text())["ks"] == [5]
    imported = {
        line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if "import time:" in line
    }
    assert "torch" in imported and "recsys.evaluation.evaluate" in imported
    assert not any(name.partition(".")[0] in ("polars", "pandas") for name in imported)
    missing = [*command[:1], "-m", "recsys.cli", *args[:2], str(tmp_path / "missing"), *args[3:]]
    done = subprocess.run(missing, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 1 and done.stderr.startswith("recsys evaluate: error: ")


def test_evaluation_loads_the_artifact_as_serving_does_but_the_id_maps(tiny_dataset, tmp_path) -> None:
    """`load_artifact_model`: the fields and checks of `load_artifact`, the id maps' sizes from footers."""
    artifact = tmp_path / "run"
    random_artifact(tiny_dataset, artifact)
    full, model = load_artifact(artifact), load_artifact_model(artifact)
    assert type(model) is ArtifactModel and isinstance(full, ArtifactModel)
    for part in fields(ArtifactModel):
        mine, served = getattr(model, part.name), getattr(full, part.name)
        if isinstance(served, torch.Tensor):
            assert mine.dtype == served.dtype and torch.equal(mine, served)
        elif isinstance(served, np.ndarray):
            assert mine.dtype == served.dtype and np.array_equal(mine, served)
        else:
            assert mine == served
    assert (model.model_name, model.protocol, model.artifact_id) == (
        full.model_name,
        full.protocol,
        full.artifact_id,
    )
    users = artifact / "users.parquet"
    pl.read_parquet(users).head(3).write_parquet(users)  # readable, but of another size
    with pytest.raises(InputError) as served_error:
        load_artifact(artifact)
    with pytest.raises(InputError) as model_error:
        load_artifact_model(artifact)
    assert "inconsistent artifact" in str(served_error.value)
    assert str(model_error.value) == str(served_error.value)
    users.write_bytes(b"not parquet")
    for load in (load_artifact, load_artifact_model):
        with pytest.raises(InputError, match="users.parquet|cannot read the id maps"):
            load(artifact)


def test_load_dataset_reads_the_pairs_polars_reads(tiny_dataset, tmp_path) -> None:
    """pyarrow reads the splits (it loads faster than polars imports): the same int64 tensors."""
    data = load_dataset(tiny_dataset)
    for name in ("train", "valid", "test"):
        frame = pl.read_parquet(tiny_dataset / f"{name}.parquet", columns=["user_idx", "item_idx"])
        expected = torch.from_numpy(frame.select("user_idx", "item_idx").to_numpy().T.copy()).to(torch.int64)
        pairs = data.split(name)
        assert pairs.dtype == torch.int64 and pairs.is_contiguous() and torch.equal(pairs, expected)
    sizes = [pl.read_parquet(tiny_dataset / f"{name}.parquet").height for name in ("users", "items")]
    assert [data.num_users, data.num_items] == sizes
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    pl.read_parquet(broken / "test.parquet").drop("item_idx").write_parquet(broken / "test.parquet")
    with pytest.raises(InputError, match=r"cannot read the dataset: .*item_idx"):
        load_dataset(broken)
    (broken / "items.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="cannot read the dataset"):
        load_dataset(broken)


def test_topk_rows_prefilter_equals_torch_topk() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(60, 2021, generator=g)  # 63 blocks of 32 and a ragged tail of 5
    scores[scores < -1.0] = -math.inf
    scores[0, :2000] = -math.inf  # fewer finite scores than k
    scores[1, -5:] = 100.0 + torch.arange(5.0)  # the best items sit in the tail
    for k in (1, 10, 15):
        values, index = topk_rows(scores, k)
        ref_values, ref_index = torch.topk(scores, k, dim=1, sorted=True)
        assert torch.equal(values, ref_values)
        finite = ref_values > -math.inf  # -inf ties may be returned in any order
        assert torch.equal(index[finite], ref_index[finite])
        assert torch.equal(scores.gather(1, index), values)
    ties = torch.randint(0, 4, (30, 2000), generator=g).float()  # many equal scores: any tied item will do
    values, index = topk_rows(ties, 12)
    assert torch.equal(values, torch.topk(ties, 12, dim=1).values)
    assert torch.equal(ties.gather(1, index), values)
    assert all(row.unique().numel() == 12 for row in index)


def _gathered_topk(scores: torch.Tensor, k: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The block-max prefilter as first written: candidates and their columns by gather, then a cat."""
    rows, n = scores.shape
    width = n // block * block
    blocks = scores[:, :width].view(rows, -1, block)
    best = torch.topk(blocks.amax(dim=2), k, dim=1, sorted=False).indices
    candidates = blocks.gather(1, best.unsqueeze(2).expand(-1, -1, block)).view(rows, -1)
    columns = (best.unsqueeze(2) * block + torch.arange(block)).view(rows, -1)
    candidates = torch.cat([candidates, scores[:, width:]], dim=1)
    columns = torch.cat([columns, torch.arange(width, n).expand(rows, -1)], dim=1)
    values, position = torch.topk(candidates, k, dim=1, sorted=True)
    return values, columns.gather(1, position)


def test_topk_rows_picks_exactly_what_gathering_the_blocks_picked() -> None:
    # Copying the chosen blocks by index_select must give torch.topk the same candidates in the same order,
    # so even among tied scores the same items come out (the metrics do not move by a bit).
    g = torch.Generator().manual_seed(1)
    for n in (2021, 2048):  # with a ragged tail of 5 columns, and without a tail
        ties = torch.randint(0, 6, (40, n), generator=g).float()
        ties[0, -5:] = 9.0  # tied best items in the tail (or in the last block)
        ties[1, :-3] = -math.inf  # fewer finite scores than k
        smooth = torch.randn(40, n, generator=g)
        for scores in (ties, smooth):
            for k in (1, 7, 15):
                values, index = topk_rows(scores, k)
                expected_values, expected_index = _gathered_topk(scores, k, TOPK_BLOCK)
                assert torch.equal(values, expected_values) and torch.equal(index, expected_index)


def test_numpy_and_torch_backends_agree(toy) -> None:
    fast = EmbeddingScorer(toy["user"], toy["item"])
    assert (fast.backend, fast.layout) == ("numpy", "nt")
    slow = EmbeddingScorer(toy["user"], toy["item"], backend="torch", layout="nn")
    users = torch.tensor([4, 0, 7])
    a, b = torch.empty(3, NUM_ITEMS), torch.empty(3, NUM_ITEMS)
    fast(users, a)
    slow(users, b)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, toy["user"][users] @ toy["item"].t())
    with pytest.raises(ValueError, match="numpy"):
        EmbeddingScorer(toy["user"].half(), toy["item"].half(), backend="numpy")


def test_equals_naive_loop_with_the_topk_prefilter() -> None:
    # 1,500 items: 46 blocks of 32 >= 4 * K, so the block-max prefilter of topk_rows is on.
    g = torch.Generator().manual_seed(2)
    user, item = torch.randn(30, 16, generator=g), torch.randn(1500, 16, generator=g)
    state = torch.randint(0, 20, (30, 1500), generator=g)
    train, test = _pairs(state == 0), _pairs(state == 1)
    lists = _naive_lists(user @ item.t(), train, list(range(30)), k=10)
    expected = ranking_metrics(lists, test, [5, 10], num_items=1500)
    result = evaluate_embeddings(user, item, test, exclude=train, ks=[5, 10], batch_size=7)
    assert result.metrics == pytest.approx(expected, abs=1e-12)
    top = topk_items(
        EmbeddingScorer(user, item), torch.arange(30), 10, num_users=30, num_items=1500, exclude=train
    )
    assert torch.equal(top, lists)


def test_one_ranking_at_the_largest_k_serves_every_smaller_k() -> None:
    # The evaluator ranks once, at max(ks), and reads every K off the prefixes of those lists: the same
    # metrics as ranking again at each K alone (prefilter on: 1,500 items, 46 blocks >= 4 * 10).
    g = torch.Generator().manual_seed(4)
    user, item = torch.randn(40, 16, generator=g), torch.randn(1500, 16, generator=g)
    state = torch.randint(0, 25, (40, 1500), generator=g)
    train, test = _pairs(state == 0), _pairs(state == 1)
    shared = evaluate_embeddings(user, item, test, exclude=train, ks=[1, 5, 10], batch_size=9).metrics
    for k in (1, 5, 10):
        alone = evaluate_embeddings(user, item, test, exclude=train, ks=[k], batch_size=9).metrics
        assert alone == {name: shared[name] for name in alone}


def test_masked_pairs_prepared_once_serve_every_row(toy) -> None:
    exclude = torch.cat([toy["train"], toy["valid"]], dim=1)
    gt = GroundTruth(toy["test"], NUM_USERS, NUM_ITEMS, "cpu")
    masked = excluded_pairs(exclude, gt.users, NUM_USERS, NUM_ITEMS)
    scorer = EmbeddingScorer(toy["user"], toy["item"])
    options = {"num_users": NUM_USERS, "num_items": NUM_ITEMS, "ks": (3, 10), "batch_size": 4}
    prepared = full_ranking(scorer, gt, exclude=masked, **options).metrics
    assert prepared == full_ranking(scorer, toy["test"], exclude=exclude, **options).metrics
    with pytest.raises(ValueError, match="other users"):
        topk_items(scorer, torch.arange(5), 3, num_users=NUM_USERS, num_items=NUM_ITEMS, exclude=masked)


def test_chunked_pairs_keys_of_all_or_some_users() -> None:
    """The sorted keys ``pos * num_items + item`` of the pairs of ``users``, duplicates dropped."""
    g = torch.Generator().manual_seed(2)
    pairs = torch.stack(
        [torch.randint(0, 40, (500,), generator=g), torch.randint(0, 30, (500,), generator=g)]
    )
    for users in (torch.arange(40), torch.arange(0, 40, 3)):  # every pair kept; some dropped
        rows = torch.full((40,), -1)
        rows[users] = torch.arange(users.numel())
        kept = rows[pairs[0]] >= 0
        expected = torch.unique(rows[pairs[0]][kept] * 30 + pairs[1][kept])
        assert torch.equal(ChunkedPairs(pairs, users, 40, 30).keys, expected)


def test_chunked_pairs_contains_is_isin() -> None:
    """The binary search `expected_random` uses for the masked relevant pairs answers as torch.isin does."""
    g = torch.Generator().manual_seed(3)
    users = torch.arange(0, 40, 2)
    for num_pairs in (0, 1, 300):
        pairs = torch.stack(
            [torch.randint(0, 40, (num_pairs,), generator=g), torch.randint(0, 30, (num_pairs,), generator=g)]
        )
        masked = excluded_pairs(pairs, users, 40, 30)
        queries = torch.cat([masked.keys, torch.randint(-5, users.numel() * 30 + 5, (500,), generator=g)])
        assert torch.equal(masked.contains(queries), torch.isin(queries, masked.keys))
