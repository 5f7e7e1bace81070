import math

import torch

from recsys.training.losses import bpr_loss, info_nce, l2_reg


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
