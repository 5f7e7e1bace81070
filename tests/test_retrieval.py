import pytest
import torch

from recsys.errors import InputError
from recsys.inference.retrieval import build_index


def vectors(n, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_exact_index_equals_a_full_topk_in_chunks():
    items, queries = vectors(500), vectors(37, seed=1)
    scores, ids = build_index(items, "exact", chunk=8).search(queries, 10)
    want = torch.topk(queries @ items.T, 10, dim=1)
    torch.testing.assert_close(scores, want.values)
    assert torch.equal(ids, want.indices)


def test_exact_index_clips_k_to_the_catalogue():
    scores, ids = build_index(vectors(5), "exact").search(vectors(2, seed=1), 20)
    assert scores.shape == ids.shape == (2, 5)


def test_ivf_scanning_every_cell_is_exact():
    items, queries = vectors(2000), vectors(20, seed=1)
    index = build_index(items, "ivf", nlist=16, nprobe=16)
    scores, ids = index.search(queries, 10)
    want = torch.topk(queries @ items.T, 10, dim=1)
    assert torch.equal(ids, want.indices)
    torch.testing.assert_close(scores, want.values, rtol=1e-4, atol=1e-4)
    assert index.build_seconds > 0


def test_hnsw_finds_nearly_all_true_neighbours_on_a_small_set():
    items, queries = vectors(2000), vectors(50, seed=1)
    _, ids = build_index(items, "hnsw", ef_search=256).search(queries, 10)
    truth = torch.topk(queries @ items.T, 10, dim=1).indices
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, truth, strict=True))
    assert hits / truth.numel() >= 0.95


def test_unknown_retrieval_kind_is_a_clear_error():
    with pytest.raises(InputError, match="unknown retrieval 'lsh'; expected one of exact, ivf, hnsw"):
        build_index(vectors(10), "lsh")
