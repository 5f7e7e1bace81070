import torch

from recsys.config import TrainConfig
from recsys.data.graph import build_graph
from recsys.data.sampling import NegativeSampler
from recsys.models.base import perturb, uniform_noise
from recsys.models.build import build_model
from recsys.models.lightgcn import LightGCN, SimGCL, XSimGCL
from recsys.models.mf import MF
from recsys.models.registry import CONTRASTIVE_FIELDS, MODELS, contrastive_models
from recsys.training.losses import bpr_loss, l2_reg
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
