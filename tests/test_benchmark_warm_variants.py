"""The warm-start variants harness (`benchmarks/warm_variants.py`) on refresh.py's tiny graph.

Slow (three short trainings in subprocesses, as the benchmarks are run); the default suite leaves it out.
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    command = [sys.executable, *args, "--threads", "1", "--no-write"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_replay_and_part_epochs_train_the_chosen_pairs_only(tmp_path):
    _run("benchmarks/refresh.py", "--graphs", "tiny", "--max-epochs", "2", "--workdir", str(tmp_path))
    parent = json.loads((tmp_path / "runs/reference/tiny-old/config.json").read_text())
    batch = parent["config"]["batch_size"]
    common = ["benchmarks/warm_variants.py", "--workdir", str(tmp_path), "--graph", "tiny"]
    common += ["--preset", "reference", "--epochs", "2", "--overrides", '{"batch_size": 64}']

    out = _run(*common, "--replay", "0.5")
    new, old = map(int, re.search(r"pairs: (\d+) new to the parent, (\d+) trained on by it", out).groups())
    assert old == parent["num_train_interactions"]  # every pair the parent trained on is matched by raw id
    assert new > 0 and batch != 64
    steps = [int(s) for s in re.findall(r"^epoch \d+: step (\d+)", out, flags=re.MULTILINE)]
    per_epoch = math.ceil((new + round(0.5 * new)) / 64)
    assert steps == [per_epoch, 2 * per_epoch]

    out = _run(*common, "--part", "0.25")
    steps = [int(s) for s in re.findall(r"^epoch \d+: step (\d+)", out, flags=re.MULTILINE)]
    per_epoch = math.ceil(int(0.25 * (new + old)) / 64)
    assert steps == [per_epoch, 2 * per_epoch]
    assert "goal met: " in out
