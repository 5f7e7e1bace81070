from pathlib import Path

import polars as pl
import pytest
import torch
from toy_artifact import ITEMS, USERS, make_artifact

from recsys.artifact import Artifact
from recsys.errors import InputError
from recsys.evaluation.ranking import topk_items
from recsys.inference.recommend import Recommender, UnknownIdError
from recsys.inference.scoring import EmbeddingScorer


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """The known-answer toy artifact (see tests/toy_artifact.py)."""
    return Recommender.from_artifact(make_artifact(tmp_path_factory.mktemp("rec"), "art"))


def test_top_k_excludes_seen_items(rec):
    (ann,) = rec.recommend(["ann"], k=4)
    # ann's scores: 3, 2, 0, 1 for items 10..40; she has seen 10 and 20.
    assert ann.items == [40, 30] and ann.scores == [1.0, 0.0]
    (ann_all,) = rec.recommend(["ann"], k=2, exclude_seen=False)
    assert ann_all.items == [10, 20]
    # k is clipped to the catalogue; cy has seen 3 of 4 items, so only one is left.
    (cy,) = rec.recommend(["cy"], k=50)
    assert cy.items == [40]


def test_batch_equals_single_and_ids_may_be_text(rec):
    both = rec.recommend(["ann", "bob"], k=2)
    assert both[0] == rec.recommend(["ann"], k=2)[0] and both[1] == rec.recommend(["bob"], k=2)[0]
    assert rec.item_indices(["40", 40, "x"]) == [3, 3, None]


def test_include_and_exclude(rec):
    (bob,) = rec.recommend(["bob"], k=3, exclude=[30])
    assert bob.items == [40, 10]
    (bob,) = rec.recommend(["bob"], k=3, include=[10, 40])
    assert bob.items == [40, 10]
    with pytest.raises(UnknownIdError, match="unknown item id"):
        rec.recommend(["bob"], exclude=[99])


def test_unknown_users_are_named(rec):
    with pytest.raises(UnknownIdError, match="unknown user id\\(s\\): 'zed'") as err:
        rec.recommend(["ann", "zed"])
    assert err.value.ids == ["zed"]
    with pytest.raises(InputError, match="k must be >= 1"):
        rec.recommend(["ann"], k=0)


def test_fold_in_equals_the_aggregation_formula(rec):
    result, unknown = rec.recommend_new_user([10, 30, 99], k=4, exclude_seen=False)
    assert unknown == [99]
    # degrees: item 10 has 2 training users, item 30 has 1; |I_u| = 2.
    e = torch.tensor([3.0, 0.0]) / (2**0.5 * 3**0.5) + torch.tensor([0.0, 2.0]) / (2**0.5 * 2**0.5)
    expected = e @ torch.tensor([[3.0, 0.0], [2.0, 1.0], [0.0, 2.0], [1.0, 1.0]]).T
    order = torch.argsort(expected, descending=True)
    assert result.items == [ITEMS[i] for i in order]
    torch.testing.assert_close(torch.tensor(result.scores), expected[order])
    seen_excluded, _ = rec.recommend_new_user([10, 30], k=4)
    assert set(seen_excluded.items) == {20, 40}
    with pytest.raises(UnknownIdError):
        rec.recommend_new_user([98, 99])


def test_similar_items_are_symmetric_and_exclude_the_item(rec):
    sims = {
        i: dict(zip(*(lambda r: (r.items, r.scores))(rec.similar_items(i, k=3)), strict=True)) for i in ITEMS
    }
    for a in ITEMS:
        assert a not in sims[a]
        for b, s in sims[a].items():
            assert abs(sims[b][a] - s) < 1e-6
    assert rec.similar_items(10, k=1).items == [20]  # (3,0) is closest in angle to (2,1)


def test_popular_fallback(rec):
    assert rec.popular(k=2).items == [20, 10]  # 20 seen by 3 users, 10 by 2
    assert rec.model_version


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_retrieval_matches_exact_on_a_small_catalogue(rec, kind):
    approx = Recommender(rec.artifact, retrieval=kind)
    assert approx.index is not None and approx.index.kind == kind
    for exclude_seen in (True, False):
        for exclude in ((), [40]):
            got = approx.recommend(USERS, k=3, exclude_seen=exclude_seen, exclude=exclude)
            want = rec.recommend(USERS, k=3, exclude_seen=exclude_seen, exclude=exclude)
            for user, g, w in zip(USERS, got, want, strict=True):
                assert g.scores == pytest.approx(w.scores)  # the same best scores (items may swap on ties)
                full = rec.recommend([user], k=4, exclude_seen=False)[0]
                true_score = dict(zip(full.items, full.scores, strict=True))
                assert [true_score[i] for i in g.items] == pytest.approx(g.scores)
                assert not set(g.items) & set(exclude)
                if exclude_seen:  # only items the exact path could also recommend: none seen
                    assert set(g.items) <= set(rec.recommend([user], k=4, exclude=exclude)[0].items)
    # include lists stay on the exact path
    assert approx.recommend(["ann"], k=2, include=[30, 40]) == rec.recommend(["ann"], k=2, include=[30, 40])


def test_served_lists_are_the_evaluated_lists():
    """Serving and evaluation share one mask-and-top-k: same lists, seen items out, ties alike."""
    num_users, num_items = 12, 300
    g = torch.Generator().manual_seed(0)
    # Small integers: every product is exact whichever BLAS computes it, and many scores tie.
    user = torch.randint(-2, 3, (num_users, 3), generator=g).float()
    item = torch.randint(-2, 3, (num_items, 3), generator=g).float()
    seen = torch.rand(num_users, num_items, generator=g) < 0.3
    seen[0] = True
    seen[0, :3] = False  # user 0 has only 3 unseen items: a short list
    train = seen.nonzero().t()  # sorted by user, then item: the CSR an artifact stores
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), seen.sum(1).cumsum(0)])
    ids = {
        "users": pl.DataFrame({"raw_id": range(num_users)}),
        "items": pl.DataFrame({"raw_id": range(num_items)}),
    }
    artifact = Artifact(
        Path("mem"), {}, {}, user, item, **ids, seen_indptr=indptr.numpy(), seen_indices=train[1].numpy()
    )
    rec, scorer, users = Recommender(artifact), EmbeddingScorer(user, item), torch.arange(num_users)
    scores = user @ item.T
    for k in (2, 20):  # k = 2 takes the block-max prefilter of topk_rows, k = 20 plain torch.topk
        evaluated = topk_items(scorer, users, k, num_users=num_users, num_items=num_items, exclude=train)
        served = rec.recommend(list(range(num_users)), k=k)
        for u, (lists, one) in enumerate(zip(evaluated.tolist(), served, strict=True)):
            expected = [i for i in lists if i >= 0]
            assert one.items == expected and one.scores == scores[u, expected].tolist()
            assert not seen[u, expected].any()
            assert rec.recommend([u], k=k)[0] == one  # alone or in a batch, ties resolve alike
        assert len(served[0].items) == min(k, 3)  # the short list ends early
    assert any(len(set(one.scores)) < len(one.scores) for one in served)  # the lists hold ties
