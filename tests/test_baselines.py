"""Reference rows at their natural cost: popular lists, closed-form random (filters: test_graph_filter)."""

import itertools

import numpy as np
import pytest
import torch

from recsys.evaluation.baselines import (
    PopularityScorer,
    RandomScorer,
    expected_random,
    popular_lists,
    popularity_order,
)
from recsys.evaluation.metrics import ranking_metrics
from recsys.evaluation.ranking import GroundTruth, ListMeasure, full_ranking, topk_items
from recsys.evaluation.segments import define_segments
from recsys.inference.topk import excluded_pairs


def _pairs(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero().t().contiguous()


def test_popular_lists_equal_full_ranking_of_popularity() -> None:
    g = torch.Generator().manual_seed(0)
    state = torch.randint(0, 6, (40, 30), generator=g)
    state[0, :28], state[0, 28:] = 0, 5  # user 0 may get only 2 items: padded lists
    train, exclude = _pairs(state == 0), _pairs(state <= 1)
    users = torch.arange(40)
    for k in (5, 29, 35):  # k beyond the catalogue pads every list
        expected = topk_items(
            PopularityScorer(train, 30), users, k, num_users=40, num_items=30, exclude=exclude
        )
        chunks = popular_lists(
            popularity_order(train, 30), users, k, num_users=40, exclude=exclude, batch_size=7
        )
        lists = torch.cat([index for _, _, index in chunks])
        assert torch.equal(lists, expected)
    assert (lists[0] >= 0).sum() == 2


def _tiny():
    """2 users, 5 items. User 0: 4 candidates, 2 relevant; user 1: 3 candidates, 1 relevant, 1 masked one."""
    exclude = torch.tensor([[0, 1, 1], [4, 0, 1]])
    truth = torch.tensor([[0, 0, 1, 1], [1, 3, 2, 1]])
    train = torch.tensor([[0, 1, 1, 0, 1, 0, 1], [4, 0, 1, 0, 0, 2, 3]])
    return exclude, truth, train


def test_expected_random_is_exact() -> None:
    """Average over every joint random ranking of both users' candidates, metric by metric."""
    exclude, truth, train = _tiny()
    num_items, k = 5, 2
    popularity = torch.bincount(train[1], minlength=num_items)
    segments = define_segments(train, 2, num_items)
    candidates = [
        [i for i in range(num_items) if (u, i) not in set(map(tuple, exclude.t().tolist()))] for u in (0, 1)
    ]
    gt = GroundTruth(truth, 2, num_items, "cpu")
    runs = []
    for first, second in itertools.product(
        itertools.permutations(candidates[0]), itertools.permutations(candidates[1])
    ):
        lists = torch.tensor([list(first[:k]), list(second[:k])])
        measure = ListMeasure(gt, (k,), item_popularity=popularity, segments=segments)
        measure.update(0, 2, lists)
        runs.append(measure.result())
    result = expected_random(gt, exclude, (k,), item_popularity=popularity, segments=segments)
    exact = {name: np.mean([r.metrics[name] for r in runs]) for name in runs[0].metrics}
    exact.pop(f"gini@{k}")  # the closed form reports the Gini of the expected exposure, not E[Gini]
    assert {name: result.metrics[name] for name in exact} == pytest.approx(exact, abs=1e-12)
    for side in ("users", "items"):
        for segment, row in result.segments[side].items():
            for name, value in row.items():
                expected = np.mean([r.segments[side][segment][name] for r in runs])
                assert value == pytest.approx(expected, abs=1e-12), (side, segment, name)
    exposure = torch.stack([r.exposure for r in runs]).mean(0)
    torch.testing.assert_close(result.exposure, exposure.double(), atol=1e-12, rtol=0)
    # And the same numbers straight from the metric definitions, for one hand-checked value: user 0 has
    # 2 relevant of 4 candidates, user 1 has 1 of 3 and 2 relevant in all: recall = (2/4*2/2 + 1/3*2/2) / 2.
    assert result.metrics["recall@2"] == pytest.approx((0.5 + (2 / 3) / 2) / 2)
    assert result.metrics["precision@2"] == pytest.approx((2 * 2 / 4 + 2 * 1 / 3) / 2 / 2)
    assert ranking_metrics(torch.tensor([[0, 1]]), torch.tensor([[0], [1]]), [2])["recall@2"] == 1.0


def test_popular_and_random_take_the_masked_pairs_prepared_once() -> None:
    g = torch.Generator().manual_seed(5)
    state = torch.randint(0, 8, (30, 50), generator=g)
    train, test = _pairs(state <= 2), _pairs(state == 3)
    gt = GroundTruth(test, 30, 50, "cpu")
    masked = excluded_pairs(train, gt.users, 30, 50)
    segments = define_segments(train, 30, 50)
    ks = (5, 10)
    prepared = expected_random(gt, masked, ks, segments=segments)
    assert prepared.metrics == expected_random(gt, train, ks, segments=segments).metrics
    order = popularity_order(train, 50)
    lists = [
        torch.cat([i for _, _, i in popular_lists(order, gt.users, 10, num_users=30, exclude=exclude)])
        for exclude in (train, masked)
    ]
    assert torch.equal(lists[0], lists[1])


def test_expected_random_agrees_with_full_ranking_of_random_scores() -> None:
    g = torch.Generator().manual_seed(3)
    state = torch.randint(0, 10, (30, 50), generator=g)
    train, test = _pairs(state <= 2), _pairs(state == 3)
    ks = (5, 10)
    runs = [
        full_ranking(RandomScorer(seed), test, num_users=30, num_items=50, exclude=train, ks=ks).metrics
        for seed in range(300)
    ]
    result = expected_random(GroundTruth(test, 30, 50, "cpu"), train, ks).metrics
    for name in runs[0]:
        values = np.array([r[name] for r in runs])
        tolerance = 4 * values.std() / np.sqrt(len(values)) + 1e-9
        assert result[name] == pytest.approx(values.mean(), abs=tolerance), name
