r"""The training-free graph filters (GF-CF, ChebyCF, BSPM, the best of them) on several graphs and protocols.

For each graph of ``benchmarks/graphs.py`` (``--graphs``) and each setting (``--settings``), one run of
:func:`recsys.evaluation.evaluate.evaluate_split` with the rows ``gf-cf``, ``chebycf``, ``bspm`` and
``graph-filter`` on test, in a child process (so its peak memory is its own):

* ``honest``: fitted on train, tuned on valid, test read once (``recsys evaluate --baselines ...``);
* ``honest+valid``: tuned on valid with the filters fitted on train, then refitted on train ∪ valid with the
  chosen hyperparameters (``--filter-on train+valid``, for an artifact refit on train ∪ valid);
* ``paper``: fitted on train ∪ valid, *tuned on test* (test-selected, as the papers report), on every test
  user (``--paper-users``);
* ``published`` (gowalla only): each filter at its authors' gowalla setting, fitted on train ∪ valid (all of
  LightGCN's train.txt), test, no search: the figure to set beside the published one. ``--exact`` adds
  ChebyCF and BSPM computed the slow way (the polynomial of the sparse operator applied to every user by
  its recurrence or ODE steps, no spectral approximation), to measure what the approximation costs.

Each run records the rows' test Recall@20 / NDCG@20, the chosen filter and settings, the selection metric
and the phases' seconds (build, tune, refit, rank), and the child's peak RSS. ``--check`` also recomputes
each chosen point's selection metric by full ranking over the whole catalogue (the search measures points on
candidate items only). Results go to ``<out>/<graph>-<setting>.json``; a run whose file exists is skipped
(resumable), ``--force`` redoes it. The table is printed from the files.

    python benchmarks/filters.py --graphs sample,generated,gowalla-u20 --workdir /work/bench/filters
    python benchmarks/filters.py --graphs gowalla --settings honest,honest+valid,paper,published --check
    python benchmarks/filters.py --graphs gowalla --settings published --exact

Times are wall seconds of whatever machine runs it; the machine this was written on is shared, so they are
indicative only.
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from graphs import GRAPHS, missing_source  # noqa: E402

from recsys.data.dataset import Dataset, load_dataset  # noqa: E402
from recsys.evaluation.evaluate import evaluate_split  # noqa: E402
from recsys.evaluation.filters import bspm, chebycf  # noqa: E402
from recsys.evaluation.filters.terms import FilterScorer  # noqa: E402
from recsys.evaluation.filters.tuning import FAMILIES, FilterConfig, build_graph  # noqa: E402
from recsys.evaluation.ranking import full_ranking  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "filters"
SETTINGS = ("honest", "honest+valid", "paper", "published")
ROWS = ("gf-cf", "chebycf", "bspm", "graph-filter")
PUBLISHED = {  # LightGCN's gowalla split, test-selected, trained on all of train.txt: the papers' tables
    "gf-cf": (0.1849, 0.1518),
    "chebycf": (0.1941, 0.1616),
    "bspm": (0.1920, 0.1597),
}


def _rows(dataset: Dataset, setting: str, cfg: FilterConfig, check: bool) -> dict[str, Any]:
    """One evaluate_split with the four filter rows (honest, honest+valid, paper)."""
    protocol = "paper" if setting == "paper" else "honest"
    pairs = "train+valid" if setting == "honest+valid" else None
    start = time.perf_counter()
    report = evaluate_split(
        dataset,
        split="test",
        protocol=protocol,
        ks=(20,),
        baselines=ROWS,
        graph_filter=cfg,
        filter_pairs=pairs,
    )
    seconds = time.perf_counter() - start
    rows: dict[str, Any] = {}
    for row in report.baselines:
        d = row.details
        rows[row.name] = {
            "recall@20": row.metrics["recall@20"],
            "ndcg@20": row.metrics["ndcg@20"],
            "filter": d["filter"],
            "settings": d["settings"],
            "label": d["label"],
            "selection_value": d["selection_value"],
            "seconds": row.seconds,
            **{key: d[key] for key in ("build_seconds", "select_seconds", "refit_seconds", "rank_seconds")},
        }
    out = {
        "rows": rows,
        "seconds": seconds,
        "selection_users": report.baselines[0].details["selection_users"],
    }
    if check:
        out["check"] = _check(dataset, protocol, cfg, rows)
    return out


def _check(dataset: Dataset, protocol: str, cfg: FilterConfig, rows: dict[str, Any]) -> dict[str, Any]:
    """Each chosen point's selection metric by full ranking of the same sampled users (all items)."""
    fit = dataset.pairs(("train",) if protocol == "honest" else ("train", "valid"))
    truth = dataset.split("valid" if protocol == "honest" else "test")
    graph = build_graph(fit, dataset.num_users, dataset.num_items, cfg)
    users = torch.unique(truth[0])
    if users.numel() > cfg.selection_users:
        g = torch.Generator().manual_seed(cfg.seed)
        users = users[torch.randperm(users.numel(), generator=g)[: cfg.selection_users]]
    truth = truth[:, torch.isin(truth[0], users)]
    out = {}
    for name in ("gf-cf", "chebycf", "bspm"):
        row = rows[name]
        module = FAMILIES[name]
        settings = module.Settings(**row["settings"])
        scorer = FilterScorer(graph, module.terms(graph, settings, compact=True))
        exact = full_ranking(
            scorer, truth, num_users=dataset.num_users, num_items=dataset.num_items, exclude=fit, ks=(20,)
        )
        out[name] = {"candidates": row["selection_value"], "full": exact.metrics["recall@20"]}
    return out


def _published(dataset: Dataset, cfg: FilterConfig, exact: bool) -> dict[str, Any]:
    """Each filter at its authors' gowalla setting, fitted on train ∪ valid, ranked on test."""
    fit = dataset.pairs(("train", "valid"))
    start = time.perf_counter()
    graph = build_graph(fit, dataset.num_users, dataset.num_items, cfg)
    rows: dict[str, Any] = {"build_seconds": time.perf_counter() - start}
    for name, module in FAMILIES.items():
        start = time.perf_counter()
        terms = module.terms(graph, module.PAPER, compact=True)
        result = full_ranking(
            FilterScorer(graph, terms),
            dataset.test,
            num_users=dataset.num_users,
            num_items=dataset.num_items,
            exclude=fit,
            ks=(20,),
        )
        rows[name] = {
            "recall@20": result.metrics["recall@20"],
            "ndcg@20": result.metrics["ndcg@20"],
            "label": module.PAPER.label(),
            "seconds": time.perf_counter() - start,
        }
    if exact:
        for name, scorer in (("chebycf-exact", _ExactChebyCF(graph)), ("bspm-exact", _ExactBSPM(graph))):
            start = time.perf_counter()
            result = full_ranking(
                scorer,
                dataset.test,
                num_users=dataset.num_users,
                num_items=dataset.num_items,
                exclude=fit,
                ks=(20,),
                batch_size=1024,
            )
            rows[name] = {
                "recall@20": result.metrics["recall@20"],
                "ndcg@20": result.metrics["ndcg@20"],
                "seconds": time.perf_counter() - start,
            }
    return {"rows": rows}


class _Exact:
    """Scores by the sparse operator itself, ``(B, I)`` signals through ``R~`` and ``R~^T`` (no spectrum)."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, graph: Any) -> None:
        from recsys.evaluation.filters.spectral import _torch_csr

        self.graph = graph
        self.norm = _torch_csr(graph.norm)
        self.norm_t = _torch_csr(graph.norm.T.tocsr())

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """``x P~`` for signals ``x`` stored as columns, ``(I, B)``."""
        return self.norm_t @ (self.norm @ x)

    def ideal(self, x: torch.Tensor, eta: int, pre: float) -> torch.Tensor:
        """``x D^-pre V_eta V_eta^T D^pre`` for column signals, ``(I, B)``."""
        g = self.graph
        v = torch.from_numpy(np.ascontiguousarray(g.basis[:, :eta]))
        left = torch.from_numpy(g.degree_power(-pre).astype(np.float32)).unsqueeze(1)
        right = torch.from_numpy(g.degree_power(pre).astype(np.float32)).unsqueeze(1)
        return (v @ (v.t() @ (x * left))) * right

    def signal(self, users: torch.Tensor, exponent: float) -> torch.Tensor:
        """``r_u D^-exponent`` of ``users`` as columns, ``(I, B)``."""
        rows = self.graph.interactions[users.numpy()].toarray()
        return (
            torch.from_numpy((rows * self.graph.degree_power(-exponent)).astype(np.float32)).t().contiguous()
        )


class _ExactChebyCF(_Exact):
    """ChebyCF at the authors' setting by its Chebyshev recurrence on ``L~ = I - 2 P~``."""

    def __call__(self, users: torch.Tensor, out: torch.Tensor) -> None:
        s = chebycf.PAPER
        c = chebycf.coefficients(s.order, s.flatness)
        x = self.signal(users, s.degree_exponent)
        previous, current = x, x - 2 * self.propagate(x)
        acc = c[0] * previous + c[1] * current
        for k in range(2, s.order + 1):
            previous, current = current, 2 * (current - 2 * self.propagate(current)) - previous
            acc += c[k] * current
        acc += s.ideal_weight * self.ideal(x, s.ideal_rank, 0.0)
        post = torch.from_numpy(self.graph.degree_power(s.degree_exponent).astype(np.float32)).unsqueeze(1)
        out.copy_((acc * post).t())


class _ExactBSPM(_Exact):
    """BSPM-EM at the authors' setting by its solver steps: Euler blurring, ideal merged, RK4 sharpening."""

    def __call__(self, users: torch.Tensor, out: torch.Tensor) -> None:
        s = bspm.PAPER
        r = self.signal(users, 0.0)
        tau = s.blur_time / s.blur_steps
        y = r
        for _ in range(s.blur_steps):
            y = y + tau * (self.propagate(y) - y)
        y = y + s.ideal_weight * self.ideal(r, s.ideal_rank, 0.5)
        tau = s.sharpen_time / s.sharpen_steps
        for _ in range(s.sharpen_steps):
            k1 = -self.propagate(y)
            k2 = -self.propagate(y + tau / 2 * k1)
            k3 = -self.propagate(y + tau / 2 * k2)
            k4 = -self.propagate(y + tau * k3)
            y = y + tau / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.copy_(y.t())


def _child(opts: argparse.Namespace) -> None:
    """Run one (graph, setting) and write its JSON."""
    torch.set_num_threads(opts.threads)
    graph, setting = opts.child
    dataset = load_dataset(GRAPHS[graph](opts.workdir))
    cfg = FilterConfig()
    if setting == "paper" and opts.paper_users:
        cfg = replace(cfg, selection_users=opts.paper_users)
    start = time.perf_counter()
    if setting == "published":
        result = _published(dataset, cfg, opts.exact)
    else:
        result = _rows(dataset, setting, cfg, opts.check)
    result.update(
        graph=graph,
        setting=setting,
        shape={"users": dataset.num_users, "items": dataset.num_items},
        config={k: v for k, v in asdict(cfg).items() if k not in ("gfcf", "chebycf", "bspm")},
        grid_points={name: len(cfg.grid(name)) for name in FAMILIES},
        wall_seconds=time.perf_counter() - start,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        threads=opts.threads,
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        when=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    out = opts.out / f"{graph}-{setting}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def _table(files: list[Path]) -> None:
    """Print the recorded runs."""
    print(
        f"{'graph':<12}{'setting':<14}{'row':<14}{'recall@20':>10}{'ndcg@20':>9}  chosen (selection metric)"
    )
    for path in files:
        if not path.exists():
            continue
        run = json.loads(path.read_text())
        for name, row in run["rows"].items():
            if not isinstance(row, dict):
                continue
            chosen = f"{row.get('filter', name)}: {row.get('label', '')}"
            if "selection_value" in row:
                chosen += f" ({row['selection_value']:.4f})"
            if run["setting"] == "published" and name in PUBLISHED:
                chosen += f"; published {PUBLISHED[name][0]:.4f} / {PUBLISHED[name][1]:.4f}"
            print(
                f"{run['graph']:<12}{run['setting']:<14}{name:<14}{row['recall@20']:>10.4f}"
                f"{row['ndcg@20']:>9.4f}  {chosen}"
            )
        phases = run["rows"].get("graph-filter", {})
        if phases:
            print(
                f"{'':<26}graph-filter row: {phases['seconds']:.1f} s (build {phases['build_seconds']:.1f}, "
                f"tune {phases['select_seconds']:.1f}, refit {phases['refit_seconds']:.1f}, rank "
                f"{phases['rank_seconds']:.1f}); peak RSS {run['peak_rss_mib']:.0f} MiB; "
                f"{run['selection_users']:,} selection users"
            )
        else:
            print(f"{'':<26}run {run['wall_seconds']:.1f} s; peak RSS {run['peak_rss_mib']:.0f} MiB")
        for name, check in run.get("check", {}).items():
            gap = check["full"] - check["candidates"]
            values = f"candidates {check['candidates']:.4f}, full {check['full']:.4f} ({gap:+.4f})"
            print(f"{'':<26}check {name}: {values}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--graphs", default="sample,generated,gowalla-u20,gowalla", help="comma-separated")
    parser.add_argument("--settings", default="honest,honest+valid,paper,published", help="comma-separated")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-filters")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the JSON results")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (OpenBLAS: from the environment)"
    )
    parser.add_argument(
        "--paper-users", type=int, default=1 << 30, help="test users the paper setting tunes on"
    )
    parser.add_argument("--check", action="store_true", help="recompute the chosen points' selection metric")
    parser.add_argument("--exact", action="store_true", help="published: also ChebyCF and BSPM the slow way")
    parser.add_argument("--force", action="store_true", help="redo runs whose JSON exists")
    parser.add_argument("--child", nargs=2, metavar=("GRAPH", "SETTING"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        _child(opts)
        return
    graphs, settings = opts.graphs.split(","), opts.settings.split(",")
    for name in graphs:
        problem = missing_source(name)
        if problem:
            parser.error(problem)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    files = []
    for graph in graphs:
        GRAPHS[graph](opts.workdir)  # built once, before the timed children
        for setting in settings:
            if setting == "published" and graph != "gowalla":
                continue
            path = opts.out / f"{graph}-{setting}.json"
            files.append(path)
            if path.exists() and not opts.force:
                print(f"{path} exists: skipped (--force redoes it)", flush=True)
                continue
            args = ["--child", graph, setting, "--workdir", str(opts.workdir), "--out", str(opts.out)]
            args += ["--threads", str(opts.threads), "--paper-users", str(opts.paper_users)]
            args += ["--check"] * opts.check + ["--exact"] * opts.exact
            start = time.perf_counter()
            env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads)}
            run = subprocess.run([sys.executable, __file__, *args], env=env, check=False)
            if run.returncode != 0:
                msg = f"{graph} {setting} failed ({run.returncode})"
                raise SystemExit(msg)
            print(f"{graph} {setting}: {time.perf_counter() - start:.1f} s", flush=True)
    _table(files)
    print(f"\nresults in {opts.out}")


if __name__ == "__main__":
    main()
