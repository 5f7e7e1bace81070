"""Top-k inner-product search over the item embeddings: exact (chunked matmul) or approximate (faiss).

Why an approximate option: exact scoring is one ``(B, d) @ (d, I)`` product per request, which is the
right answer up to a few hundred thousand items (milliseconds). At millions of items it dominates the
latency, and an inverted-file index (faiss ``IndexIVFFlat``) or a graph index (HNSW) scans a small
fraction of the catalogue instead, at the price of recall (measured in ``benchmarks/scale.py``).
faiss-cpu is an optional dependency (``pip install recsys[ann]``), imported only when asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from recsys.errors import InputError

KINDS = ("exact", "ivf", "hnsw")


class ItemIndex(Protocol):
    """What the recommender needs from an index: the ``k`` best items of each query by inner product."""

    kind: str
    build_seconds: float

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Scores and item indices of the top ``k`` per query, each ``(B, k)``, best first."""
        ...


@dataclass
class ExactIndex:
    """Exact top-k: the queries times all items, in chunks of queries so memory stays ``chunk × I``."""

    items: Tensor
    chunk: int = 256
    kind: str = "exact"
    build_seconds: float = 0.0

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Exact scores and indices, ``(B, k)`` each."""
        items_t = self.items.T
        parts = [
            torch.topk(q @ items_t, min(k, self.items.size(0)), dim=1) for q in queries.split(self.chunk)
        ]
        return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


class FaissIndex:
    """Approximate top-k by inner product with faiss: ``ivf`` (IndexIVFFlat) or ``hnsw`` (IndexHNSWFlat).

    Args:
        items: Item embeddings ``(I, d)``; the index holds a float32 copy.
        kind: ``ivf`` or ``hnsw``.
        nlist: IVF cells (default ``4 * sqrt(I)``, a usual choice); trained on at most 100k items.
        nprobe: IVF cells scanned per query: the recall/speed knob.
        hnsw_m: HNSW neighbours per node.
        ef_search: HNSW search breadth: the recall/speed knob.
        threads: faiss OpenMP threads (0 keeps faiss's default).
    """

    def __init__(
        self,
        items: Tensor,
        kind: str = "ivf",
        *,
        nlist: int | None = None,
        nprobe: int = 32,
        hnsw_m: int = 32,
        ef_search: int = 128,
        threads: int = 0,
    ) -> None:
        try:
            import faiss
        except ImportError as exc:  # pragma: no cover - depends on the installation
            msg = f"retrieval {kind!r} needs faiss: pip install 'recsys[ann]' (faiss-cpu)"
            raise InputError(msg) from exc
        if threads:
            faiss.omp_set_num_threads(threads)
        self.kind, self.device = kind, items.device
        vectors = np.ascontiguousarray(items.detach().cpu().numpy(), dtype=np.float32)
        count, dim = vectors.shape
        start = time.perf_counter()
        index: Any
        if kind == "ivf":
            cells = nlist or max(
                1, min(count // 39, int(4 * count**0.5))
            )  # faiss wants >= 39 points per cell
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, cells, faiss.METRIC_INNER_PRODUCT)
            sample = vectors[np.random.default_rng(0).permutation(count)[: min(count, 100_000)]]
            index.train(sample)
            index.add(vectors)
            index.nprobe = min(nprobe, cells)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.add(vectors)
            index.hnsw.efSearch = ef_search
        else:
            msg = f"unknown approximate retrieval {kind!r}; expected ivf or hnsw"
            raise InputError(msg)
        self.build_seconds = time.perf_counter() - start
        self.index, self.num_items = index, count

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Approximate scores and indices, ``(B, k)`` each; slots the index could not fill score ``-inf``."""
        found = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        scores, ids = self.index.search(found, min(k, self.num_items))
        missing = ids < 0
        scores[missing], ids[missing] = -np.inf, 0
        return torch.from_numpy(scores).to(self.device), torch.from_numpy(ids).to(self.device)


def build_index(items: Tensor, kind: str = "exact", **options: Any) -> ItemIndex:
    """An index of ``kind`` (``exact``, ``ivf`` or ``hnsw``) over ``items``; options go to the index."""
    if kind not in KINDS:
        msg = f"unknown retrieval {kind!r}; expected one of {', '.join(KINDS)}"
        raise InputError(msg)
    if kind == "exact":
        return ExactIndex(items, **options)
    return FaissIndex(items, kind, **options)
