"""Linear layers over a few rows on a multi-core CPU: one slice of the weight per thread.

A decode step multiplies a handful of rows (one new token per sequence) by every weight of the
model. For such shapes the sgemm torch calls on x86 (MKL) stays on one thread: on the 2-core
development machine the 49,152 x 576 output layer took ~12.5 ms for one row with one thread and
with two, ~25 ms for 10 rows, while the machine streams memory at ~45 GB/s. Cutting the weight's
output rows into one slice per thread and multiplying the slices with one ``torch.bmm`` runs the
slices side by side (6-17 ms for the same shapes), and a whole decode step of the embedded model
took 5-42 % less time with 1-48 rows in 11 of 12 measured shapes (``benchmarks/decode_step.py --linear both``).

Each output element is still one dot product of an input row with one weight row, so the result
equals ``F.linear`` up to float summation order (MKL picks its kernel by shape): in our checks the
logits were bit-identical and greedy answers the same. The threaded path is taken only where it is
measured to pay and cannot change training: CPU tensors, at least two torch threads, at most
:data:`MAX_ROWS` input rows, and no autograd (``torch.no_grad``/``inference_mode``, or no input
that requires grad). Everything else is ``F.linear`` as before.

:func:`thread_small_linears` switches a loaded CPU model's ``nn.Linear`` modules to
:class:`ThreadedLinear` (same parameters, same state dict; ``isinstance(m, nn.Linear)`` holds);
:func:`safeedit.lm.loading.load_model` does it for every model it places on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: input rows (tokens x sequences) up to which the threaded path is used; measured on 2 cores:
#: faster than ``F.linear`` from 1 to ~32 rows, about even at 32-64, mixed to slower for the
#: hundreds of a prefill chunk or an edit's scored positions (10-20 % either way on the output layer)
MAX_ROWS = 64


def threaded_parts(x: torch.Tensor, weight: torch.Tensor) -> int:
    """Slices :func:`small_batch_linear` cuts ``weight`` into for input ``x``; below 2 it calls
    ``F.linear`` unchanged."""
    if x.device.type != "cpu" or weight.dim() != 2 or not weight.is_contiguous() or not x.is_floating_point():
        return 1
    if x.numel() == 0 or x.numel() // x.shape[-1] > MAX_ROWS:
        return 1
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return 1
    out_features = weight.shape[0]
    threads = torch.get_num_threads()
    # the most slices up to one per thread that divide the output rows evenly
    for parts in range(min(threads, out_features), 1, -1):
        if out_features % parts == 0:
            return parts
    return 1


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, with the weight's output rows split over the CPU threads
    when :func:`threaded_parts` says it pays."""
    parts = threaded_parts(x, weight)
    if parts < 2:
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    rows = math.prod(x.shape[:-1])
    flat = x.reshape(1, rows, in_features).expand(parts, rows, in_features)
    slices = weight.view(parts, out_features // parts, in_features).transpose(1, 2)
    # [parts, rows, out/parts] -> [rows, parts, out/parts] -> [rows, out]: slice p holds features
    # p*out/parts .. (p+1)*out/parts - 1, so this order is F.linear's
    out = torch.bmm(flat, slices).transpose(0, 1).reshape(*x.shape[:-1], out_features)
    return out if bias is None else out + bias


class ThreadedLinear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`small_batch_linear`; made by :func:`thread_small_linears`
    from an existing module (same parameters), never constructed directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return small_batch_linear(x, self.weight, self.bias)


def thread_small_linears(model: nn.Module) -> int:
    """Switch ``model``'s plain ``nn.Linear`` modules (exactly that class, not subclasses or
    wrappers) to :class:`ThreadedLinear` in place; returns how many. Parameters, buffers, hooks
    and the state dict are untouched; calling it twice changes nothing more."""
    switched = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = ThreadedLinear
            switched += 1
    return switched


__all__ = ["MAX_ROWS", "ThreadedLinear", "small_batch_linear", "thread_small_linears", "threaded_parts"]
