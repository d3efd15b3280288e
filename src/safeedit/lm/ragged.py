"""Prefill that skips padding: a chunk of columns runs only the rows with a real token in it.

A batch of prompts of different lengths is padded to its longest; a plain prefill runs every row
over every column, padding included, and on a CPU the prefill's matrix products are the cost. The
five inputs of one SafeEdit instance range from ~40 to ~1,000 tokens, so half of a one-at-a-time
post-edit prefill was padding (36,470 padded positions for 18,170 real ones over the sample's first
8 instances), and the short-row batch of a grouped prefix-reuse pass was 60 % padding.

With left padding (or the split layout of :mod:`safeedit.lm.prefix`, whose rows end at shared
columns) a row has no real token before its first real column. Rows ordered by that column (longest
first or last, see :func:`prefill_spans`), the rows with a real token in columns ``[lo, hi)`` are a
contiguous range ``[k, rows)``; the chunk runs those rows only, through :func:`row_window`, a view
of the cache whose writes land in the batch's own cache rows and whose skipped rows get zeros
(never attended: their mask is 0 there; zeros rather than whatever the buffer held, which could be
NaN and poison a masked sum). Every row still sees the same tokens, positions and mask over its own
real columns, so the keys, values and answers equal a full prefill up to float summation order
(tests check the cache and greedy answers).

Chunks hold at most ``tokens`` row positions where they can, as :data:`safeedit.lm.generation.PREFILL_TOKENS`
bounds a full prefill's activations: fewer rows in a chunk make it longer.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Callable, ContextManager

import torch
from transformers.cache_utils import DynamicLayer

from safeedit.lm.forward_args import cache_arg, keep_last_logits
from safeedit.lm.kv_cache import ReservedLayer


def positions(attention: torch.Tensor) -> torch.Tensor:
    """Position ids as transformers' generate derives them: a token counts only real tokens before it."""
    return (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)


def first_real_columns(attention: torch.Tensor) -> list[int]:
    """Per row, the first column whose mask is 1 (the width for a row with none)."""
    mask = attention.bool()
    first = mask.int().argmax(dim=-1)
    first[~mask.any(dim=-1)] = mask.shape[-1]
    return [int(x) for x in first]


def _first_running_row(first: list[int], hi: int) -> int:
    """Rows ``[k, rows)`` with ``k`` the first row holding a real token before column ``hi``; the last
    row at least, so every chunk writes the cache and its length stays the column count."""
    return next((r for r, f in enumerate(first) if f < hi), len(first) - 1)


def prefill_spans(first: list[int], stop: int, tokens: int, start: int = 0) -> list[tuple[int, int, int]]:
    """Chunks ``(lo, hi, k)`` covering columns ``[start, stop)``: rows ``k..`` run over ``[lo, hi)``.

    ``first``: each row's first real column. Rows before ``k`` have no real token before ``hi``, so
    skipping them changes nothing; rows from ``k`` on run even where they are padding, so ordering
    rows by ``first`` descending (shortest prompt first, as length-sorted left-padded batches are)
    skips the most. A chunk is the longest run of columns whose running rows x columns fit ``tokens``
    (at least one column). The last row runs every chunk (padding where it has no token yet), so
    the cache grows by every column."""
    spans, lo, rows = [], start, len(first)
    while lo < stop:
        best, low, high = lo + 1, lo + 1, stop  # binary search: (rows - k(hi)) * (hi - lo) grows with hi
        while low <= high:
            mid = (low + high) // 2
            if (rows - _first_running_row(first, mid)) * (mid - lo) <= tokens:
                best, low = mid, mid + 1
            else:
                high = mid - 1
        spans.append((lo, best, _first_running_row(first, best)))
        lo = best
    return spans


class _RowWindowLayer(DynamicLayer):
    """Rows ``k..`` of a reserved cache layer: updates write there, the rows before get zeros."""

    def __init__(self, parent: ReservedLayer, k: int, rows: int):
        super().__init__()
        self.parent, self.k, self.rows = parent, k, rows
        self._show()

    def _show(self) -> None:
        if self.parent.is_initialized and self.parent.keys is not None and self.parent.keys.numel():
            self.is_initialized = True
            self.device = self.parent.device
            self.keys, self.values = self.parent.keys[self.k:], self.parent.values[self.k:]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.k:
            full_k = key_states.new_zeros((self.rows, *key_states.shape[1:]))
            full_v = value_states.new_zeros((self.rows, *value_states.shape[1:]))
            full_k[self.k:], full_v[self.k:] = key_states, value_states
            key_states, value_states = full_k, full_v
        self.parent.update(key_states, value_states, *args, **kwargs)
        self._show()
        return self.keys, self.values


def supports_row_windows(cache) -> bool:
    """Whether every layer of ``cache`` is a :class:`~safeedit.lm.kv_cache.ReservedLayer` (full attention)."""
    return cache is not None and bool(cache.layers) and all(isinstance(layer, ReservedLayer) for layer in cache.layers)


def row_window(cache, k: int, rows: int):
    """A view of ``cache`` (all reserved layers) for batch rows ``k..rows-1``; ``cache`` itself for k=0.

    A layer object listed several times (the bypass view of :mod:`safeedit.lm.prefix`) gets one window."""
    if k == 0:
        return cache
    windows: dict[int, _RowWindowLayer] = {}
    view = copy.copy(cache)
    view.layers = [windows.setdefault(id(layer), _RowWindowLayer(layer, k, rows)) for layer in cache.layers]
    return view


def ragged_prefill(model, input_ids: torch.Tensor, attention: torch.Tensor, cache, *, stop: int, tokens: int,
                   rows_context: Callable[[list[int]], ContextManager] | None = None,
                   before_chunk: Callable[[int, int, int], ContextManager] | None = None) -> None:
    """Fill ``cache`` (reserved layers only, :func:`supports_row_windows`) over columns ``[0, stop)``
    of ``input_ids`` (no logits), skipping rows without a real token in a chunk (:func:`prefill_spans`).

    ``rows_context(rows)``: entered around each chunk with the batch rows it runs (a per-row edit);
    ``before_chunk(lo, hi, k)``: a context manager entered around each chunk's forward (hooks that
    read or feed its hidden states)."""
    if not supports_row_windows(cache):
        raise ValueError("ragged_prefill needs a cache of reserved full-attention layers (safeedit.lm.kv_cache)")
    rows = input_ids.shape[0]
    position_ids = positions(attention)
    for lo, hi, k in prefill_spans(first_real_columns(attention[:, :stop]), stop, tokens):
        view = row_window(cache, k, rows)
        with (rows_context(list(range(k, rows))) if rows_context else nullcontext()), \
                (before_chunk(lo, hi, k) if before_chunk else nullcontext()):
            model(input_ids=input_ids[k:, lo:hi], attention_mask=attention[k:, :hi], position_ids=position_ids[k:, lo:hi],
                  use_cache=True, **keep_last_logits(model), **{cache_arg(model): view})


__all__ = ["first_real_columns", "positions", "prefill_spans", "ragged_prefill", "row_window", "supports_row_windows"]
