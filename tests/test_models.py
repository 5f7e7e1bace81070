import math

import pytest
import torch

from recsys.config import TrainConfig
from recsys.data.graph import build_graph
from recsys.data.sampling import NegativeSampler, SharedNegatives
from recsys.errors import InputError
from recsys.models.base import perturb, uniform_noise
from recsys.models.build import build_model
from recsys.models.lightgcn import LightGCN, SimGCL, XSimGCL
from recsys.models.mf import MF
from recsys.models.registry import CONTRASTIVE_FIELDS, MODELS, contrastive_models
from recsys.training.losses import bpr_loss, bsl_loss, l2_reg
from recsys.training.metanode import ContrastiveNegatives
from recsys.training.objectives import OBJECTIVES, Batch, batch_rows


def small_graph():
    train = torch.tensor([[0, 0, 1, 1, 2, 3], [0, 1, 1, 2, 3, 4]])
    return build_graph(train, 4, 5)


def test_noise_has_norm_eps_and_the_sign_of_the_embedding():
    x = torch.randn(50, 16)
    noise = uniform_noise(x, 0.2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise.norm(dim=1), torch.full((50,), 0.2))
    assert ((noise * x) >= 0).all()


def test_perturb_adds_the_same_noise_in_one_pass():
    x = torch.randn(40, 12)
    x[3] = 0.0
    expected = x + uniform_noise(x, 0.2, torch.Generator().manual_seed(5))
    torch.testing.assert_close(perturb(x, 0.2, torch.Generator().manual_seed(5)), expected)
    assert (perturb(x, 0.2)[3] == 0).all()


def test_repr_and_shapes():
    g = small_graph()
    for model in (MF(4, 5, 8), LightGCN(4, 5, 8, 2), SimGCL(4, 5, 8, 2), XSimGCL(4, 5, 8, 3, cl_layer=2)):
        views = model(g.adj, perturbed=True)
        assert views.final.user.shape == (4, 8) and views.final.item.shape == (5, 8)
    assert str(LightGCN(4, 5, 8, 2)) == "LightGCN(4, 5, embedding_dim=8, num_layers=2)"


def test_simgcl_excludes_layer_zero_and_perturbs_each_call():
    g = small_graph()
    model = SimGCL(4, 5, 8, num_layers=2, noise_eps=0.1)
    layers = model.layers(g.adj).output
    clean = model(g.adj).final
    torch.testing.assert_close(torch.cat([clean.user, clean.item]), (layers[1] + layers[2]) / 2)
    a = model(g.adj, perturbed=True, generator=torch.Generator().manual_seed(1)).final
    b = model(g.adj, perturbed=True, generator=torch.Generator().manual_seed(2)).final
    assert not torch.allclose(a.user, b.user)


def naive_info_nce(a, b, tau):
    total = 0.0
    for i in range(a.size(0)):
        za = a[i] / a[i].norm()
        logits = torch.stack([za @ (b[j] / b[j].norm()) / tau for j in range(b.size(0))])
        total = total - torch.log_softmax(logits, 0)[i]
    return total / a.size(0)


def test_xsimgcl_objective_against_a_hand_computation():
    g = small_graph()
    cfg = TrainConfig(model="xsimgcl", embedding_dim=8, num_layers=2, cl_layer=1).resolved()
    model = build_model(cfg, 4, 5)
    batch = Batch(torch.tensor([0, 1, 1]), torch.tensor([0, 2, 1]), torch.tensor([3, 4, 0]))
    losses = OBJECTIVES["xsimgcl"](model, g.adj, batch, cfg, torch.Generator().manual_seed(7))
    # Recompute with the same noise: layer l = A layer(l-1) + noise_l. The last layer (and its noise) is
    # only computed for the nodes the loss reads: users 0, 1 and items 0-4 (nodes 4-8).
    gen = torch.Generator().manual_seed(7)
    rows = torch.tensor([0, 1, 4, 5, 6, 7, 8])
    x0 = model.ego()
    x1 = g.adj @ x0
    x1 = x1 + uniform_noise(x1, 0.2, gen)
    x2 = (g.adj @ x1).clone()
    x2[rows] = x2[rows] + uniform_noise(x2[rows], 0.2, gen)
    final = (x1 + x2) / 2
    fu, fi, cu, ci = final[:4], final[4:], x1[:4], x1[4:]
    u, p, n = fu[batch.users], fi[batch.pos], fi[batch.neg]
    bpr = bpr_loss((u * p).sum(1), (u * n).sum(1))
    cl = 0.2 * (
        naive_info_nce(fu[[0, 1]], cu[[0, 1]], 0.15) + naive_info_nce(fi[[0, 1, 2]], ci[[0, 1, 2]], 0.15)
    )
    reg = 1e-4 * l2_reg(u, p)
    torch.testing.assert_close(losses.bpr, bpr)
    torch.testing.assert_close(losses.cl, cl)
    torch.testing.assert_close(losses.total, bpr + cl + reg)


def test_simgcl_objective_against_a_hand_computation():
    g = small_graph()
    cfg = TrainConfig(model="simgcl", embedding_dim=8, num_layers=2).resolved()
    model = build_model(cfg, 4, 5)
    batch = Batch(torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([4, 0]))
    losses = OBJECTIVES["simgcl"](model, g.adj, batch, cfg, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)

    rows = torch.tensor([0, 2, 4, 5, 7, 8])  # users 0, 2 and items 0, 1, 3, 4: the last layer's rows

    def perturbed():
        x1 = g.adj @ model.ego()
        x1 = x1 + uniform_noise(x1, 0.1, gen)
        x2 = (g.adj @ x1).clone()
        x2[rows] = x2[rows] + uniform_noise(x2[rows], 0.1, gen)
        return (x1 + x2) / 2

    clean = (g.adj @ model.ego() + g.adj @ (g.adj @ model.ego())) / 2
    a, b = perturbed(), perturbed()
    u, p, n = clean[batch.users], clean[4 + batch.pos], clean[4 + batch.neg]
    bpr = bpr_loss((u * p).sum(1), (u * n).sum(1))
    cl = 0.5 * (naive_info_nce(a[[0, 2]], b[[0, 2]], 0.2) + naive_info_nce(a[[5, 7]], b[[5, 7]], 0.2))
    torch.testing.assert_close(losses.bpr, bpr)
    torch.testing.assert_close(losses.cl, cl)
    # The shared propagation must also give the gradients of three separate passes.
    reg = 1e-4 * l2_reg(u, p)
    (shared,) = torch.autograd.grad(losses.total, model.embedding)
    (separate,) = torch.autograd.grad(bpr + cl + reg, model.embedding)
    torch.testing.assert_close(shared, separate)


def test_negative_sampler_never_returns_a_positive():
    # User 0 has 9 of 10 items: the one valid negative is item 9.
    train = torch.tensor([[0] * 9 + [1, 1], list(range(9)) + [3, 4]])
    sampler = NegativeSampler(train, num_items=10)
    users = torch.tensor([0] * 500 + [1] * 500)
    neg = sampler.sample(users, torch.Generator().manual_seed(0))
    assert (neg[:500] == 9).all()
    assert not sampler.is_positive(users, neg).any()
    assert set(neg[500:].tolist()) == set(range(10)) - {3, 4}


def test_row_restricted_forward_equals_the_full_one_at_those_rows():
    g = small_graph()
    batch = Batch(torch.tensor([2, 0, 2]), torch.tensor([3, 1, 3]), torch.tensor([0, 4, 2]))
    rows, local = batch_rows(batch, 4)
    assert rows.nodes.tolist() == [0, 2, 4, 5, 6, 7, 8] and rows.num_users == 2
    for model in (MF(4, 5, 8), LightGCN(4, 5, 8, 2), SimGCL(4, 5, 8, 3), XSimGCL(4, 5, 8, 3, cl_layer=2)):
        full, part = model(g.adj), model(g.adj, rows=rows)
        for view_full, view_part in zip(full, part, strict=True):
            if view_full is None:
                assert view_part is None
                continue
            # The renumbered batch reads the restricted output as the original batch reads the full one.
            torch.testing.assert_close(view_part.user[local.users], view_full.user[batch.users])
            torch.testing.assert_close(view_part.item[local.pos], view_full.item[batch.pos])
            torch.testing.assert_close(view_part.item[local.neg], view_full.item[batch.neg])

        # Gradients through the restricted pass equal those through the full pass.
        def loss(views, b):
            return (views.final.user[b.users] * views.final.item[b.pos]).sum() - views.final.item[b.neg].sum()

        (g_full,) = torch.autograd.grad(loss(full, batch), model.embedding)
        (g_part,) = torch.autograd.grad(loss(part, local), model.embedding)
        torch.testing.assert_close(g_part, g_full)
    model = SimGCL(4, 5, 8, 2)
    clean, _ = model.clean_and_perturbed(g.adj, 2, torch.Generator().manual_seed(0), rows)
    torch.testing.assert_close(clean.item[local.pos], model(g.adj).final.item[batch.pos])


def test_noise_is_zero_where_the_embedding_is_zero():
    x = torch.randn(6, 8)
    x[2] = 0.0
    x[4, 3] = -0.0
    noise = uniform_noise(x, 0.2, torch.Generator().manual_seed(0))
    assert (noise[2] == 0).all() and noise[4, 3] == 0
    assert ((noise * x) >= 0).all() and (noise[x != 0] != 0).all()


def test_every_registered_model_builds_its_class_with_its_objective():
    """The registry names classes and objectives (the config reads it without torch): each name resolves."""
    for name, spec in MODELS.items():
        cfg = TrainConfig(model=name, embedding_dim=4, num_layers=2).resolved()
        model = build_model(cfg, 3, 5)
        assert type(model).__name__ == spec.model_class and model.num_users == 3
        assert OBJECTIVES[name].__name__ == spec.objective
        # resolved: λ, ε, τ are set exactly for the contrastive models, to the registry's values
        values = {field: getattr(cfg, field) for field in CONTRASTIVE_FIELDS}
        assert values == (dict(spec.defaults) if spec.contrastive else dict.fromkeys(CONTRASTIVE_FIELDS))
    assert contrastive_models() == ("simgcl", "xsimgcl")


def naive_softmax(u, keys, positive, tau, log_q=None):
    """Mean over rows of log sum_c exp(cos(u_b, k_c)/tau - log_q_c) - cos(u_b, k_p(b))/tau, by loops."""
    u, keys, total = u.detach(), keys.detach(), 0.0
    for b in range(u.size(0)):
        cos = [float(u[b] @ k / (u[b].norm() * k.norm())) for k in keys]
        shift = [0.0] * len(cos) if log_q is None else log_q.tolist()
        total += math.log(sum(math.exp(c / tau - s) for c, s in zip(cos, shift, strict=True)))
        total -= cos[int(positive[b])] / tau
    return total / u.size(0)


def softmax_cfg(model, **kw):
    return TrainConfig(model=model, embedding_dim=8, num_layers=2, cl_layer=1, **kw).resolved()


def test_lightgcn_softmax_objective_against_a_hand_computation():
    """Sampled softmax: the batch's positives plus M = 3 shared items drawn from the generator, log-Q."""
    g = small_graph()
    cfg = softmax_cfg("lightgcn", rec_loss="softmax", rec_negatives=3, rec_temperature=0.2)
    model = build_model(cfg, 4, 5)
    train = torch.tensor([[0, 0, 1, 1, 2, 3], [0, 1, 1, 2, 3, 4]])
    negatives = ContrastiveNegatives.from_config(cfg, train, 4, 5)
    batch = Batch(torch.tensor([0, 1, 1]), torch.tensor([0, 2, 1]), torch.tensor([3, 4, 0]))
    losses = OBJECTIVES["lightgcn"](
        model, g.adj, batch, cfg, torch.Generator().manual_seed(7), negatives=negatives
    )
    pool = torch.randint(5, (3,), generator=torch.Generator().manual_seed(7))
    final = model(g.adj).final
    items = torch.cat([batch.pos, pool])
    popularity = torch.tensor([1, 2, 1, 1, 1]) / 6  # item degrees / pairs
    log_q = torch.log(3 * popularity[items] + 3 / 5)  # B p_j + M / I
    expected = naive_softmax(final.user[batch.users], final.item[items], [0, 1, 2], 0.2, log_q)
    assert abs(losses.bpr.item() - expected) < 1e-5
    reg = 1e-4 * l2_reg(model.user_emb[batch.users], model.item_emb[batch.pos])
    torch.testing.assert_close(losses.reg, reg)
    torch.testing.assert_close(losses.total, losses.bpr + reg)
    assert losses.cl.item() == 0.0
    # Without the correction, every key counts once.
    plain = softmax_cfg("lightgcn", rec_loss="softmax", rec_negatives=3, rec_temperature=0.2, rec_logq=False)
    losses = OBJECTIVES["lightgcn"](
        model, g.adj, batch, plain, torch.Generator().manual_seed(7), negatives=negatives
    )
    expected = naive_softmax(final.user[batch.users], final.item[items], [0, 1, 2], 0.2)
    assert abs(losses.bpr.item() - expected) < 1e-5


def test_xsimgcl_bsl_objective_over_every_item_against_a_hand_computation():
    """BSL with the full denominator: all rows are computed, so the noise is the full pass's."""
    g = small_graph()
    cfg = softmax_cfg(
        "xsimgcl", rec_loss="bsl", rec_denominator="full", rec_temperature=0.2, bsl_temperature=0.5
    )
    model = build_model(cfg, 4, 5)
    train = torch.tensor([[0, 0, 1, 1, 2, 3], [0, 1, 1, 2, 3, 4]])
    negatives = ContrastiveNegatives.from_config(cfg, train, 4, 5)
    batch = Batch(torch.tensor([0, 1, 1]), torch.tensor([0, 2, 1]), torch.tensor([3, 4, 0]))
    losses = OBJECTIVES["xsimgcl"](
        model, g.adj, batch, cfg, torch.Generator().manual_seed(7), negatives=negatives
    )
    views = model(g.adj, perturbed=True, generator=torch.Generator().manual_seed(7))
    fu, fi, cu, ci = views.final.user, views.final.item, views.cl.user, views.cl.item
    u, p = fu[batch.users], fi[batch.pos]
    softmax = naive_softmax(u, fi, batch.pos, 0.2)
    cos = [float(a @ b / (a.norm() * b.norm())) for a, b in zip(u.detach(), p.detach(), strict=True)]
    # User 1 has two rows (items 2 and 1): its positive side is a log-mean-exp over both at tau2 = 0.5.
    two = 0.5 / 0.2 * math.log((math.exp(cos[1] / 0.5) + math.exp(cos[2] / 0.5)) / 2)
    gap = (cos[0] / 0.2 - cos[0] / 0.2 + cos[1] / 0.2 - two + cos[2] / 0.2 - two) / 3
    assert abs(losses.bpr.item() - (softmax + gap)) < 1e-5
    cl = 0.2 * (
        naive_info_nce(fu[[0, 1]], cu[[0, 1]], 0.15) + naive_info_nce(fi[[0, 1, 2]], ci[[0, 1, 2]], 0.15)
    )
    torch.testing.assert_close(losses.cl, cl)
    torch.testing.assert_close(losses.total, losses.bpr + cl + 1e-4 * l2_reg(u, p))


@pytest.mark.parametrize("model", ["mf", "simgcl"])
def test_softmax_objective_with_restricted_rows_equals_the_full_pass(model):
    """The sampled softmax computes the last layer at the batch's and the pool's rows only; same loss."""
    g = small_graph()
    cfg = softmax_cfg(model, rec_loss="bsl", rec_negatives=4, rec_pool="popularity", cl_weight=0.0)
    net = build_model(cfg, 4, 5)
    train = torch.tensor([[0, 0, 1, 1, 2, 3], [0, 1, 1, 2, 3, 4]])
    negatives = ContrastiveNegatives.from_config(cfg, train, 4, 5)
    batch = Batch(torch.tensor([2, 0, 2]), torch.tensor([3, 1, 3]), torch.tensor([0, 4, 2]))
    restricted = OBJECTIVES[model](
        net, g.adj, batch, cfg, torch.Generator().manual_seed(1), negatives=negatives
    )
    gen = torch.Generator().manual_seed(1)
    pool = negatives.rec.shared.sample(gen)
    assert set(pool.tolist()) <= {0, 1, 2, 3, 4}
    final = net(g.adj).final if model == "mf" else net.clean_and_perturbed(g.adj, 2, gen)[0]
    keys = torch.cat([final.item[batch.pos], final.item[pool]])
    log_q = negatives.rec.shared.log_expected_count(torch.cat([batch.pos, pool]), 3)
    groups = torch.tensor([1, 0, 1])
    expected = bsl_loss(final.user[batch.users], keys, torch.arange(3), groups, 0.1, 0.1, log_q)
    torch.testing.assert_close(restricted.bpr, expected)


def test_shared_negatives_draw_and_expected_counts():
    train = torch.tensor([[0, 0, 1, 1, 2, 3, 3, 3], [0, 1, 1, 2, 1, 1, 4, 0]])
    uniform = SharedNegatives.from_pairs(train, 6, 5)
    torch.testing.assert_close(uniform.popularity, torch.tensor([2, 4, 1, 0, 1, 0]) / 8)
    draw = uniform.sample(torch.Generator().manual_seed(0))
    assert draw.shape == (5,) and torch.equal(draw, uniform.sample(torch.Generator().manual_seed(0)))
    items = torch.tensor([1, 3, 5])
    expected = torch.log(torch.tensor([7 * 4 / 8 + 5 / 6, 5 / 6, 5 / 6]))  # B p_j + M / I, B = 7
    torch.testing.assert_close(uniform.log_expected_count(items, 7), expected)
    popular = SharedNegatives.from_pairs(train, 6, 20_000, "popularity")
    counts = torch.bincount(popular.sample(torch.Generator().manual_seed(1)), minlength=6) / 20_000
    torch.testing.assert_close(counts, popular.popularity, atol=0.01, rtol=0)  # never an unseen item
    expected = torch.log(torch.tensor([(7 + 20_000) * 0.5]))  # (B + M) p_j
    torch.testing.assert_close(popular.log_expected_count(items[:1], 7), expected)
    assert SharedNegatives.from_pairs(train, 6, 0).sample().numel() == 0


def test_objective_without_negatives_state_refuses_a_softmax():
    g = small_graph()
    cfg = softmax_cfg("lightgcn", rec_loss="softmax")
    batch = Batch(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    with pytest.raises(ValueError, match="needs negatives=ContrastiveNegatives.from_config"):
        OBJECTIVES["lightgcn"](build_model(cfg, 4, 5), g.adj, batch, cfg, None)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (
            {"rec_loss": "sampled_softmax"},
            "unknown rec_loss 'sampled_softmax'; expected one of bpr, softmax, bsl",
        ),
        ({"rec_denominator": "all"}, "unknown rec_denominator 'all'"),
        ({"rec_pool": "zipf"}, "unknown rec_pool 'zipf'"),
        ({"rec_temperature": 0}, "rec_temperature must be a number > 0, got 0"),
        ({"bsl_temperature": -1.0}, "bsl_temperature must be a number > 0"),
        ({"rec_negatives": -1}, "rec_negatives must be an integer >= 0, got -1"),
        ({"rec_logq": "yes"}, "rec_logq must be true or false"),
        ({"rec_denominator": "metanode", "rec_cosine": False}, "needs rec_cosine=true"),
    ],
)
def test_config_rejects_bad_rec_options(values, match):
    with pytest.raises(InputError, match=match):
        TrainConfig(model="lightgcn", **values)


def test_cli_flags_for_the_rec_options():
    from recsys.cli import build_parser
    from recsys.commands.training import _train_values

    args = build_parser().parse_args(
        ["train", "--dataset", "d", "--out", "o", "--model", "mf", "--rec-loss", "bsl", "--rec-temperature",
         "0.07", "--rec-negatives", "0", "--rec-logq", "false", "--bsl-temperature", "0.5"]
    )  # fmt: skip
    cfg = TrainConfig(**_train_values(args))
    assert cfg.model == "mf"
    assert (cfg.rec_loss, cfg.rec_temperature, cfg.rec_negatives, cfg.rec_logq) == ("bsl", 0.07, 0, False)
    assert cfg.bsl_temperature == 0.5 and TrainConfig().rec_loss == "bpr"
