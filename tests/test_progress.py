"""Progress reporting: a bar on a terminal, plain lines in a log (recsys.progress)."""

import io
import logging
import os
import re
import subprocess
import sys

import pytest

from recsys.errors import InputError
from recsys.progress import INTERVAL_ENV, Progress, line_interval


def test_off_a_terminal_it_logs_plain_lines_and_draws_nothing(caplog):
    stream = io.StringIO()
    progress = Progress(range(4), desc="epoch 1/2", unit="batch", stream=stream, interval_s=0)
    seen = []
    with caplog.at_level(logging.INFO, logger="recsys.progress"):
        for item in progress:
            seen.append(item)
            progress.set_postfix({"loss": 0.5})
    assert seen == [0, 1, 2, 3]
    assert stream.getvalue() == ""
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4
    assert lines[0].startswith("epoch 1/2: 1/4 batch (25%)")
    assert re.fullmatch(r"epoch 1/2: 4/4 batch \(100%\)(, [\d.]+ batch/s)?, loss=0\.5", lines[-1])


def test_lines_wait_for_the_interval_which_the_environment_sets(caplog, monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert line_interval() == 30.0
    with caplog.at_level(logging.INFO, logger="recsys.progress"):
        assert list(Progress(range(100), desc="fast", unit="item", stream=io.StringIO())) == list(range(100))
        assert not caplog.records  # 100 quick items: well inside 30 s
        monkeypatch.setenv(INTERVAL_ENV, "0")
        list(Progress(range(3), desc="fast", unit="item", stream=io.StringIO()))
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "fast: 1/3 item (33%)",
        "fast: 2/3 item (67%)",
        "fast: 3/3 item (100%)",
    ]
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(InputError, match="RECSYS_PROGRESS_INTERVAL='soon': expected seconds"):
        Progress(range(3), desc="fast", unit="item", stream=io.StringIO())


def test_disabled_reports_nothing(caplog, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="recsys.progress"):
        progress = Progress(iter("abc"), desc="quiet", unit="x", enabled=False, stream=stream)
        assert list(progress) == ["a", "b", "c"]
    assert not caplog.records and stream.getvalue() == ""


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_on_a_terminal_it_draws_a_bar_instead(caplog):
    master, replica = os.openpty()
    try:
        with os.fdopen(replica, "w") as tty, caplog.at_level(logging.INFO, logger="recsys.progress"):
            progress = Progress(range(3), desc="generate", unit="chunk", stream=tty, interval_s=0)
            assert list(progress) == [0, 1, 2]
            tty.flush()
            drawn = os.read(master, 65536).decode()
    finally:
        os.close(master)
    assert "generate" in drawn and "\r" in drawn  # tqdm redraws in place
    assert not caplog.records


def test_a_run_logged_to_a_file_has_no_carriage_returns_but_still_reports_progress(tmp_path):
    """`recsys generate`, `ingest` and a short `train` with their output in a file, as under CI or nohup."""
    log = tmp_path / "run.log"
    env = {**os.environ, INTERVAL_ENV: "0", "OMP_NUM_THREADS": "1"}
    csv, dataset = str(tmp_path / "log.csv"), str(tmp_path / "ds")
    generate = ["generate", "--users", "60", "--items", "40", "--interactions", "1500", "--out", csv]
    ingest = ["ingest", "--format", "csv", "--input", csv, "--time-col", "timestamp", "--out", dataset]
    train = ["train", "--dataset", dataset, "--out", str(tmp_path / "art"), "--model", "lightgcn"]
    commands = [generate, [*ingest, "--split", "temporal"], [*train, "--epochs", "2", "--threads", "1"]]
    with log.open("w") as out:
        for command in commands:
            done = subprocess.run(
                [sys.executable, "-m", "recsys.cli", *command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
                timeout=600,
                check=False,
            )
            assert done.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text
    assert re.search(r"generate: 1/1 chunk \(100%\)", text)
    assert re.search(r"epoch 1/2: (\d+)/\1 batch \(100%\)", text)  # within an epoch
    assert re.search(r"epoch +2 +loss [\d.]+", text)  # the epoch's summary
    assert "trained lightgcn" in text
