"""The meta-node study's harness (`benchmarks/metanode.py train`) on the bundled sample: runs, then skips.

Slow (two short trainings in a subprocess, as the benchmark is run); the default suite leaves it out.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _smoke(workdir: Path) -> tuple[str, str]:
    command = [sys.executable, "benchmarks/metanode.py", "train", "--graphs", "sample", "--models", "xsimgcl"]
    command += ["--variants", "in_batch,metanode:256", "--lambdas", "0.2", "--max-steps", "16"]
    command += ["--threads", "1", "--no-write", "--workdir", str(workdir)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr  # the table, the log


@pytest.mark.slow
def test_smoke_grid_trains_each_cell_once_and_prints_the_table(tmp_path):
    table, log = _smoke(tmp_path)
    assert log.count("training Cell(") == 2
    assert "| xsimgcl (reference) | metanode:256 | 256 / 256 | 0.2 | " in table
    assert "| xsimgcl (reference) | in_batch |" in table
    again, log = _smoke(tmp_path)  # finished artifacts are read back, not retrained
    assert "training Cell(" not in log
    assert again == table
