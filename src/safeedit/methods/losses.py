"""Losses over [positions x vocabulary] tensors, the biggest tensors of a CPU edit.

On the 2-core CPU the element-wise passes over these tensors, not the matrix products, are what
autograd's generic formulation wastes: :func:`kl_to_reference` computes the same KL and gradient
in about half the passes (``benchmarks/kl_speed.py`` times both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _KLToReference(torch.autograd.Function):
    """KL(softmax(z) || exp(r)) per row; d KL / d z = p * ((log p - r) - KL), p = softmax(z)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        gap = F.log_softmax(logits, dim=-1)
        probs = gap.exp()
        gap.sub_(reference)  # log p - r, in place of log p
        kl = torch.linalg.vecdot(probs, gap)
        ctx.save_for_backward(probs, gap, kl)
        return kl

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        probs, gap, kl = ctx.saved_tensors
        out = gap - kl.unsqueeze(-1)
        out.mul_(probs).mul_(grad.unsqueeze(-1))
        return out, None


def kl_to_reference(logits: torch.Tensor, reference_log_probs: torch.Tensor) -> torch.Tensor:
    """Per position, KL(p || q) summed over the vocabulary: p = softmax(``logits``) (gradients flow
    to the logits), q = exp(``reference_log_probs``) (a constant). Equals
    ``(log_softmax(logits).exp() * (log_softmax(logits) - reference_log_probs)).sum(-1)``."""
    if logits.shape != reference_log_probs.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and reference {tuple(reference_log_probs.shape)} differ")
    return _KLToReference.apply(logits, reference_log_probs.detach())


__all__ = ["kl_to_reference"]
