"""The hand-written KL and its gradient equal autograd's on the textbook formulation."""

import pytest
import torch
import torch.nn.functional as F

from safeedit.methods.losses import kl_to_reference


def textbook(logits, reference):
    logp = F.log_softmax(logits, dim=-1)
    return (logp.exp() * (logp - reference)).sum(-1)


@pytest.mark.parametrize("shape", [(1, 7), (5, 300), (3, 2, 50)])
def test_kl_to_reference_matches_autograd(shape):
    torch.manual_seed(0)
    z0 = torch.randn(*shape, dtype=torch.float64) * 3
    reference = F.log_softmax(torch.randn(*shape, dtype=torch.float64), dim=-1)
    weights = torch.rand(shape[:-1], dtype=torch.float64)  # a non-uniform upstream gradient
    grads = []
    for fn in (textbook, kl_to_reference):
        z = z0.clone().requires_grad_(True)
        kl = fn(z, reference)
        (kl * weights).sum().backward()
        grads.append((kl.detach(), z.grad))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-10, atol=1e-12)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-9, atol=1e-12)
    assert (grads[1][0] > 0).all()  # different distributions: a positive divergence


def test_kl_to_reference_is_zero_at_the_reference_and_checks_shapes():
    z = torch.randn(4, 20)
    assert torch.allclose(kl_to_reference(z, F.log_softmax(z, dim=-1)), torch.zeros(4), atol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        kl_to_reference(z, torch.zeros(4, 21))


def test_kl_to_reference_without_grad_needs_no_graph():
    with torch.no_grad():
        kl = kl_to_reference(torch.randn(2, 9), F.log_softmax(torch.randn(2, 9), dim=-1))
    assert kl.shape == (2,) and not kl.requires_grad
