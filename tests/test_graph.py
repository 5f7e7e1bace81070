import torch
from torch_geometric.nn import LightGCN as PygLightGCN

from recsys.data.graph import NodeOrder, build_graph, gather_and_propagate_rows, propagate, propagate_rows
from recsys.models.lightgcn import LightGCN


def toy():
    # 3 users x 4 items; item 3 is isolated (no training edge).
    train = torch.tensor([[0, 0, 1, 2, 2], [0, 1, 1, 0, 2]])
    return train, 3, 4


def dense_normalised(train, num_users, num_items):
    n = num_users + num_items
    a = torch.zeros(n, n, dtype=torch.float64)
    a[train[0], train[1] + num_users] = 1
    a[train[1] + num_users, train[0]] = 1
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return inv[:, None] * a * inv[None, :]


def test_normalisation_matches_dense_and_is_symmetric():
    train, nu, ni = toy()
    g = build_graph(train, nu, ni)
    dense = g.adj.to_dense().double()
    expected = dense_normalised(train, nu, ni)
    torch.testing.assert_close(dense, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(dense, dense.T)
    assert g.edge_index.shape == (2, 2 * train.size(1))
    assert dense[nu + 3].abs().sum() == 0  # isolated item: all-zero row, not inf/nan
    # user 0 (deg 2) - item 0 (deg 2): 1 / sqrt(2 * 2)
    assert abs(dense[0, nu + 0].item() - 0.5) < 1e-7


def test_propagation_backward_equals_dense_autograd():
    train, nu, ni = toy()
    g = build_graph(train, nu, ni)
    x = torch.randn(nu + ni, 5, dtype=torch.float64, requires_grad=True)
    adj64 = g.adj.to(torch.float64)
    y = propagate(adj64, propagate(adj64, x))
    w = torch.randn_like(y)
    (y * w).sum().backward()
    grad_fast = x.grad.clone()
    x.grad = None
    dense = adj64.to_dense()
    ((dense @ (dense @ x)) * w).sum().backward()
    torch.testing.assert_close(grad_fast, x.grad)
    assert torch.autograd.gradcheck(lambda t: propagate(adj64, t), (x.detach().requires_grad_(),))


def test_lightgcn_equals_pyg_reference():
    torch.manual_seed(0)
    num_users, num_items = 20, 30
    train = torch.stack([torch.randint(num_users, (80,)), torch.randint(num_items, (80,))])
    train = torch.unique(train, dim=1)
    g = build_graph(train, num_users, num_items)
    ours = LightGCN(num_users, num_items, embedding_dim=8, num_layers=3)
    ref = PygLightGCN(num_users + num_items, embedding_dim=8, num_layers=3)
    with torch.no_grad():
        ref.embedding.weight.copy_(ours.ego())
    expected = ref.get_embedding(g.edge_index)
    emb = ours.get_embedding(g.adj)
    torch.testing.assert_close(torch.cat([emb.user, emb.item]), expected, rtol=1e-5, atol=1e-6)


def test_node_order_relabels_within_sides_and_restores():
    torch.manual_seed(1)
    num_users, num_items = 12, 9
    train = torch.unique(
        torch.stack([torch.randint(num_users, (40,)), torch.randint(num_items, (40,))]), dim=1
    )
    order = NodeOrder.locality(train, num_users, num_items)
    assert sorted(order.user_rank.tolist()) == list(range(num_users))
    assert sorted(order.item_rank.tolist()) == list(range(num_items))
    relabelled = order.pairs(train)
    # Propagating in the new labels and mapping back equals propagating in the original labels.
    model = LightGCN(num_users, num_items, embedding_dim=4, num_layers=2)
    original = model.get_embedding(build_graph(train, num_users, num_items).adj)
    with torch.no_grad():
        user_new = torch.empty_like(model.user_emb)
        item_new = torch.empty_like(model.item_emb)
        user_new[order.user_rank] = model.user_emb
        item_new[order.item_rank] = model.item_emb
        model.embedding.copy_(torch.cat([user_new, item_new]))
    moved = model.get_embedding(build_graph(relabelled, num_users, num_items).adj)
    user, item = order.restore(moved.user, moved.item)
    torch.testing.assert_close(user, original.user)
    torch.testing.assert_close(item, original.item)


def test_propagation_of_some_rows_equals_the_dense_product_forward_and_backward():
    train, nu, ni = toy()
    adj64 = build_graph(train, nu, ni).adj.to(torch.float64)
    dense = adj64.to_dense()
    x = torch.randn(nu + ni, 5, dtype=torch.float64, requires_grad=True)
    for rows in (torch.tensor([0, 2, 4]), torch.tensor([6]), torch.arange(nu + ni)):  # 6: isolated item
        y = propagate_rows(adj64, rows, x)
        w = torch.randn_like(y)
        (grad,) = torch.autograd.grad((y * w).sum(), x)
        (expected_grad,) = torch.autograd.grad(((dense @ x)[rows] * w).sum(), x)
        torch.testing.assert_close(y, (dense @ x)[rows])
        torch.testing.assert_close(grad, expected_grad)


def test_gathered_and_propagated_rows_equal_the_dense_computation_forward_and_backward():
    # Both outputs read, one, or the other: the backward builds A[:, rows] from A's arrays and adds the
    # gather's gradient into the same table.
    torch.manual_seed(0)
    num_users, num_items = 200, 300
    train = torch.unique(
        torch.stack([torch.randint(num_users, (3000,)), torch.randint(num_items, (3000,))]), dim=1
    )
    adj64 = build_graph(train, num_users, num_items).adj.to(torch.float64)
    dense = adj64.to_dense()
    x = torch.randn(num_users + num_items, 4, dtype=torch.float64, requires_grad=True)
    for rows in (torch.tensor([3, 17, 250, 401]), torch.arange(0, 500, 2), torch.arange(500)):
        below, last = gather_and_propagate_rows(adj64, rows, x)
        torch.testing.assert_close(below, x[rows])
        torch.testing.assert_close(last, (dense @ x)[rows])
        w_below, w_last = torch.randn_like(below), torch.randn_like(last)
        for read in ((0, 1), (0,), (1,)):  # a term not read gets no gradient at all (None)
            outputs = gather_and_propagate_rows(adj64, rows, x)
            expected_outputs = (x[rows], (dense @ x)[rows])
            weights = (w_below, w_last)
            (grad,) = torch.autograd.grad(sum((outputs[i] * weights[i]).sum() for i in read), x)
            (expected,) = torch.autograd.grad(sum((expected_outputs[i] * weights[i]).sum() for i in read), x)
            torch.testing.assert_close(grad, expected)
