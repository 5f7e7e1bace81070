"""Metric definitions: hand-computed cases, edge cases, a naive per-user loop and PyG's link_pred metrics."""

import math

import pytest
import torch
from torch_geometric.metrics import (
    LinkPredAveragePopularity,
    LinkPredCoverage,
    LinkPredHitRatio,
    LinkPredMRR,
    LinkPredNDCG,
    LinkPredPrecision,
    LinkPredRecall,
)

from recsys.evaluation.metrics import RankingAccumulator, check_ks, ranking_metrics, relevance

NAMES = ("recall", "ndcg", "precision", "hit", "mrr")


def _coo(lists: list[list[int]]) -> torch.Tensor:
    rows = [r for r, items in enumerate(lists) for _ in items]
    cols = [i for items in lists for i in items]
    return torch.tensor([rows, cols], dtype=torch.int64).view(2, -1)


def test_perfect_ranking_scores_one() -> None:
    topk = torch.tensor([[3, 1], [0, 2]])
    out = ranking_metrics(topk, _coo([[1, 3], [2, 0]]), ks=[2], num_items=4)
    for name in NAMES:
        assert out[f"{name}@2"] == pytest.approx(1.0)


def test_no_hits_scores_zero() -> None:
    topk = torch.tensor([[3, 1], [0, 2]])
    out = ranking_metrics(topk, _coo([[0, 2], [1]]), ks=[1, 2], num_items=4)
    for name in NAMES:
        assert out[f"{name}@1"] == 0.0
        assert out[f"{name}@2"] == 0.0


def test_hand_computed_case() -> None:
    # user 0: list [5, 1, 7], relevant {1, 9}: first hit at rank 2.
    # user 1: list [2, 3, 4], relevant {4}: first hit at rank 3.
    topk = torch.tensor([[5, 1, 7], [2, 3, 4]])
    popularity = torch.arange(10, dtype=torch.float)
    out = ranking_metrics(topk, _coo([[1, 9], [4]]), ks=[1, 3], num_items=10, item_popularity=popularity)
    g2, g3 = 1 / math.log2(3), 1 / math.log2(4)  # discounts of ranks 2 and 3
    assert out["recall@3"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert out["precision@3"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert out["hit@3"] == pytest.approx(1.0)
    assert out["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    # IDCG over min(K, |R|): user 0 has 2 relevant items (1 + g2), user 1 has one (1).
    assert out["ndcg@3"] == pytest.approx((g2 / (1 + g2) + g3 / 1) / 2)
    for name in NAMES:
        assert out[f"{name}@1"] == 0.0
    assert out["coverage@1"] == pytest.approx(2 / 10)  # {5, 2}
    assert out["coverage@3"] == pytest.approx(6 / 10)  # {5, 1, 7, 2, 3, 4}
    assert out["popularity@1"] == pytest.approx((5 + 2) / 2)
    assert out["popularity@3"] == pytest.approx((5 + 1 + 7 + 2 + 3 + 4) / 6)


def test_ndcg_with_more_relevant_items_than_k() -> None:
    # 5 relevant items, K = 2, one hit at rank 1: IDCG is that of 2 hits, not 5.
    out = ranking_metrics(torch.tensor([[0, 9]]), _coo([[0, 1, 2, 3, 4]]), ks=[2], num_items=10)
    assert out["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert out["recall@2"] == pytest.approx(1 / 5)
    assert out["precision@2"] == pytest.approx(1 / 2)


def test_mrr_uses_first_hit_only() -> None:
    out = ranking_metrics(torch.tensor([[7, 2, 3, 1]]), _coo([[3, 2]]), ks=[4], num_items=8)
    assert out["mrr@4"] == pytest.approx(1 / 2)


def test_hit_counts_users_not_interactions() -> None:
    # SELFRec's "hit ratio" would be 3 hits / 4 relevant = 0.75; ours is users with >= 1 hit: 1 of 2.
    topk = torch.tensor([[0, 1, 2], [5, 6, 7]])
    out = ranking_metrics(topk, _coo([[0, 1, 2], [3]]), ks=[3], num_items=8)
    assert out["hit@3"] == pytest.approx(0.5)


def test_rows_without_ground_truth_are_skipped() -> None:
    topk = torch.tensor([[0, 1], [2, 3], [4, 5]])
    gt = torch.tensor([[0, 2], [1, 5]])  # row 1 has none
    out = ranking_metrics(topk, gt, ks=[2], num_items=6)
    assert out["recall@2"] == pytest.approx(1.0)
    assert out["coverage@2"] == pytest.approx(4 / 6)  # row 1's items are not counted


def test_padding_is_never_a_hit_and_not_covered() -> None:
    topk = torch.tensor([[2, -1, -1]])
    popularity = torch.tensor([1.0, 2.0, 3.0])
    # Item 2 is the previous key of row 1's -1 in a flat layout; it must not alias.
    out = ranking_metrics(topk, _coo([[2]]), ks=[3], num_items=3, item_popularity=popularity)
    assert out["recall@3"] == 1.0
    assert out["precision@3"] == pytest.approx(1 / 3)
    assert out["coverage@3"] == pytest.approx(1 / 3)
    assert out["popularity@3"] == pytest.approx(3.0)
    rel = relevance(torch.tensor([[0, 1], [-1, 0]]), _coo([[1], [0]]))
    assert rel.tolist() == [[False, True], [False, True]]


def test_duplicate_ground_truth_counts_once() -> None:
    out = ranking_metrics(torch.tensor([[0, 1]]), torch.tensor([[0, 0, 0], [1, 1, 3]]), ks=[2], num_items=4)
    assert out["recall@2"] == pytest.approx(1 / 2)


def test_check_ks() -> None:
    assert check_ks([20, 10, 20]) == (10, 20)
    for bad in ([], [0], [-1], [2.5], [True]):
        with pytest.raises(ValueError, match="ks"):
            check_ks(bad)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="ground_truth"):
        ranking_metrics(torch.tensor([[0, 1]]), torch.tensor([0, 1]), ks=[2])
    with pytest.raises(ValueError, match="ground_truth"):
        ranking_metrics(torch.tensor([[0, 1]]), torch.tensor([[3], [1]]), ks=[2])
    acc = RankingAccumulator([5], num_items=10)
    with pytest.raises(ValueError, match="topk_index"):
        acc.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool), torch.ones(2))


def _random_case(seed: int, num_rows: int = 40, num_items: int = 30, k: int = 12) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    topk = torch.stack([torch.randperm(num_items, generator=g)[:k] for _ in range(num_rows)])
    mask = torch.rand(num_rows, num_items, generator=g) < 0.15
    mask[:3] = False  # a few rows without ground truth
    gt = mask.nonzero().t()
    return topk, gt


def _naive(topk: torch.Tensor, gt: torch.Tensor, ks: list[int], num_items: int) -> dict[str, float]:
    """The definitions of recsys.evaluation.metrics, one user at a time in plain Python."""
    relevant: dict[int, set[int]] = {}
    for r, i in gt.t().tolist():
        relevant.setdefault(r, set()).add(i)
    out: dict[str, float] = {}
    for k in ks:
        sums = dict.fromkeys(NAMES, 0.0)
        covered: set[int] = set()
        for row, rel in relevant.items():
            items = topk[row, :k].tolist()
            covered.update(items)
            flags = [i in rel for i in items]
            hits = sum(flags)
            dcg = sum(1 / math.log2(j + 2) for j, f in enumerate(flags) if f)
            idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(rel))))
            first = next((j for j, f in enumerate(flags) if f), None)
            sums["recall"] += hits / len(rel)
            sums["precision"] += hits / k
            sums["hit"] += float(hits > 0)
            sums["ndcg"] += dcg / idcg
            sums["mrr"] += 0.0 if first is None else 1 / (first + 1)
        for name in NAMES:
            out[f"{name}@{k}"] = sums[name] / len(relevant)
        out[f"coverage@{k}"] = len(covered) / num_items
    return out


def test_equals_naive_loop_on_random_data() -> None:
    for seed in range(3):
        topk, gt = _random_case(seed)
        out = ranking_metrics(topk, gt, ks=[1, 5, 12], num_items=30)
        expected = _naive(topk, gt, [1, 5, 12], num_items=30)
        assert out.keys() == expected.keys()
        for key, value in expected.items():
            assert out[key] == pytest.approx(value, abs=1e-12), key


def test_chunked_updates_equal_one_update() -> None:
    topk, gt = _random_case(7)
    num_relevant = torch.bincount(gt[0], minlength=topk.size(0))
    rel = relevance(topk, gt)
    pop = torch.rand(30)
    whole = RankingAccumulator([3, 12], 30, pop)
    whole.update(topk, rel, num_relevant)
    parts = RankingAccumulator([3, 12], 30, pop)
    for sl in (slice(0, 7), slice(7, 8), slice(8, 40)):
        parts.update(topk[sl], rel[sl], num_relevant[sl])
    assert parts.num_users == whole.num_users == int((num_relevant > 0).sum())
    assert parts.compute() == pytest.approx(whole.compute(), abs=1e-12)


def test_equals_pyg_link_pred_metrics() -> None:
    # PyG's definitions coincide with ours for binary relevance without duplicate ground truth:
    # NDCG's ideal DCG uses min(K, |rel|) (its `idcg[label_count.clamp(max=k)]`), precision divides by K,
    # hit ratio counts users, and rows without ground truth are left out of the averages. PyG's coverage
    # and average popularity count every row passed, so only rows with ground truth are passed here.
    for seed in range(3):
        topk, gt = _random_case(seed)
        popularity = torch.randint(0, 50, (30,)).float()
        out = ranking_metrics(topk, gt, ks=[5, 12], num_items=30, item_popularity=popularity)
        has_gt = torch.unique(gt[0])
        remap = torch.full((topk.size(0),), -1)
        remap[has_gt] = torch.arange(has_gt.numel())
        sub_topk, sub_gt = topk[has_gt], torch.stack([remap[gt[0]], gt[1]])
        for k in (5, 12):
            pyg = {
                "recall": LinkPredRecall(k),
                "ndcg": LinkPredNDCG(k),
                "precision": LinkPredPrecision(k),
                "hit": LinkPredHitRatio(k),
                "mrr": LinkPredMRR(k),
                "coverage": LinkPredCoverage(k, num_dst_nodes=30),
                "popularity": LinkPredAveragePopularity(k, popularity=popularity),
            }
            for name, metric in pyg.items():
                # Two updates, as the evaluator sends chunks.
                metric.update(sub_topk[:10], sub_gt[:, sub_gt[0] < 10])
                metric.update(sub_topk[10:], sub_gt[:, sub_gt[0] >= 10] - torch.tensor([[10], [0]]))
                assert out[f"{name}@{k}"] == pytest.approx(float(metric.compute()), rel=1e-6, abs=1e-6), (
                    name,
                    k,
                )
