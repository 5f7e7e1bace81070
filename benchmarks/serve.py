"""Serving throughput and latency on the gowalla shapes: Ray Serve (batching, knobs) vs plain FastAPI.

Builds, once (cached in --workdir), an artifact of gowalla's shape: 29,858 users x 40,981 items, random
64-d embeddings and 727,874 random training interactions (the seen items every answer masks). Each
variant serves it on 127.0.0.1; a load generator in a separate process (asyncio + aiohttp, one keep-alive
connection per concurrent client) sends a fixed number of requests at each concurrency after a short
warm-up, and the table reports requests/s, users/s and p50 / p99 latency; any non-200 answer counts as an
error. Single-user variants send ``GET /recommend/{user}?k=20`` for random known users; ``*-bulk``
variants send ``POST /recommend`` with 100 users per request.

Where the time goes: the first table times the ``Recommender`` alone, in this process (matmul, seen-item
mask, top-k, id mapping, pydantic encoding of the answer) for 1 to 100 users per call. The difference
between that and the latency at concurrency 1 is HTTP, the Serve proxy and the hop to the replica.

Targets: one user per request >= 400 req/s at concurrency 16-64 with p99 <= 100 ms; the batch
endpoint >= 20,000 users/s. The load generator shares the machine's cores with the server: on a 2-core
machine it takes a good part of one, which lowers every number here.

    python benchmarks/serve.py                                  # every variant, 2,000 requests per point
    python benchmarks/serve.py --quick                          # 100 requests per point: a smoke test
    python benchmarks/serve.py --variants serve-batch,fastapi --concurrency 16,64 --requests 5000

Prints the tables and writes benchmarks/results/serve.json (--quick: the work directory's serve_quick.json).
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Heavy imports (torch, Ray, the servers) stay inside functions: the load generator's spawned process
# imports this module too, and should start fast and hold nothing but its HTTP client.
RESULTS = Path(__file__).resolve().parent / "results"
NUM_USERS, NUM_ITEMS, NUM_TRAIN, DIM = 29_858, 40_981, 727_874, 64
K = 20
BULK_USERS = 100
STEPS = ("matmul_ms", "mask_ms", "topk_ids_ms", "encode_ms")
PORT = 18400
# The first port Serve gives a replica's own HTTP server (RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT).
DIRECT_PORT = 30000
# Direct-ingress replicas otherwise drain for at least 30 s before they stop, at every shutdown.
FAST_DRAIN = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0.01"}


@dataclass(frozen=True)
class Variant:
    """One server set-up: which server, which endpoint, and what differs from the defaults."""

    description: str
    server: str = "serve"  # "serve" (Ray Serve, serving.app) or "fastapi" (uvicorn, no Ray)
    bulk: bool = False  # POST /recommend with BULK_USERS users instead of GET /recommend/{user}
    args: dict[str, Any] = field(default_factory=dict)  # ServeArgs fields
    env: dict[str, str] = field(default_factory=dict)  # set while Ray starts (its processes inherit them)
    direct_port: int | None = None  # clients call the replica's own HTTP server (direct ingress), no proxy


VARIANTS: dict[str, Variant] = {
    "serve-batch": Variant("Ray Serve, @serve.batch on (batch 64, wait 2 ms), 1 replica"),
    "serve-nobatch": Variant("Ray Serve, batching off", args={"batching": False}),
    "serve-bulk": Variant(f"Ray Serve, POST /recommend with {BULK_USERS} users", bulk=True),
    "fastapi": Variant("plain FastAPI + uvicorn over the same Recommender, no Ray", server="fastapi"),
    "fastapi-bulk": Variant(f"plain FastAPI, POST /recommend with {BULK_USERS} users", "fastapi", True),
    "serve-batch16": Variant("Ray Serve, batch at most 16", args={"max_batch_size": 16}),
    "serve-wait10ms": Variant("Ray Serve, batch wait 10 ms", args={"batch_wait_timeout_s": 0.01}),
    "serve-ongoing16": Variant("Ray Serve, max_ongoing_requests 16", args={"max_ongoing_requests": 16}),
    "serve-2replicas": Variant("Ray Serve, 2 replicas (1 CPU each)", args={"num_replicas": 2}),
    "serve-throughput": Variant(
        "Ray Serve, RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (user code on the replica's main loop, gRPC, frozen GC, "
        "direct ingress), clients on the replica's port",
        env={"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **FAST_DRAIN},
        direct_port=DIRECT_PORT,
    ),
    "serve-direct": Variant(
        "Ray Serve, direct ingress only (RAY_SERVE_ENABLE_DIRECT_INGRESS=1), clients on the replica's port",
        env={"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", **FAST_DRAIN},
        direct_port=DIRECT_PORT,
    ),
}


def build_artifact(workdir: Path) -> Path:
    """The gowalla-shaped random artifact, written once with the repository's own writers."""
    import numpy as np
    import polars as pl
    import torch

    from pipelines.dataset import write_dataset
    from pipelines.splits import Splits
    from recsys.artifact import write_embeddings_artifact
    from recsys.data.dataset import load_dataset

    out = workdir / "artifact"
    if (out / "config.json").exists():
        return out
    rng = np.random.default_rng(0)
    pairs = pl.DataFrame(
        {
            "user_idx": rng.integers(0, NUM_USERS, NUM_TRAIN),
            "item_idx": rng.integers(0, NUM_ITEMS, NUM_TRAIN),
        }
    ).unique(maintain_order=True)
    users = pl.DataFrame({"user_idx": np.arange(NUM_USERS), "raw_id": np.arange(NUM_USERS)})
    items = pl.DataFrame({"item_idx": np.arange(NUM_ITEMS), "raw_id": np.arange(NUM_ITEMS)})
    write_dataset(
        workdir / "dataset", Splits(pairs, pairs.clear(), pairs.clear()), users, items, {}, force=True
    )
    data = load_dataset(workdir / "dataset")
    g = torch.Generator().manual_seed(0)
    user, item = torch.randn(NUM_USERS, DIM, generator=g), torch.randn(NUM_ITEMS, DIM, generator=g)
    config = {"model": "mf", "note": "random embeddings for benchmarks/serve.py"}
    return write_embeddings_artifact(
        out, data, user, item, config=config, history=[{"epoch": 1, "loss": 0.0}]
    )


def compute_breakdown(artifact: Path, repeats: int) -> list[dict[str, float]]:
    """Median milliseconds of each step behind one request, in this process, for 1 to BULK_USERS users.

    The steps are those of ``Recommender.recommend`` (timed through its private helpers, as a profile):
    the score matmul, the seen-item mask, top-k with the raw-id lookup, then the pydantic JSON encoding.
    """
    import torch

    from recsys.inference.recommend import Recommender
    from serving.app import item_scores
    from serving.schemas import BatchResponse, UserRecommendation

    rec = Recommender.from_artifact(artifact)
    g = torch.Generator().manual_seed(1)
    rows = []
    for users in (1, 16, 64, BULK_USERS):
        ids = torch.randint(0, NUM_USERS, (users,), generator=g)
        steps: dict[str, list[float]] = {name: [] for name in STEPS}
        for _ in range(repeats):
            marks = [time.perf_counter()]
            scores = rec.user_emb[ids] @ rec.item_emb_t
            marks.append(time.perf_counter())
            row_of, cols = rec._seen_pairs(ids)
            scores[row_of, cols] = -torch.inf
            marks.append(time.perf_counter())
            recs = rec._top(scores, K, (), None)
            marks.append(time.perf_counter())
            answers = [
                UserRecommendation(user_id=u, items=item_scores(r), model_version="x")
                for u, r in zip(ids.tolist(), recs, strict=True)
            ]
            BatchResponse(results=answers, unknown_user_ids=[], model_version="x").model_dump_json()
            marks.append(time.perf_counter())
            for name, start, end in zip(STEPS, marks, marks[1:], strict=False):
                steps[name].append((end - start) * 1e3)
        rows.append({"users": users, **{name: statistics.median(v) for name, v in steps.items()}})
    return rows


def load_generator(url: str, bulk: bool, concurrency: int, requests: int, seed: int) -> dict[str, Any]:
    """Run in a separate process: ``requests`` requests from ``concurrency`` clients; latencies and errors."""
    import random

    import aiohttp

    rng = random.Random(seed)

    def request(session: aiohttp.ClientSession) -> Any:
        if bulk:
            body = {"user_ids": rng.sample(range(NUM_USERS), BULK_USERS), "k": K}
            return session.post(f"{url}/recommend", json=body)
        return session.get(f"{url}/recommend/{rng.randrange(NUM_USERS)}?k={K}")

    async def clients(count: int, latencies: list[float]) -> list[str]:
        errors: list[str] = []
        remaining = iter(range(count))

        async def client(session: aiohttp.ClientSession) -> None:
            for _ in remaining:
                start = time.perf_counter()
                try:
                    async with request(session) as resp:
                        text = await resp.text()
                        if resp.status != 200:
                            errors.append(f"{resp.status} {text[:200]}")
                except aiohttp.ClientError as exc:
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - start)

        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return errors

    asyncio.run(clients(max(2 * concurrency, 20), []))  # warm-up: connections, replica caches
    latencies: list[float] = []
    start = time.perf_counter()
    errors = asyncio.run(clients(requests, latencies))
    seconds = time.perf_counter() - start
    latencies.sort()
    answered = requests - len(errors)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(seconds, 3),
        "requests_per_s": round(answered / seconds, 1),
        "users_per_s": round(answered * (BULK_USERS if bulk else 1) / seconds, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3, 2),
    }


@contextmanager
def fastapi_server(artifact: Path, port: int) -> Iterator[str]:
    """The baseline: a plain FastAPI app over the same ``Recommender``, served by uvicorn in a thread."""
    import uvicorn
    from fastapi import FastAPI

    from recsys.inference.recommend import Recommender
    from serving.app import item_scores
    from serving.schemas import BatchRequest, BatchResponse, UserRecommendation

    rec = Recommender.from_artifact(artifact)
    version = rec.model_version
    app = FastAPI()  # it reads the route annotations: hence no `from __future__ import annotations` here

    @app.get("/recommend/{user_id}", response_model=UserRecommendation)
    async def one(user_id: str, k: int = K) -> UserRecommendation:
        (answer,) = rec.recommend([user_id], k)
        return UserRecommendation(user_id=user_id, items=item_scores(answer), model_version=version)

    @app.post("/recommend", response_model=BatchResponse)
    async def many(body: BatchRequest) -> BatchResponse:
        answers = rec.recommend(body.user_ids, body.k)
        results = [
            UserRecommendation(user_id=u, items=item_scores(a), model_version=version)
            for u, a in zip(body.user_ids, answers, strict=True)
        ]
        return BatchResponse(results=results, unknown_user_ids=[], model_version=version)

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):  # bounded: 30 s
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve_server(artifact: Path, port: int, variant: Variant) -> Iterator[str]:
    """The Ray Serve app (``serving.runner``) with the variant's arguments and environment."""
    from serving.app import ServeArgs
    from serving.runner import running

    saved = {name: os.environ.get(name) for name in variant.env}
    os.environ.update(variant.env)
    try:
        with running(ServeArgs(artifact=str(artifact), **variant.args), port=port) as url:
            yield url if variant.direct_port is None else f"http://127.0.0.1:{variant.direct_port}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_variant(name: str, artifact: Path, opts: argparse.Namespace) -> list[dict[str, Any]]:
    """Every concurrency of one variant, against one server start."""
    variant = VARIANTS[name]
    server = (
        fastapi_server(artifact, PORT)
        if variant.server == "fastapi"
        else serve_server(artifact, PORT, variant)
    )
    rows = []
    started = time.perf_counter()
    with server as url:
        print(f"{name}: up in {time.perf_counter() - started:.1f} s", flush=True)
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no Ray, torch or server threads
        with spawn.Pool(1) as pool:
            for seed, concurrency in enumerate(opts.concurrency):
                row = pool.apply(load_generator, (url, variant.bulk, concurrency, opts.requests, seed))
                rows.append({"variant": name, **row})
                print(f"  c={concurrency}: {row}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated concurrent clients")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per concurrency")
    parser.add_argument("--repeats", type=int, default=50, help="repeats of the in-process timings")
    parser.add_argument("--quick", action="store_true", help="100 requests per point, 5 repeats")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-serve")
    parser.add_argument("--out", type=Path, help="JSON results (default: benchmarks/results/serve.json)")
    opts = parser.parse_args()
    names = opts.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    opts.concurrency = [int(c) for c in opts.concurrency.split(",")]
    if opts.quick:
        opts.requests, opts.repeats = 100, 5
    out = opts.out or (opts.workdir / "serve_quick.json" if opts.quick else RESULTS / "serve.json")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    opts.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    artifact = build_artifact(opts.workdir)
    print(f"artifact {artifact} ready in {time.perf_counter() - start:.1f} s", flush=True)
    breakdown = compute_breakdown(artifact, opts.repeats)

    results: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for name in names:
        try:
            results += run_variant(name, artifact, opts)
        except Exception as exc:  # a knob this Ray does not support: report it, keep measuring the others
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: failed: {failed[name]}", flush=True)

    print(
        f"\nserving {NUM_USERS:,} users x {NUM_ITEMS:,} items, d={DIM}, k={K}, {os.cpu_count()} cores; "
        f"{opts.requests} requests per point"
    )
    print("\nin-process work behind one request (median ms per call): where the compute goes")
    print(f"{'users':>6}" + "".join(f"{name[:-3]:>10}" for name in STEPS) + f"{'total':>9}{'per user':>10}")
    for r in breakdown:
        total = sum(r[name] for name in STEPS)
        print(
            f"{r['users']:>6}"
            + "".join(f"{r[name]:>10.2f}" for name in STEPS)
            + f"{total:>9.2f}{total / r['users']:>10.3f}"
        )
    print(f"\n{'variant':<18}{'conc':>5}{'errors':>7}{'req/s':>9}{'users/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for r in results:
        print(
            f"{r['variant']:<18}{r['concurrency']:>5}{r['errors']:>7}{r['requests_per_s']:>9.1f}"
            f"{r['users_per_s']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
        )
    for r in results:
        if r["errors"]:
            print(f"{r['variant']} c={r['concurrency']}: {r['errors']} errors, the first: {r['first_error']}")
    for name, error in failed.items():
        print(f"{name:<18}failed: {error}")
    single = [
        r["requests_per_s"]
        for r in results
        if not VARIANTS[r["variant"]].bulk
        and 16 <= r["concurrency"] <= 64
        and r["p99_ms"] <= 100
        and r["errors"] == 0
    ]
    bulk = [r["users_per_s"] for r in results if VARIANTS[r["variant"]].bulk and r["errors"] == 0]
    print(
        "\ntargets: single user >= 400 req/s at c=16-64 with p99 <= 100 ms: "
        f"best {max(single, default=0):.0f}; batch endpoint >= 20,000 users/s: "
        f"best {max(bulk, default=0):.0f}"
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "shape": {"num_users": NUM_USERS, "num_items": NUM_ITEMS, "dim": DIM, "k": K, "train": NUM_TRAIN},
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_after": os.getloadavg(),
        "requests_per_point": opts.requests,
        "bulk_users": BULK_USERS,
        "variants": {name: VARIANTS[name].description for name in names},
        "compute_ms": breakdown,
        "results": results,
        "failed": failed,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
