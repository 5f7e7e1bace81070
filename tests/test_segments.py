"""Segments, popularity bias and embedding geometry against naive per-user and per-pair computations."""

import math

import numpy as np
import pytest
import torch

from recsys.evaluation.geometry import UNIFORMITY_T, alignment, uniformity
from recsys.evaluation.ranking import full_ranking, topk_items
from recsys.evaluation.segments import ITEM_SEGMENTS, USER_SEGMENTS, define_segments, gini
from recsys.inference.scoring import EmbeddingScorer


def test_segment_cuts_follow_interaction_mass_and_activity_quantiles() -> None:
    # Item popularity 50, 30, 10, 5, 3, 2 (100 interactions): item 0 alone holds the first 20 % (head);
    # items 2..5 hold the last 20 % (tail: popularity <= 10); item 1 is mid.
    items = torch.repeat_interleave(torch.arange(6), torch.tensor([50, 30, 10, 5, 3, 2]))
    # User activity 1..10 interactions for users 0..9 (55 events, cycling over the 100 item slots).
    users = torch.repeat_interleave(torch.arange(10), torch.arange(1, 11))
    train = torch.stack([torch.cat([users, users[: 100 - 55]]), items])
    seg = define_segments(train, 10, 6)
    assert seg.item_segment.tolist() == [0, 1, 2, 2, 2, 2]
    assert (seg.thresholds["head_min"], seg.thresholds["tail_max"]) == (50, 10)
    activity = torch.bincount(train[0], minlength=10)
    cold_max, heavy_min = seg.thresholds["cold_max"], seg.thresholds["heavy_min"]
    assert seg.user_segment.tolist() == [0 if a <= cold_max else 2 if a >= heavy_min else 1 for a in activity]
    assert (seg.user_segment == 0).sum() >= 2 and (seg.user_segment == 2).sum() >= 2
    described = seg.describe()
    assert described["items"]["head"]["interaction_share"] == pytest.approx(0.5)
    assert described["items"]["tail"]["interaction_share"] == pytest.approx(0.2)
    assert sum(v["users"] for v in described["users"].values()) == 10


def test_gini_matches_the_mean_absolute_difference_form() -> None:
    x = torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 3
    naive = (x.unsqueeze(0) - x.unsqueeze(1)).abs().sum() / (2 * 200**2 * x.mean())
    assert gini(x) == pytest.approx(float(naive), rel=1e-9)
    assert gini(torch.ones(10)) == pytest.approx(0.0)
    assert gini(torch.tensor([0.0, 0, 0, 5])) == pytest.approx(3 / 4)


def test_segment_metrics_equal_naive_per_user_loops() -> None:
    g = torch.Generator().manual_seed(1)
    num_users, num_items, k = 40, 60, 10
    state = torch.randint(0, 10, (num_users, num_items), generator=g)
    state[:8, :] = torch.where(state[:8] <= 1, 9, state[:8])  # light users: few training items
    train, test = state.le(1).nonzero().t(), state.eq(2).nonzero().t()
    train = torch.cat([train, torch.tensor([[0, 1, 2], [0, 0, 0]])], 1)  # every user keeps some training
    user, item = torch.randn(num_users, 8, generator=g), torch.randn(num_items, 8, generator=g)
    popularity = torch.bincount(train[1], minlength=num_items)
    seg = define_segments(train, num_users, num_items)
    result = full_ranking(
        EmbeddingScorer(user, item),
        test,
        num_users=num_users,
        num_items=num_items,
        exclude=train,
        ks=(5, k),
        item_popularity=popularity,
        segments=seg,
        batch_size=7,
    )
    lists = topk_items(
        EmbeddingScorer(user, item),
        torch.arange(num_users),
        k,
        num_users=num_users,
        num_items=num_items,
        exclude=train,
    ).tolist()
    relevant = {u: set() for u in range(num_users)}
    for u, i in test.t().tolist():
        relevant[u].add(i)
    evaluated = [u for u in range(num_users) if relevant[u]]
    user_seg, item_seg = seg.user_segment.tolist(), seg.item_segment.tolist()
    for s, name in enumerate(USER_SEGMENTS):
        members = [u for u in evaluated if user_seg[u] == s]
        recall = [len(relevant[u] & set(lists[u])) / len(relevant[u]) for u in members]
        assert result.segments["users"][name]["users"] == len(members)
        assert result.segments["users"][name][f"recall@{k}"] == pytest.approx(
            np.mean(recall) if recall else 0.0
        )
    for s, name in enumerate(ITEM_SEGMENTS):
        recall = []
        for u in evaluated:
            rel_s = {i for i in relevant[u] if item_seg[i] == s}
            if rel_s:
                recall.append(len(rel_s & set(lists[u])) / len(rel_s))
        assert result.segments["items"][name]["users"] == len(recall)
        assert result.segments["items"][name][f"recall@{k}"] == pytest.approx(
            np.mean(recall) if recall else 0.0
        )
    exposure = np.zeros(num_items)
    for u in evaluated:
        for i in lists[u]:
            exposure[i] += 1
    np.testing.assert_array_equal(result.exposure[1].numpy(), exposure)
    slots = exposure.sum()
    tail = sum(exposure[i] for i in range(num_items) if item_seg[i] == 2) / slots
    assert result.metrics[f"tail_share@{k}"] == pytest.approx(tail)
    assert result.segments["items"]["tail"][f"exposure_share@{k}"] == pytest.approx(tail)
    naive_gini = np.abs(exposure[:, None] - exposure[None, :]).sum() / (2 * num_items**2 * exposure.mean())
    assert result.metrics[f"gini@{k}"] == pytest.approx(naive_gini)
    pop = popularity.numpy()
    assert result.metrics[f"popularity@{k}"] == pytest.approx(
        sum(pop[i] for u in evaluated for i in lists[u]) / slots
    )


def test_uniformity_sums_the_pairs_a_triangle_mask_picks_bit_for_bit() -> None:
    """The row slices gather the upper triangle as a boolean mask did, so the sum is the same float."""

    def masked(emb: torch.Tensor, chunk: int) -> float:  # the computation the row slices replaced
        x = torch.nn.functional.normalize(emb.float(), dim=1)
        n, total = x.size(0), 0.0
        for start in range(0, n, chunk):
            block = x[start : start + chunk] @ x[start:].t()
            upper = torch.arange(block.size(1)).unsqueeze(0) > torch.arange(block.size(0)).unsqueeze(1)
            total += float(torch.exp(UNIFORMITY_T * (2.0 * block.double() - 2.0))[upper].sum())
        return math.log(total / (n * (n - 1) / 2))

    g = torch.Generator().manual_seed(5)
    for n, chunk in ((2, 1024), (300, 1024), (300, 7), (1025, 1024), (2048, 1024), (2048, 300)):
        emb = torch.randn(n, 16, generator=g)
        assert uniformity(emb, chunk=chunk) == masked(emb, chunk)


def test_alignment_and_uniformity_equal_naive_loops() -> None:
    g = torch.Generator().manual_seed(2)
    user, item = torch.randn(30, 5, generator=g), torch.randn(20, 5, generator=g)
    pairs = torch.tensor([[0, 3, 3, 29], [1, 0, 19, 4]])

    def unit(v: torch.Tensor) -> np.ndarray:
        a = v.double().numpy()
        return a / np.linalg.norm(a)

    naive_align = np.mean([np.sum((unit(user[u]) - unit(item[i])) ** 2) for u, i in pairs.t().tolist()])
    assert alignment(user, item, pairs) == pytest.approx(naive_align)
    potentials = [
        math.exp(-2 * np.sum((unit(user[a]) - unit(user[b])) ** 2))
        for a in range(30)
        for b in range(a + 1, 30)
    ]
    exact = math.log(np.mean(potentials))
    assert uniformity(user) == pytest.approx(exact, rel=1e-6)
    assert uniformity(user, chunk=7) == pytest.approx(exact, rel=1e-6)
    many = torch.randn(600, 5, generator=g)
    full = uniformity(many)
    sampled = uniformity(many, max_points=200)  # all pairs of a random subset of 200 of the 600 points
    assert sampled == pytest.approx(full, abs=0.05) and sampled != pytest.approx(full, rel=1e-6)
    same = torch.ones(10, 3)
    assert uniformity(same) == pytest.approx(0.0, abs=1e-6)  # all at one point: the worst possible spread
    assert alignment(same, same, torch.tensor([[0], [1]])) == pytest.approx(0.0, abs=1e-6)
