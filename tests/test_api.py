"""The Python API (``recsys/__init__.py``): the README's example runs as written, and bad input is named."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from toy_artifact import make_artifact

import recsys
from recsys.errors import InputError
from recsys.inference.recommend import Recommender


def readme_python_example() -> str:
    """The first ``python`` code block of the README's "Python" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Python\n") :]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "README.md: the Python section has no python code block"
    return match.group(1)


def test_readme_python_example_runs_from_a_log_to_a_ranked_list(tmp_path, monkeypatch, capsys):
    code = readme_python_example()
    assert (
        len(code.strip().splitlines()) < 10
    )  # the promise: a log to a ranked list in under 10 lines
    (tmp_path / "data").symlink_to(REPO / "data")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)

    printed = capsys.readouterr().out
    assert "recall@20" in printed and "graph-filter" in printed  # the evaluation table was printed
    assert scope["data"] == Path("out/data") and (tmp_path / "out/data/meta.json").is_file()
    assert (tmp_path / "out/model/config.json").is_file()
    recommender = scope["recommender"]
    assert isinstance(recommender, Recommender)
    user = recommender.user_ids[0]
    [top] = recommender.recommend([user], k=5)
    assert len(top.items) == 5 and top.scores == sorted(top.scores, reverse=True)
    artifact = recommender.artifact
    [row] = recommender.user_indices([user])
    seen = artifact.seen_indices[artifact.seen_indptr[row] : artifact.seen_indptr[row + 1]]
    assert not set(artifact.items["raw_id"].gather(seen).to_list()) & set(
        top.items
    )  # training items excluded
    # The artifact trains better than most-popular: the example shows a working model, not just a running one.
    report = recsys.evaluate(scope["model"], scope["data"], k=[20], baselines=["popular"])
    assert report.model is not None
    assert report.model.metrics["recall@20"] > report.baselines[0].metrics["recall@20"]


def test_import_recsys_loads_neither_torch_nor_ray():
    code = "import sys, recsys; recsys.__version__; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_lazy_names_resolve_and_unknown_ones_fail():
    assert recsys.Recommender is Recommender
    assert recsys.TrainConfig().model == "xsimgcl"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        recsys.nope  # noqa: B018


def test_ingest_names_an_unknown_option_and_an_unknown_suffix(tmp_path):
    log = REPO / "data/sample/interactions.csv"
    with pytest.raises(InputError, match="unknown option.*min_users"):
        recsys.ingest(log, tmp_path / "d", min_users=3)
    weird = tmp_path / "log.dat"
    weird.write_text("user_id,item_id\n1,2\n")
    with pytest.raises(InputError, match=r"log\.dat.*suffix '\.dat'.*format="):
        recsys.ingest(weird, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_train_names_an_unknown_config_key(tmp_path):
    with pytest.raises(InputError, match="unknown key.*epochz"):
        recsys.train(tmp_path / "no-dataset", tmp_path / "m", epochz=3)


def test_load_ranks_the_known_answer_artifact(tmp_path):
    recommender = recsys.load(make_artifact(tmp_path, "toy"))
    assert torch.equal(recommender.user_emb, recommender.artifact.user_emb)
    # user "ann" (index 0) scores items 10, 20, 30, 40 as 3, 2, 0, 1 and has seen 10 and 20
    [top] = recommender.recommend([recommender.user_ids[0]], k=2)
    assert top.items == [40, 30]
