import math

import torch
import torch.nn.functional as F

from recsys.training.losses import (
    bilateral_positive,
    bpr_loss,
    bsl_loss,
    info_nce,
    l2_reg,
    softmax_loss,
)


def test_bpr_loss_against_a_loop():
    pos, neg = torch.tensor([2.0, -1.0, 0.5, 30.0]), torch.tensor([1.0, 0.0, 0.5, -30.0])
    expected = (
        sum(-math.log(1 / (1 + math.exp(-(p - n)))) for p, n in zip(pos.tolist(), neg.tolist(), strict=True))
        / 4
    )
    assert abs(bpr_loss(pos, neg).item() - expected) < 1e-6
    # Stable far in the tails, where log(sigmoid(x) + eps) would saturate.
    big = bpr_loss(torch.tensor([-100.0]), torch.tensor([0.0]))
    assert abs(big.item() - 100.0) < 1e-4


def test_info_nce_against_a_loop():
    torch.manual_seed(0)
    a, b, tau = torch.randn(4, 3), torch.randn(4, 3), 0.2
    na = [x / x.norm() for x in a]
    nb = [x / x.norm() for x in b]
    total = 0.0
    for i in range(4):
        logits = [float(na[i] @ nb[j]) / tau for j in range(4)]
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    assert abs(info_nce(a, b, tau).item() - total / 4) < 1e-5


def test_info_nce_gradient_is_finite_and_identical_views_score_low():
    a = torch.randn(4, 3, requires_grad=True)
    loss = info_nce(a, a, 0.1)
    loss.backward()
    assert torch.isfinite(a.grad).all()
    assert loss.item() < info_nce(a, torch.randn(4, 3), 0.1).item()


def test_l2_reg_against_a_loop():
    x, y = torch.randn(4, 3), torch.randn(2, 3)
    expected = (
        math.sqrt(sum(v * v for v in x.flatten().tolist())) / 4
        + math.sqrt(sum(v * v for v in y.flatten().tolist())) / 2
    )
    assert abs(l2_reg(x, y).item() - expected) < 1e-5


def test_info_nce_gradients_equal_the_autograd_form():
    torch.manual_seed(1)
    a = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor(0.7, dtype=torch.float64)
    (weight * info_nce(a, b, 0.15)).backward()
    fused = (a.grad.clone(), b.grad.clone())
    a.grad = b.grad = None
    za, zb = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    plain = -torch.diagonal(torch.log_softmax(za @ zb.T / 0.15, dim=1)).mean()
    (weight * plain).backward()
    torch.testing.assert_close(fused, (a.grad, b.grad))
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.3), (a.detach().requires_grad_(), b))


def naive_softmax(anchors, keys, positive, tau, log_q=None, cosine=True):
    """The softmax loss row by row, with explicit sums over the keys."""
    total = 0.0
    for b in range(anchors.size(0)):
        a = anchors[b] / anchors[b].norm() if cosine else anchors[b]
        logits = []
        for c in range(keys.size(0)):
            k = keys[c] / keys[c].norm() if cosine else keys[c]
            logits.append(float(a @ k) / tau - (0.0 if log_q is None else float(log_q[c])))
        k = keys[positive[b]] / keys[positive[b]].norm() if cosine else keys[positive[b]]
        total += math.log(sum(math.exp(v) for v in logits)) - float(a @ k) / tau
    return total / anchors.size(0)


def test_softmax_loss_against_a_loop():
    torch.manual_seed(0)
    anchors, keys = torch.randn(4, 3), torch.randn(6, 3)
    keys[5] = keys[1]  # a repeated item is one more term of the denominator
    positive = torch.tensor([0, 1, 2, 5])
    log_q = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.3, -1.0])
    for q in (None, log_q):
        for cosine in (True, False):
            expected = naive_softmax(anchors, keys, positive, 0.2, q, cosine)
            got = softmax_loss(anchors, keys, positive, 0.2, q, cosine=cosine).item()
            assert abs(got - expected) < 1e-4 * max(1.0, abs(expected)), (q, cosine)


def test_softmax_loss_over_every_item_is_the_cross_entropy_of_cosine_logits():
    torch.manual_seed(1)
    users, items = torch.randn(5, 8), torch.randn(9, 8)
    pos = torch.tensor([3, 0, 8, 3, 1])
    logits = F.normalize(users, dim=1) @ F.normalize(items, dim=1).T / 0.1
    torch.testing.assert_close(softmax_loss(users, items, pos, 0.1), F.cross_entropy(logits, pos))


def test_softmax_loss_gradients_equal_the_autograd_form_and_scale_with_the_upstream_gradient():
    torch.manual_seed(2)
    a = torch.randn(33, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    positive = torch.randint(50, (33,))
    log_q = torch.randn(50, dtype=torch.float64)
    weight = torch.tensor(0.7, dtype=torch.float64)
    (weight * softmax_loss(a, k, positive, 0.15, log_q)).backward()
    fused = (a.grad.clone(), k.grad.clone())
    a.grad = k.grad = None
    za, zk = F.normalize(a, dim=1), F.normalize(k, dim=1)
    plain = (torch.logsumexp(za @ zk.T / 0.15 - log_q, 1) - (za * zk[positive]).sum(1) / 0.15).mean()
    (weight * plain).backward()
    torch.testing.assert_close(fused, (a.grad, k.grad))
    for cosine in (True, False):
        assert torch.autograd.gradcheck(
            lambda x, y, c=cosine: softmax_loss(x, y, positive, 0.3, log_q, cosine=c),
            (a.detach().requires_grad_(), k.detach().requires_grad_()),
        )


def test_bilateral_positive_against_a_loop_and_its_limits():
    scores = torch.tensor([0.9, -0.2, 0.4, 0.1, 0.7], dtype=torch.float64)
    groups = torch.tensor([0, 1, 0, 2, 0])
    tau, tau2 = 0.1, 0.3
    got = bilateral_positive(scores, groups, tau, tau2)
    for b in range(5):
        same = [float(s) for s, g in zip(scores, groups, strict=True) if g == groups[b]]
        expected = tau2 / tau * math.log(sum(math.exp(s / tau2) for s in same) / len(same))
        assert abs(got[b].item() - expected) < 1e-12
    # One row per user: the softmax's own positive term, for any tau2.
    torch.testing.assert_close(bilateral_positive(scores, torch.arange(5), tau, tau2), scores / tau)
    # tau2 -> infinity: the mean of s / tau over the user's rows.
    far = bilateral_positive(scores, groups, tau, 1e6)
    torch.testing.assert_close(far[0], scores[[0, 2, 4]].mean() / tau)
    # Large scores over a small tau2 stay finite (the group maximum is factored out).
    assert torch.isfinite(bilateral_positive(scores * 1e3, groups, tau, 0.01)).all()


def test_bsl_loss_against_a_loop_and_equals_softmax_when_every_user_is_once_in_the_batch():
    torch.manual_seed(3)
    anchors, keys = torch.randn(5, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    positive, groups = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 1, 0, 2, 0])
    log_q = torch.rand(8, dtype=torch.float64)
    tau, tau2 = 0.2, 0.5
    za, zk = F.normalize(anchors, dim=1), F.normalize(keys, dim=1)
    total = 0.0
    for b in range(5):
        denominator = math.log(sum(math.exp(float(za[b] @ zk[c]) / tau - float(log_q[c])) for c in range(8)))
        rows = [r for r in range(5) if groups[r] == groups[b]]  # the user's positives: its rows' items
        scores = [float(za[r] @ zk[positive[r]]) for r in rows]
        total += denominator - tau2 / tau * math.log(sum(math.exp(s / tau2) for s in scores) / len(rows))
    got = bsl_loss(anchors, keys, positive, groups, tau, tau2, log_q)
    assert abs(got.item() - total / 5) < 1e-10
    once = bsl_loss(anchors, keys, positive, torch.arange(5), tau, tau2, log_q)
    torch.testing.assert_close(once, softmax_loss(anchors, keys, positive, tau, log_q))
    a, k = anchors.clone().requires_grad_(), keys.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: bsl_loss(x, y, positive, groups, tau, tau2, log_q), (a, k))
