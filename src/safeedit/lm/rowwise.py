"""One linear layer, a different weight per batch row: K edited copies of W_V served side by side.

Per-instance edits that change the same matrix (DINM's W_V of one layer) are independent, so K of
them can share a batch: the K edited copies are stacked into one ``[K, *weight.shape]`` tensor and
:class:`RowWiseLinear` stands in for the original module, multiplying batch row ``b`` by copy
``owners[b]``. The original module and its weight are never written; :func:`swap_module` puts the
original module object back when the block ends.

Two ways to multiply, the same result up to float summation order:

* one row per copy, in order (``owners == 0..K-1``, the grouped edit's training batch): one
  batched matmul ``torch.bmm`` over the K copies;
* any other mapping (generation: five prompts per instance, rows sorted by length): one matmul per
  copy over the rows it owns (``index_select`` / ``index_copy``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from safeedit.lm.threaded_linear import small_batch_linear


class RowWiseLinear(nn.Module):
    """Replaces an ``nn.Linear`` (or GPT-2's transposed ``Conv1D``) whose weight differs per row.

    ``weights``: ``[K, *base.weight.shape]``; may require grad (the grouped edit trains it).
    ``transposed``: the base stores ``[in, out]`` (GPT-2 Conv1D) instead of ``[out, in]``.
    The base module's bias (if any) is shared by every row, as the edit never changes it.
    """

    def __init__(self, base: nn.Module, weights: torch.Tensor, owners: Sequence[int], transposed: bool = False):
        super().__init__()
        if weights.shape[1:] != base.weight.shape:
            raise ValueError(f"stacked weights {tuple(weights.shape)} do not match {tuple(base.weight.shape)}")
        object.__setattr__(self, "base", base)  # not a submodule: its parameters keep their names
        object.__setattr__(self, "weights", weights)  # not registered either: the model's parameters stay as they were
        self.transposed = transposed
        self.set_owners(owners)

    def set_owners(self, owners: Sequence[int]) -> None:
        owners = [int(o) for o in owners]
        if any(not 0 <= o < self.weights.shape[0] for o in owners):
            raise ValueError(f"row owners {owners} out of range 0..{self.weights.shape[0] - 1}")
        self.owners = owners
        self._identity = owners == list(range(self.weights.shape[0]))
        device = self.weights.device
        self._rows = {k: torch.tensor([b for b, o in enumerate(owners) if o == k], device=device)
                      for k in sorted(set(owners))}

    def _one(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x @ w if self.transposed else small_batch_linear(x, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.owners):
            raise RuntimeError(f"batch of {x.shape[0]} rows but {len(self.owners)} row owners were set")
        w = self.weights.to(x.dtype)
        if self._identity:
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
            out = torch.bmm(flat, w if self.transposed else w.transpose(1, 2))
            out = out.reshape(*x.shape[:-1], out.shape[-1])
        else:
            out_features = w.shape[2] if self.transposed else w.shape[1]
            out = x.new_empty(*x.shape[:-1], out_features)
            for k, rows in self._rows.items():
                out.index_copy_(0, rows, self._one(x.index_select(0, rows), w[k]))
        bias = getattr(self.base, "bias", None)
        return out if bias is None else out + bias


def _parent_and_name(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent_path, _, name = dotted.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), name


@contextmanager
def swap_module(root: nn.Module, dotted: str, replacement: nn.Module) -> Iterator[nn.Module]:
    """``root.<dotted>`` is ``replacement`` inside the block; the very same original object after."""
    parent, name = _parent_and_name(root, dotted)
    original = getattr(parent, name)
    setattr(parent, name, replacement)
    try:
        yield replacement
    finally:
        setattr(parent, name, original)


__all__ = ["RowWiseLinear", "swap_module"]
