"""Ingest throughput: a generated 10M-row CSV log through `recsys ingest` (k-core + temporal split).

Runs the real CLI in a child process per repeat and reports wall time, rows/s and the child's peak RSS
(from ``os.wait4``), median over repeats. Prints a table and writes benchmarks/results/ingest.json.

    python benchmarks/ingest.py                 # 10M rows, 3 repeats
    python benchmarks/ingest.py --rows 1000000  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.synthetic import SyntheticConfig, generate

RESULTS = Path(__file__).resolve().parent / "results"


def run_once(log: Path, out: Path, args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one `recsys ingest` child process."""
    cmd = [
        sys.executable,
        "-m",
        "recsys.cli",
        "ingest",
        "-q",
        "--format",
        "csv",
        "--input",
        str(log),
        "--out",
        str(out),
        "--force",
        *args,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        msg = f"ingest failed: {' '.join(cmd)}"
        raise SystemExit(msg)
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="clean events to generate")
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-ingest")
    opts = parser.parse_args()

    opts.workdir.mkdir(parents=True, exist_ok=True)
    log = opts.workdir / f"log_{opts.rows}.csv"
    if not log.exists():
        generate(
            SyntheticConfig(num_users=opts.users, num_items=opts.items, num_interactions=opts.rows, seed=0),
            log,
        )
    size_mb = log.stat().st_size / 2**20
    rows = sum(1 for _ in log.open("rb")) - 1
    variants = {
        "k-core(5,5) + temporal": [
            "--time-col",
            "timestamp",
            "--min-user-interactions",
            "5",
            "--min-item-interactions",
            "5",
            "--split",
            "temporal",
        ],
        "no filters + random": [],
    }
    results = []
    for name, args in variants.items():
        runs = [run_once(log, opts.workdir / "out", args) for _ in range(opts.repeats)]
        wall = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        meta = json.loads((opts.workdir / "out" / "meta.json").read_text())
        results.append(
            {
                "variant": name,
                "rows": rows,
                "file_mb": round(size_mb, 1),
                "wall_s_median": round(wall, 2),
                "wall_s_all": [round(r[0], 2) for r in runs],
                "rows_per_s": round(rows / wall),
                "peak_rss_gib": round(rss, 2),
                "train_rows": meta["counts"]["train"]["interactions"],
                "users": meta["num_users"],
                "items": meta["num_items"],
            }
        )
    shutil.rmtree(opts.workdir / "out", ignore_errors=True)

    print(
        f"\ningest of {rows:,} CSV rows ({size_mb:.0f} MB), {os.cpu_count()} cores, median of {opts.repeats}"
    )
    print(f"{'variant':<26}{'wall s':>9}{'rows/s':>13}{'peak RSS GiB':>14}{'users':>10}{'items':>9}")
    for r in results:
        print(
            f"{r['variant']:<26}{r['wall_s_median']:>9.2f}{r['rows_per_s']:>13,}{r['peak_rss_gib']:>14.2f}"
            f"{r['users']:>10,}{r['items']:>9,}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(
        json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
