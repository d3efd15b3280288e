"""A KV cache that writes new keys/values into room reserved up front instead of re-concatenating.

transformers' ``DynamicCache`` grows each layer with ``torch.cat`` at every decode step, which copies
the layer's whole cache: per step that is batch x prompt length x layers of memory traffic, plus a
fresh allocation of the same size. On a CPU with SafeEdit's ~1,000-token prompts that copy costs
more than the attention itself (20 rows x 1,000 tokens: ~5-15 ms per layer per step on the 2-core
machine, against ~4 ms for the attention). :class:`ReservedLayer` allocates ``capacity`` positions
once and hands out views of the filled part, so a decode step writes only its new column. The keys
and values are the same numbers as ``DynamicCache``'s; only where they live differs.

:func:`reserved_cache` builds a ``DynamicCache`` whose full-attention layers are reserved layers
with their buffers in one block (:class:`BufferPool`); sliding-window layers (which keep only a
window) are left as transformers makes them.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class BufferPool:
    """One allocation for the key and value buffers of all of a cache's reserved layers.

    Allocated separately, a batch's 2 x layers buffers (a few MiB each) come from the C heap between
    the activations of the prefill, and the holes those activations leave when freed stay in the
    process's resident memory (on the 2-core machine the bench's peak RSS was ~170 MiB higher).
    One block of all of them is big enough for the allocator to map it on its own and return it
    whole when the cache is dropped. A request of another shape, or beyond the block, gets its own
    allocation.
    """

    def __init__(self, buffers: int):
        self.buffers = buffers
        self._block: torch.Tensor | None = None
        self._used = 0

    def take(self, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if self._block is None:
            self._block = like.new_empty((self.buffers, *shape))
        block = self._block
        if self._used >= self.buffers or tuple(block.shape[1:]) != tuple(shape) or block.dtype != like.dtype \
                or block.device != like.device:
            return like.new_empty(shape)
        self._used += 1
        return block[self._used - 1]


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values are views into a buffer of ``capacity`` positions.

    Going past ``capacity`` still works (the buffer is reallocated at the needed size, as a
    ``DynamicLayer`` would), so the capacity is a hint, never a limit. ``pool``: where the first
    buffers come from (:class:`BufferPool`, shared by a cache's layers); None allocates its own.
    """

    def __init__(self, capacity: int, pool: BufferPool | None = None):
        super().__init__()
        self.capacity = int(capacity)
        self.pool = pool
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def _filled(self) -> int:
        return 0 if self.keys is None or self.keys.numel() == 0 else self.keys.shape[-2]

    def _owns_views(self) -> bool:
        # crop / batch_select_indices / reorder_cache may have replaced self.keys by another tensor
        return (self._key_buffer is not None and self.keys is not None and self.keys.numel() > 0
                and self.keys.data_ptr() == self._key_buffer.data_ptr()
                and self.values.data_ptr() == self._value_buffer.data_ptr())

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self._filled()
        end = start + key_states.shape[-2]
        stale = start > 0 and not self._owns_views()
        if (stale or self._key_buffer is None or end > self._key_buffer.shape[-2]
                or self._key_buffer.shape[0] != key_states.shape[0]):
            self._reserve(key_states, value_states, start, max(end, self.capacity))
        self._key_buffer[:, :, start:end].copy_(key_states)
        self._value_buffer[:, :, start:end].copy_(value_states)
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values

    def _reserve(self, key_states, value_states, filled: int, size: int) -> None:
        """A fresh buffer of ``size`` positions holding the ``filled`` positions kept so far."""
        batch = key_states.shape[0]
        key_shape = (batch, key_states.shape[1], size, key_states.shape[-1])
        value_shape = (batch, value_states.shape[1], size, value_states.shape[-1])
        if self.pool is not None and self._key_buffer is None:  # a first reservation: from the pool
            keys, values = self.pool.take(key_states, key_shape), self.pool.take(value_states, value_shape)
        else:
            keys, values = key_states.new_empty(key_shape), value_states.new_empty(value_shape)
        if filled:
            keys[:, :, :filled].copy_(self.keys)
            values[:, :, :filled].copy_(self.values)
        self._key_buffer, self._value_buffer = keys, values

    def keep(self, positions: int) -> None:
        """Keep the first ``positions`` positions; later updates write after them, in the same buffer."""
        if positions > self._filled():
            raise ValueError(f"cannot keep {positions} positions of a layer holding {self._filled()}")
        if not self.is_initialized or self._filled() == 0:
            return
        self.keys = self.keys[:, :, :positions]
        self.values = self.values[:, :, :positions]

    def keep_rows(self, order: list[int]) -> None:
        """Keep batch rows ``order`` (old row indices, in their new order) and drop the rest.

        Where every moved row comes from beyond the kept rows (the order
        :func:`safeedit.lm.greedy.drop_order` makes), the moved rows are copied into place inside
        the buffer and the buffer is narrowed: no new allocation, and only those rows are copied.
        Any other order is gathered into new tensors."""
        if not self.is_initialized or self._filled() == 0:
            return
        end = self._filled()
        moves = [(dst, src) for dst, src in enumerate(order) if dst != src]
        if self._owns_views() and all(src >= len(order) for _, src in moves):
            for dst, src in moves:
                self._key_buffer[dst, :, :end].copy_(self._key_buffer[src, :, :end])
                self._value_buffer[dst, :, :end].copy_(self._value_buffer[src, :, :end])
            self._key_buffer, self._value_buffer = self._key_buffer[:len(order)], self._value_buffer[:len(order)]
            self.keys, self.values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
            return
        index = torch.tensor(order, device=self.keys.device)
        self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)
        self._key_buffer = self._value_buffer = None  # the next update reserves room for these rows

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


def reserved_cache(model, capacity: int) -> DynamicCache | None:
    """A ``DynamicCache`` for ``model`` whose full-attention layers reserve ``capacity`` positions, or
    None when transformers cannot build a cache from the model's config (callers then let
    ``generate`` make its own)."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - a config the cache cannot read: generate's own cache
        return None
    if not cache.layers:
        return None
    pool = BufferPool(2 * sum(type(layer) is DynamicLayer for layer in cache.layers))
    cache.layers = [ReservedLayer(capacity, pool) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


__all__ = ["BufferPool", "ReservedLayer", "reserved_cache"]
