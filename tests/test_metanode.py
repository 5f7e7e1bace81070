"""Meta-node InfoNCE (design and properties: docs/metanode.md), k-means and wiring."""

import math

import pytest
import torch
from test_train import check_resume_matches, two_communities

from recsys.cli import build_parser
from recsys.config import TrainConfig, config_from_dict
from recsys.data.graph import build_graph
from recsys.errors import InputError
from recsys.models.build import build_model
from recsys.training.loop import fit
from recsys.training.losses import info_nce, info_nce_full, info_nce_metanode
from recsys.training.metanode import ContrastiveNegatives, spherical_kmeans
from recsys.training.objectives import OBJECTIVES, Batch

TAU = 0.2


def views(n, b, d, dtype=torch.float64, seed=0):
    """Random anchor rows (B, d), keys (N, d) and the anchors' positive index, all with gradient."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, d, generator=g, dtype=dtype)
    index = torch.randperm(n, generator=g)[:b]
    anchors = keys[index] + 0.3 * torch.randn(b, d, generator=g, dtype=dtype)
    return anchors.requires_grad_(True), keys.requires_grad_(True), index


def loss_and_grads(fn, anchors, keys):
    loss = fn(anchors, keys)
    ga, gk = torch.autograd.grad(loss, (anchors, keys))
    return loss.detach(), ga, gk


def rel(x, y):
    return ((x - y).norm() / y.norm()).item()


def meta(anchors, keys, index, assignment, k, second_order, weight=None):
    return info_nce_metanode(
        anchors, keys, index, assignment, TAU, num_clusters=k, second_order=second_order, key_weight=weight
    )


@pytest.mark.parametrize("second_order", [False, True])
def test_exact_at_k_equals_n_in_float64(second_order):
    anchors, keys, index = views(n=3000, b=1024, d=64)
    ident = torch.arange(3000)
    exact = loss_and_grads(lambda a, k: info_nce_full(a, k, index, TAU), anchors, keys)
    approx = loss_and_grads(lambda a, k: meta(a, k, index, ident, 3000, second_order), anchors, keys)
    assert abs(approx[0].item() - exact[0].item()) <= 1e-10
    assert rel(approx[1], exact[1]) <= 1e-10 and rel(approx[2], exact[2]) <= 1e-10


def test_exact_at_k_equals_n_in_float32():
    # The note's N = 50k takes ~3 s on one thread; N = 12k keeps the same check under a second.
    anchors, keys, index = views(n=12_000, b=512, d=64, dtype=torch.float32)
    ident = torch.arange(12_000)
    exact = loss_and_grads(lambda a, k: info_nce_full(a, k, index, TAU), anchors, keys)
    approx = loss_and_grads(lambda a, k: meta(a, k, index, ident, 12_000, True), anchors, keys)
    assert abs(approx[0].item() - exact[0].item()) <= 1e-5 * abs(exact[0].item())
    assert rel(approx[1], exact[1]) <= 1e-5 and rel(approx[2], exact[2]) <= 1e-5


@pytest.mark.parametrize("second_order", [False, True])
def test_batch_as_keys_gives_the_in_batch_info_nce(second_order):
    anchors, keys, _ = views(n=300, b=300, d=16)
    view_b = keys[torch.randperm(300, generator=torch.Generator().manual_seed(1))]
    ident = torch.arange(300)
    torch.testing.assert_close(
        meta(anchors, view_b, ident, ident, 300, second_order), info_nce(anchors, view_b, TAU)
    )


def test_one_cluster_first_order_closed_form():
    anchors, keys, index = views(n=500, b=64, d=8)
    a, k = torch.nn.functional.normalize(anchors, dim=1), torch.nn.functional.normalize(keys, dim=1)
    mean = k.mean(0)
    expected = (math.log(500) + a @ mean / TAU - (a * k[index]).sum(1) / TAU).mean()
    got = meta(anchors, keys, index, torch.zeros(500, dtype=torch.long), 1, False)
    torch.testing.assert_close(got, expected)


def hoeffding_bound(keys, assignment, k):
    unit = torch.nn.functional.normalize(keys, dim=1)
    means = torch.zeros(k, unit.size(1), dtype=unit.dtype).index_add_(0, assignment, unit)
    means = means / torch.bincount(assignment, minlength=k).clamp_min(1)[:, None]
    radius = (unit - means[assignment]).norm(dim=1).max()
    return (radius**2 / (2 * TAU**2)).item()


def test_first_order_gap_is_within_jensen_and_hoeffding_bounds():
    anchors, keys, index = views(n=600, b=128, d=16)
    anchors, keys = anchors.detach(), keys.detach()
    full = info_nce_full(anchors, keys, index, TAU).item()
    g = torch.Generator().manual_seed(5)
    random_assignment = torch.randint(20, (600,), generator=g)
    kmeans_assignment = spherical_kmeans(keys, 20, generator=g).assignment
    for assignment in (random_assignment, kmeans_assignment):
        gap = full - meta(anchors, keys, index, assignment, 20, False).item()
        assert 0 <= gap <= hoeffding_bound(keys, assignment, 20)
    # k-means clusters are tighter than random ones: a smaller gap.
    gaps = [
        full - meta(anchors, keys, index, c, 20, False).item() for c in (random_assignment, kmeans_assignment)
    ]
    assert gaps[1] < gaps[0]


def test_splitting_clusters_never_lowers_the_first_order_loss():
    anchors, keys, index = views(n=64, b=32, d=8)
    rank = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    losses = [meta(anchors, keys, index, rank >> (6 - level), 2**level, False).item() for level in range(7)]
    assert all(b >= a - 1e-12 for a, b in zip(losses, losses[1:], strict=False))
    assert abs(losses[-1] - info_nce_full(anchors, keys, index, TAU).item()) < 1e-12
    assert losses[-1] > losses[0]


@pytest.mark.parametrize("second_order", [False, True])
def test_unused_cluster_ids_are_ignored(second_order):
    anchors, keys, index = views(n=60, b=16, d=8)
    compact = torch.arange(60) % 3
    sparse = torch.tensor([0, 2, 5])[compact]  # ids 1, 3, 4, 6, 7 empty
    got = meta(anchors, keys, index, sparse, 8, second_order)
    grads = torch.autograd.grad(got, (anchors, keys))
    assert torch.isfinite(got) and all(torch.isfinite(x).all() for x in grads)
    torch.testing.assert_close(got, meta(anchors, keys, index, compact, 3, second_order))


@pytest.mark.parametrize("second_order", [False, True])
def test_gradcheck(second_order):
    anchors, keys, index = views(n=7, b=3, d=4)
    assignment = torch.tensor([0, 1, 1, 2, 0, 2, 2])
    assert torch.autograd.gradcheck(
        lambda a, k: meta(a, k, index, assignment, 3, second_order), (anchors, keys)
    )


@pytest.mark.parametrize("second_order", [False, True])
def test_detached_keys_keep_the_value_and_move_only_anchors_and_positives(second_order):
    anchors, keys, index = views(n=200, b=16, d=8)
    assignment = torch.arange(200) % 7
    attached = meta(anchors, keys, index, assignment, 7, second_order)
    detached = info_nce_metanode(
        anchors, keys, index, assignment, TAU, num_clusters=7, second_order=second_order, detach_keys=True
    )
    torch.testing.assert_close(detached, attached)
    (ga_att,) = torch.autograd.grad(attached, anchors)
    ga, gk = torch.autograd.grad(detached, (anchors, keys))
    torch.testing.assert_close(ga, ga_att)  # the anchors' gradient does not depend on detaching
    moved = gk.abs().sum(1) > 0
    assert set(moved.nonzero().flatten().tolist()) == set(index.tolist())  # only the positives' rows


@pytest.mark.parametrize("second_order", [False, True])
def test_degree_weights_exact_at_k_equals_n(second_order):
    anchors, keys, index = views(n=400, b=64, d=16)
    degree = torch.randint(1, 50, (400,), generator=torch.Generator().manual_seed(4)).double()
    weight = 400 * degree / degree.sum()
    ident = torch.arange(400)
    exact = loss_and_grads(lambda a, k: info_nce_full(a, k, index, TAU, weight), anchors, keys)
    approx = loss_and_grads(lambda a, k: meta(a, k, index, ident, 400, second_order, weight), anchors, keys)
    assert abs(approx[0].item() - exact[0].item()) <= 1e-10
    assert rel(approx[1], exact[1]) <= 1e-10 and rel(approx[2], exact[2]) <= 1e-10


def test_weighted_full_loss_against_a_loop():
    anchors, keys, index = views(n=5, b=3, d=4)
    weight = torch.tensor([0.5, 2.0, 0.0, 1.0, 1.5], dtype=torch.float64)
    a = [x / x.norm() for x in anchors.detach()]
    k = [x / x.norm() for x in keys.detach()]
    total = 0.0
    for u in range(3):
        denominator = sum(float(weight[v]) * math.exp(float(a[u] @ k[v]) / TAU) for v in range(5))
        total += math.log(denominator) - float(a[u] @ k[int(index[u])]) / TAU
    assert abs(info_nce_full(anchors, keys, index, TAU, weight).item() - total / 3) < 1e-12


# The fused implementation against the plain autograd computation -----------------------------------------


def plain_metanode(anchors, keys, index, assignment, k, second_order, weight=None, detach=False):
    """The estimator as plain autograd ops, the variance centred in two passes (the reference)."""
    a, unit = torch.nn.functional.normalize(anchors, dim=1), torch.nn.functional.normalize(keys, dim=1)
    w = torch.ones(unit.size(0), dtype=unit.dtype) if weight is None else weight.to(unit.dtype)
    mass = torch.zeros(k, dtype=unit.dtype).index_add_(0, assignment, w)
    empty = mass <= 0
    safe = torch.where(empty, torch.ones_like(mass), mass)
    stats = unit.detach() if detach else unit

    def mean(values):
        return (
            torch.zeros(k, values.size(1), dtype=unit.dtype).index_add(0, assignment, w[:, None] * values)
            / safe[:, None]
        )

    means = mean(stats)
    logits = torch.log(safe).masked_fill(empty, float("-inf")) + a @ means.T / TAU
    if second_order:
        var = mean((stats - means[assignment]).square())
        logits = logits + a.square() @ var.T / (2 * TAU**2)
    return (torch.logsumexp(logits, dim=1) - (a * unit[index]).sum(1) / TAU).mean()


def clustered(n, b, d, k, dtype=torch.float64, spread=0.3, seed=0):
    """Keys around k random centres (tight clusters, large means), anchors near their positives."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=dtype), dim=1)
    assignment = torch.randint(k, (n,), generator=g)
    keys = 3.0 * (centre[assignment] + spread * torch.randn(n, d, generator=g, dtype=dtype) / d**0.5)
    index = torch.randperm(n, generator=g)[:b]
    anchors = keys[index] + 0.2 * torch.randn(b, d, generator=g, dtype=dtype)
    return anchors.requires_grad_(True), keys.requires_grad_(True), index, assignment


@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("detach", [False, True])
def test_fused_equals_the_plain_computation_in_float64(second_order, weighted, detach):
    anchors, keys, index, assignment = clustered(n=900, b=120, d=16, k=24)
    assignment = torch.where(assignment == 5, 30, assignment)  # ids 5 and 24..29, 31 unused: empty
    weight = None
    if weighted:
        weight = torch.rand(900, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
        weight[assignment == 7] = 0.0  # a cluster of weight 0 is empty too
    got = loss_and_grads(
        lambda a, k: info_nce_metanode(
            a,
            k,
            index,
            assignment,
            TAU,
            num_clusters=32,
            second_order=second_order,
            key_weight=weight,
            detach_keys=detach,
        ),
        anchors,
        keys,
    )
    want = loss_and_grads(
        lambda a, k: plain_metanode(a, k, index, assignment, 32, second_order, weight, detach), anchors, keys
    )
    assert abs(got[0].item() - want[0].item()) <= 1e-12
    assert rel(got[1], want[1]) <= 1e-10 and rel(got[2], want[2]) <= 1e-10


@pytest.mark.parametrize("second_order", [False, True])
def test_fused_equals_the_plain_computation_in_float32(second_order):
    # Gowalla-like sizes, tight clusters of ~60 keys: the one-pass variance E[k²] − m² is where float32
    # could lose digits. Both are compared with the plain computation in float64.
    anchors, keys, index, assignment = clustered(n=20_000, b=1024, d=64, k=320, spread=0.1)
    exact = loss_and_grads(
        lambda a, k: plain_metanode(a, k, index, assignment, 320, second_order), anchors, keys
    )
    single = [x.detach().float().requires_grad_(True) for x in (anchors, keys)]
    fused = loss_and_grads(lambda a, k: meta(a, k, index, assignment, 320, second_order), *single)
    plain = loss_and_grads(lambda a, k: plain_metanode(a, k, index, assignment, 320, second_order), *single)
    for ours, theirs in ((fused, exact), (plain, exact)):
        assert abs(ours[0].item() - theirs[0].item()) <= 2e-6 * abs(theirs[0].item())
        assert rel(ours[1].double(), theirs[1]) <= 1e-5 and rel(ours[2].double(), theirs[2]) <= 1e-5


def test_fused_gradient_scales_with_the_upstream_gradient_and_survives_a_second_backward():
    anchors, keys, index, assignment = clustered(n=300, b=40, d=8, k=10)
    loss = meta(anchors, keys, index, assignment, 10, True)
    (0.3 * loss).backward(retain_graph=True)
    once = anchors.grad.clone(), keys.grad.clone()
    (0.3 * loss).backward()
    torch.testing.assert_close((anchors.grad, keys.grad), (2 * once[0], 2 * once[1]))
    ga, gk = torch.autograd.grad(meta(anchors, keys, index, assignment, 10, True), (anchors, keys))
    torch.testing.assert_close(once, (0.3 * ga, 0.3 * gk))


def test_fused_normalises_like_f_normalize_at_a_zero_row():
    anchors, keys, index, assignment = clustered(n=50, b=8, d=4, k=3)
    with torch.no_grad():
        keys[int(index[0])] = 0.0  # a positive with a zero row: divided by eps, as F.normalize does
        keys[1] = 0.0
    got = loss_and_grads(lambda a, k: meta(a, k, index, assignment, 3, True), anchors, keys)
    want = loss_and_grads(lambda a, k: plain_metanode(a, k, index, assignment, 3, True), anchors, keys)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_order_is_optional_and_checked():
    anchors, keys, index, assignment = clustered(n=200, b=16, d=8, k=7)
    order = torch.argsort(assignment)
    args = (anchors, keys, index, assignment, TAU)
    with_order = info_nce_metanode(*args, num_clusters=7, order=order)
    torch.testing.assert_close(with_order, info_nce_metanode(*args, num_clusters=7), rtol=1e-14, atol=0)
    with torch.no_grad():  # no gradient needed: the value alone
        torch.testing.assert_close(info_nce_metanode(*args, num_clusters=7), with_order.detach())
    with pytest.raises(ValueError, match=r"order must have the assignment's shape \(200,\)"):
        info_nce_metanode(*args, num_clusters=7, order=order[:10])


# k-means ------------------------------------------------------------------------------------------------


def blobs(centres=4, per=25, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centre = torch.nn.functional.normalize(torch.randn(centres, d, generator=g), dim=1)
    return (centre.repeat_interleave(per, 0) + 0.05 * torch.randn(centres * per, d, generator=g)).float()


def test_kmeans_reseeds_an_empty_cluster_at_a_node():
    x = torch.cat(
        [torch.tensor([[1.0, 0.1, 0, 0]]).repeat(10, 1), torch.tensor([[0.1, 1.0, 0, 0]]).repeat(10, 1)]
    )
    x = x + 0.01 * torch.rand(20, 4, generator=torch.Generator().manual_seed(0))
    init = torch.eye(4)[:3]  # the third centroid is orthogonal to every point: it gets no members
    result = spherical_kmeans(x, 3, generator=torch.Generator().manual_seed(1), iters=1, init=init)
    unit = torch.nn.functional.normalize(x, dim=1)
    assert torch.isclose((unit @ result.centroids[2]).max(), torch.tensor(1.0))
    assert (torch.bincount(result.assignment, minlength=3) > 0).all()


def test_kmeans_warm_start_from_converged_centroids_is_a_fixed_point():
    x = blobs()
    cold = spherical_kmeans(x, 4, generator=torch.Generator().manual_seed(0), iters=10)
    assert sorted(torch.bincount(cold.assignment).tolist()) == [25, 25, 25, 25]
    warm = spherical_kmeans(x, 4, generator=torch.Generator().manual_seed(9), iters=3, init=cold.centroids)
    assert torch.equal(warm.assignment, cold.assignment)
    torch.testing.assert_close(warm.centroids, cold.centroids)
    assert torch.allclose(cold.centroids.norm(dim=1), torch.ones(4))


def test_kmeans_clips_k_to_n_and_checks_init():
    x = blobs(centres=5, per=1)
    result = spherical_kmeans(x, 10, generator=torch.Generator().manual_seed(0))
    assert result.centroids.shape == (5, 8)
    assert sorted(result.assignment.tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"init must have shape \(5, 8\)"):
        spherical_kmeans(x, 10, generator=torch.Generator(), init=torch.randn(10, 8))


def test_kmeans_fits_a_subsample_then_assigns_every_node():
    x = blobs(centres=3, per=40)
    result = spherical_kmeans(
        x, 3, generator=torch.Generator().manual_seed(0), max_fit_nodes=50, fit_sample=30
    )
    unit = torch.nn.functional.normalize(x, dim=1)
    assert result.assignment.shape == (120,)
    assert torch.equal(result.assignment, (unit @ result.centroids.T).argmax(1))
    assert sorted(torch.bincount(result.assignment).tolist()) == [40, 40, 40]


# Wiring: the per-run state, the objectives, fit, config and CLI ------------------------------------------


def metanode_cfg(model="simgcl", **kw):
    values = {
        "model": model,
        "embedding_dim": 8,
        "cl_negatives": "metanode",
        "metanode_clusters": 4,
        "metanode_full_below": 0,
        **kw,
    }
    return TrainConfig(**values).resolved()


def test_refresh_schedule_and_state_round_trip():
    data = two_communities()
    graph = build_graph(data.train, data.num_users, data.num_items)
    cfg = metanode_cfg(metanode_refresh_epochs=2)
    model = build_model(cfg, data.num_users, data.num_items)
    negatives = ContrastiveNegatives.from_config(cfg, data.train, data.num_users, data.num_items)
    negatives.refresh(model, graph.adj, 1)
    first = negatives.assignment[0]
    assert first is not None and first.shape == (16,) and negatives.centroids[1].shape == (4, 8)
    negatives.refresh(model, graph.adj, 2)
    assert negatives.assignment[0] is first  # not a refresh epoch
    copy = ContrastiveNegatives.from_config(cfg, data.train, data.num_users, data.num_items)
    copy.load_state_dict(negatives.state_dict())
    negatives.refresh(model, graph.adj, 3)
    copy.refresh(model, graph.adj, 3)
    assert torch.equal(copy.assignment[1], negatives.assignment[1])
    assert torch.equal(copy.centroids[0], negatives.centroids[0])
    for mode in ("in_batch", "full"):
        other = ContrastiveNegatives.from_config(
            TrainConfig(model="simgcl", cl_negatives=mode), data.train, data.num_users, data.num_items
        )
        other.refresh(model, graph.adj, 1)
        assert other.assignment == [None, None]


def test_negatives_regroup_the_keys_whenever_the_assignment_changes():
    data = two_communities()
    graph = build_graph(data.train, data.num_users, data.num_items)
    cfg = metanode_cfg()
    model = build_model(cfg, data.num_users, data.num_items)
    negatives = ContrastiveNegatives.from_config(cfg, data.train, data.num_users, data.num_items)
    negatives.refresh(model, graph.adj, 1)
    keys = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    anchors, nodes = keys[:5] + 0.1, torch.arange(5)
    for assignment in (negatives.assignment[1], torch.arange(16) % 4, torch.arange(16) // 4):
        negatives.assignment[1] = assignment  # a refresh or a load replaces the tensor
        expected = info_nce_metanode(anchors, keys, nodes, assignment, TAU, num_clusters=4)
        torch.testing.assert_close(negatives.loss(anchors, keys, nodes, 1, TAU), expected)


def test_probe_leaves_the_training_gradient_unchanged():
    data = two_communities()
    graph = build_graph(data.train, data.num_users, data.num_items)
    batch = Batch(torch.tensor([0, 3, 9]), torch.tensor([1, 2, 12]), torch.tensor([10, 11, 4]))
    grads, stats = [], []
    for probe_every in (0, 1):
        cfg = metanode_cfg(model="xsimgcl", metanode_probe_every=probe_every)
        model = build_model(cfg, data.num_users, data.num_items)
        model.reset_parameters(torch.Generator().manual_seed(0))
        negatives = ContrastiveNegatives.from_config(cfg, data.train, data.num_users, data.num_items)
        negatives.refresh(model, graph.adj, 1)
        losses = OBJECTIVES["xsimgcl"](
            model, graph.adj, batch, cfg, torch.Generator().manual_seed(1), negatives=negatives
        )
        losses.total.backward()
        grads.append(model.embedding.grad)
        stats.append(negatives.epoch_stats())
    assert torch.equal(grads[0], grads[1])
    assert stats[0] == {} and set(stats[1]) == {"probe_gap", "probe_grad_cos"}
    assert -1 <= stats[1]["probe_grad_cos"] <= 1 and math.isfinite(stats[1]["probe_gap"])


def test_objective_without_negatives_state_refuses_metanode():
    data = two_communities()
    graph = build_graph(data.train, data.num_users, data.num_items)
    cfg = metanode_cfg()
    model = build_model(cfg, data.num_users, data.num_items)
    batch = Batch(torch.tensor([0]), torch.tensor([1]), torch.tensor([10]))
    with pytest.raises(ValueError, match="needs negatives="):
        OBJECTIVES["simgcl"](model, graph.adj, batch, cfg, None)
    with pytest.raises(RuntimeError, match="call refresh"):
        negatives = ContrastiveNegatives.from_config(cfg, data.train, data.num_users, data.num_items)
        OBJECTIVES["simgcl"](model, graph.adj, batch, cfg, None, negatives=negatives)


@pytest.mark.parametrize("model", ["simgcl", "xsimgcl"])
def test_training_with_metanode_negatives_decreases_the_loss(model):
    cfg = metanode_cfg(model=model, lr=0.01, batch_size=32, epochs=12, metanode_probe_every=2)
    result = fit(two_communities(), cfg, progress=False)
    losses = [r["loss"] for r in result.history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert all(-1 <= r["probe_grad_cos"] <= 1 for r in result.history)


def test_full_negatives_train_and_differ_from_in_batch():
    data = two_communities()
    base = {"model": "simgcl", "embedding_dim": 8, "lr": 0.01, "batch_size": 32, "epochs": 2}
    full = fit(data, TrainConfig(**base, cl_negatives="full"), progress=False)
    in_batch = fit(data, TrainConfig(**base), progress=False)
    assert all(math.isfinite(r["cl"]) for r in full.history)
    # All 16 users are negatives instead of the ~batch's 16: different loss values.
    assert full.history[0]["cl"] != in_batch.history[0]["cl"]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"model": "simgcl", "cl_negatives": "all"}, "unknown cl_negatives 'all'"),
        ({"model": "lightgcn", "cl_negatives": "metanode"}, "needs a contrastive model"),
        ({"model": "simgcl", "metanode_key_weight": "pop"}, "unknown metanode_key_weight 'pop'"),
        ({"model": "simgcl", "metanode_clusters": 0}, "metanode_clusters must be an integer >= 1, got 0"),
        ({"model": "simgcl", "metanode_refresh_epochs": 0}, "metanode_refresh_epochs must be"),
        ({"model": "simgcl", "metanode_kmeans_iters": 1.5}, "metanode_kmeans_iters must be an integer"),
        ({"model": "simgcl", "metanode_full_below": -1}, "metanode_full_below must be an integer >= 0"),
        ({"model": "simgcl", "metanode_probe_every": -2}, "metanode_probe_every must be"),
        (
            {"model": "simgcl", "metanode_second_order": "false"},
            "metanode_second_order must be true or false",
        ),
    ],
)
def test_config_rejects_bad_negatives_options(values, match):
    with pytest.raises(InputError, match=match):
        config_from_dict(values)


def test_cli_flags_for_the_negatives_options():
    base = ["train", "--dataset", "d", "--out", "o"]
    args = build_parser().parse_args(
        [
            *base,
            "--cl-negatives",
            "metanode",
            "--metanode-second-order",
            "false",
            "--metanode-clusters",
            "256",
        ]
    )
    assert (args.cl_negatives, args.metanode_second_order, args.metanode_clusters) == ("metanode", False, 256)
    assert build_parser().parse_args([*base, "--metanode-second-order", "True"]).metanode_second_order is True
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--metanode-second-order", "maybe"])


def test_degree_weights_come_from_the_training_graph():
    train = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 2]])  # user 2 and item 3 have no interactions
    cfg = TrainConfig(model="simgcl", cl_negatives="full", metanode_key_weight="degree")
    user_w, item_w = ContrastiveNegatives.from_config(cfg, train, 3, 4).key_weights
    torch.testing.assert_close(user_w, torch.tensor([2.25, 0.75, 0.0]))
    torch.testing.assert_close(item_w, torch.tensor([1.0, 1.0, 2.0, 0.0]))
    result = fit(two_communities(), metanode_cfg(metanode_key_weight="degree", epochs=2), progress=False)
    assert all(math.isfinite(r["cl"]) for r in result.history)


def rec_metanode_cfg(model="lightgcn", **kw):
    values = {
        "model": model,
        "embedding_dim": 8,
        "rec_loss": "softmax",
        "rec_denominator": "metanode",
        "metanode_clusters": 4,
        "metanode_full_below": 0,
        **kw,
    }
    return TrainConfig(**values).resolved()


@pytest.mark.parametrize("rec_loss", ["softmax", "bsl"])
def test_rec_metanode_denominator_at_k_equals_n_is_the_full_softmax(rec_loss):
    """With one meta-node per item the meta-node softmax over every item is exact (issue 22, part 3)."""
    data = two_communities()
    graph = build_graph(data.train, data.num_users, data.num_items)
    batch = Batch(torch.tensor([0, 3, 9, 3]), torch.tensor([1, 2, 12, 5]), torch.tensor([10, 11, 4, 0]))
    results = []
    for denominator in ("full", "metanode"):
        cfg = rec_metanode_cfg(rec_loss=rec_loss, rec_denominator=denominator, metanode_clusters=16)
        model = build_model(cfg, data.num_users, data.num_items)
        model.reset_parameters(torch.Generator().manual_seed(0))
        negatives = ContrastiveNegatives.from_config(cfg, data.train, data.num_users, data.num_items)
        negatives.refresh(model, graph.adj, 1)
        if denominator == "metanode":  # spherical k-means at K = N: every item is its own cluster
            assert negatives.rec.metanode.assignment[1].unique().numel() == 16
            assert negatives.assignment == [None, None]  # the contrastive side is untouched (in_batch)
        losses = OBJECTIVES["lightgcn"](model, graph.adj, batch, cfg, None, negatives=negatives)
        losses.total.backward()
        results.append((losses.bpr.detach(), model.embedding.grad))
    torch.testing.assert_close(results[1], results[0])


def test_rec_metanode_state_refresh_probe_and_round_trip():
    data = two_communities()
    graph = build_graph(data.train, data.num_users, data.num_items)
    cfg = rec_metanode_cfg(
        model="xsimgcl", cl_negatives="metanode", metanode_refresh_epochs=2, metanode_probe_every=1
    )
    model = build_model(cfg, data.num_users, data.num_items)
    negatives = ContrastiveNegatives.from_config(cfg, data.train, data.num_users, data.num_items)
    negatives.refresh(model, graph.adj, 1)
    rec = negatives.rec.metanode
    items = rec.assignment[1]
    assert rec.assignment[0] is None and items.shape == (16,) and rec.centroids[1].shape == (4, 8)
    assert negatives.assignment[1] is not None  # both sets of meta-nodes, from one pass
    batch = Batch(torch.tensor([0, 3, 9]), torch.tensor([1, 2, 12]), torch.tensor([10, 11, 4]))
    OBJECTIVES["xsimgcl"](model, graph.adj, batch, cfg, torch.Generator().manual_seed(0), negatives=negatives)
    stats = negatives.epoch_stats()
    assert {"probe_gap", "probe_grad_cos", "rec_probe_gap", "rec_probe_grad_cos"} <= set(stats)
    assert math.isfinite(stats["rec_probe_gap"]) and -1 <= stats["rec_probe_grad_cos"] <= 1
    negatives.refresh(model, graph.adj, 2)
    assert rec.assignment[1] is items  # not a refresh epoch
    copy = ContrastiveNegatives.from_config(cfg, data.train, data.num_users, data.num_items)
    copy.load_state_dict(negatives.state_dict())
    assert torch.equal(copy.rec.metanode.assignment[1], items) and copy.rec.metanode.steps == rec.steps
    negatives.refresh(model, graph.adj, 3)
    copy.refresh(model, graph.adj, 3)
    assert torch.equal(copy.rec.metanode.centroids[1], rec.centroids[1])


@pytest.fixture(scope="module")
def logged_dataset(tmp_path_factory):
    """A generated log of 120 users and 80 items, split by time (as test_train.py's ``dataset_dir``)."""
    from pipelines import IngestConfig, ingest
    from pipelines.readers import LogSpec
    from pipelines.synthetic import SyntheticConfig, generate
    from recsys.data.dataset import load_dataset

    root = tmp_path_factory.mktemp("softmax")
    log = root / "log.csv"
    generate(SyntheticConfig(num_users=120, num_items=80, num_interactions=3000, seed=2), log, progress=False)
    spec = LogSpec("csv", time_col="timestamp")
    config = IngestConfig(out=root / "ds", spec=spec, input=log, split="temporal")
    return load_dataset(ingest(config).out)


@pytest.mark.parametrize(
    "values",
    [
        {"model": "lightgcn", "rec_loss": "softmax", "rec_negatives": 64},
        {"model": "xsimgcl", "rec_loss": "bsl", "rec_pool": "popularity"},
        {"model": "mf", "rec_loss": "softmax", "rec_denominator": "metanode", "metanode_clusters": 8,
         "metanode_full_below": 0, "metanode_refresh_epochs": 2, "metanode_probe_every": 3},
    ],
)  # fmt: skip
def test_resume_with_a_softmax_ends_exactly_as_an_uninterrupted_run(logged_dataset, tmp_path, values):
    """The shared negatives come from the checkpointed noise stream, the item meta-nodes from the state."""
    cfg = TrainConfig(embedding_dim=16, batch_size=256, epochs=4, seed=3, **values)
    full = check_resume_matches(logged_dataset, cfg, tmp_path / "ckpt")
    assert all(math.isfinite(r["bpr"]) for r in full.history)
    if values.get("metanode_probe_every"):
        assert "rec_probe_gap" in full.history[-1]


@pytest.mark.parametrize(
    ("model", "rec_loss"), [("lightgcn", "softmax"), ("lightgcn", "bsl"), ("xsimgcl", "softmax")]
)
def test_each_softmax_ranks_the_withheld_item_first(model, rec_loss):
    """As ``test_each_model_ranks_the_withheld_item_first`` (test_train.py) does for BPR."""
    data = two_communities()
    cfg = TrainConfig(
        model=model,
        embedding_dim=16,
        lr=0.01,
        batch_size=32,
        epochs=60,
        metric="ndcg@20",
        seed=0,
        rec_loss=rec_loss,
        rec_negatives=8,
    )
    result = fit(data, cfg, progress=False)
    emb = result.embeddings
    scores = emb.user @ emb.item.T
    scores[data.train[0], data.train[1]] = -torch.inf
    assert torch.equal(scores.argmax(1), data.test[1])
