"""Prefix reuse: pre- and post-edit answers from one prefill, the layers below the edit run once.

An edit confined to layers >= L (DINM: W_V of the toxic layer L) leaves the hidden states entering
layer L, and the attention keys/values of layers 0..L-1, unchanged for every token. The post-edit
prompt is the pre-edit prompt plus a suffix (DINM's), so the two share a long token prefix.
:func:`generate_before_and_after` answers both prompts of each pair in one pass per batch:

1. the *unedited* model prefills the pre-edit prompts (skipping padding, :mod:`safeedit.lm.ragged`),
   keeping the hidden states entering layer L over the shared tokens, and decodes the pre-edit answers;
2. the KV cache is cut back to the shared tokens: layers < L keep them as they are, layers >= L are
   emptied and recomputed over them from the kept hidden states with the *edited* weights (in place,
   or per row under ``edited``, e.g. :meth:`safeedit.methods.base.GroupEdit.rows`);
3. the post-edit prompts' own tokens (the suffix) run through the whole model and the post-edit
   answers decode in the same cache, finished rows leaving the batch (:mod:`safeedit.lm.greedy`).

For an edit at the last layer this removes nearly all of the post-edit prefill, and a batch holds
one KV cache, not a pre-edit state beside a post-edit cache. The saving exists only when the
pre-edit answers are generated in the same pass; answers already in a generation cache have no
prefill to share, and callers take the plain path for them. Results equal plain generation up to
float rounding (same tokens, same positions, same masks; tests check the greedy answers of both
sides against :func:`safeedit.lm.generate`).

Only models whose KV cache is one plain full-attention layer per decoder layer are supported
(Llama, Mistral without a sliding window in use, Qwen2, SmolLM2, ...); :func:`supports_prefix_reuse` says
so, and callers fall back to plain generation otherwise.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from typing import Callable, ContextManager

import torch

from safeedit.errors import ConfigError
from safeedit.lm.arch import resolve_architecture
from safeedit.lm.chat import use_chat_template
from safeedit.lm import generation as _generation  # PREFILL_TOKENS read at call time (tests patch it)
from safeedit.lm.generation import (
    GenerationStats,
    decode_answers,
    decode_new_tokens,
    encode_for_generation,
    generate,
    generation_config,
    token_budget_batches,
)
from safeedit.lm.greedy import decodes_like_argmax
from safeedit.lm.heap import release_free_memory
from safeedit.lm.kv_cache import reserved_cache
from safeedit.lm.layer_bypass import layer_returns_tuple, run_from_layer
from safeedit.lm.ragged import ragged_prefill


def supports_prefix_reuse(model) -> bool:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - a config the cache cannot read: no reuse, plain path
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _encode(model, tokenizer, prompts, chat, max_new_tokens, stats):
    # two tokens at least: the prefill keeps all but the last, which generate feeds
    return encode_for_generation(model, tokenizer, prompts, chat, max_new_tokens, stats=stats, min_prompt=2)


def shared_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` have in common."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def generate_before_and_after(model, tokenizer, pre_prompts: list[str], post_prompts: list[str], *, layer: int,
                              edited: Callable[[list[int]], ContextManager], max_new_tokens: int = 128,
                              chat: bool | None = None, batch_tokens: int = 11264,
                              stats: GenerationStats | None = None,
                              min_shared: float = 0.5) -> tuple[list[str], list[str]]:
    """Greedy answers to ``pre_prompts[i]`` by the unedited model and to ``post_prompts[i]`` under
    ``edited([i, ...])`` (an edit that changes nothing below ``layer``), sharing one prefill and one
    KV cache per batch.

    A batch (rows sorted by length, at most ``batch_tokens`` padded tokens, see
    :func:`safeedit.lm.generation.token_budget_batches`) is prefilled once by the unedited model,
    keeping the hidden states entering ``layer`` for the tokens each pair shares; the pre-edit answers
    decode in that cache; then the cache is cut back to the shared tokens, layers >= ``layer`` are
    recomputed over them from the kept hidden states under the edit, and the post-edit answers
    decode in the same cache. So the shared tokens pass the layers below the edit once, and a batch
    never holds more than its one cache.

    Columns: each row's shared tokens end at one column C (left padding before them); its remaining
    tokens (pre- or post-edit) follow, padded on their left, so a row may have masked columns inside
    it. Positions count only real tokens, as for left padding, so the answers equal plain generation
    up to float rounding. A pair that shares less than ``min_shared`` of its post-edit tokens is
    answered by plain generation. ``stats.reused_tokens`` counts the shared tokens.
    """
    if len(pre_prompts) != len(post_prompts):
        raise ConfigError(f"{len(pre_prompts)} pre-edit prompts but {len(post_prompts)} post-edit prompts")
    if not pre_prompts:
        return [], []
    chat = use_chat_template(tokenizer, chat)
    layers = resolve_architecture(model).decoder_layers(model)
    if not 0 < layer < len(layers):
        raise ConfigError(f"prefix reuse needs an edit layer in 1..{len(layers) - 1}, got {layer}")
    if not supports_prefix_reuse(model):
        raise ConfigError(f"prefix reuse needs one full-attention KV cache layer per decoder layer; "
                          f"{type(model).__name__} has others (use plain generation)")
    pre_ids = _encode(model, tokenizer, pre_prompts, chat, max_new_tokens, stats)
    post_ids = _encode(model, tokenizer, post_prompts, chat, max_new_tokens, stats)
    # shared tokens of a pair, leaving each side at least one token of its own to feed after the cut
    shared = [min(shared_prefix_length(a, b), len(a) - 1, len(b) - 1) for a, b in zip(pre_ids, post_ids)]
    n = len(pre_prompts)
    pre_answers, post_answers = [""] * n, [""] * n
    plain = [i for i in range(n) if shared[i] < max(1.0, min_shared * len(post_ids[i]))]
    if plain:
        gen = dict(max_new_tokens=max_new_tokens, chat=chat, batch_size=8, stats=stats)
        started, before = time.perf_counter(), stats.new_tokens if stats is not None else 0
        for i, text in zip(plain, generate(model, tokenizer, [pre_prompts[i] for i in plain], **gen)):
            pre_answers[i] = text
        if stats is not None:
            stats.pre_edit_s += time.perf_counter() - started
            stats.pre_edit_tokens += stats.new_tokens - before
        out = generate(model, tokenizer, [post_prompts[i] for i in plain], **gen,
                       row_context=lambda idx: edited([plain[j] for j in idx]))
        for i, text in zip(plain, out):
            post_answers[i] = text
    rows = sorted(set(range(n)) - set(plain))
    width = [max(len(pre_ids[i]), len(post_ids[i])) for i in rows]
    returns_tuple = _probe_tuple(model, layers)  # outside any edit: a one-row probe
    with torch.inference_mode():
        for members in token_budget_batches(width, batch_tokens, extra=max_new_tokens):
            # fewest shared tokens first: left padded, the rows a prefill chunk runs are then a suffix
            batch = sorted((rows[j] for j in members), key=lambda i: shared[i])
            pre_out, post_out = _before_and_after(model, tokenizer, layers, layer, [pre_ids[i] for i in batch],
                                                  [post_ids[i] for i in batch], [shared[i] for i in batch],
                                                  lambda idx, batch=batch: edited([batch[j] for j in idx]), returns_tuple,
                                                  max_new_tokens, stats)
            for i, a, b in zip(batch, pre_out, post_out):
                pre_answers[i], post_answers[i] = a, b
    return pre_answers, post_answers


def _split_layout(ids: list[list[int]], shared: list[int], pad_id: int, device):
    """Ids and mask with each row's first ``shared`` tokens ending at one column and its other
    tokens ending at the last column (padding before each part); also that column."""
    cut = max(shared)
    tail = max(len(x) - s for x, s in zip(ids, shared))
    out = torch.full((len(ids), cut + tail), pad_id, dtype=torch.long)
    mask = torch.zeros_like(out)
    for row, (x, s) in enumerate(zip(ids, shared)):
        out[row, cut - s:cut] = torch.tensor(x[:s], dtype=torch.long)
        out[row, cut + tail - (len(x) - s):] = torch.tensor(x[s:], dtype=torch.long)
        mask[row, cut - s:cut] = 1
        mask[row, cut + tail - (len(x) - s):] = 1
    return out.to(device), mask.to(device), cut


def _before_and_after(model, tokenizer, layers, layer, pre_ids, post_ids, shared, edited, returns_tuple,
                      max_new_tokens, stats):
    """One batch of :func:`generate_before_and_after`: the pre-edit and post-edit answers."""
    started = time.perf_counter()
    config = generation_config(model, tokenizer, max_new_tokens)
    pad_id = config.pad_token_id
    device = next(model.parameters()).device
    pre, pre_mask, cut = _split_layout(pre_ids, shared, pad_id, device)
    post, post_mask, _ = _split_layout(post_ids, shared, pad_id, device)
    if stats is not None:
        stats.reused_tokens += sum(shared)
    release_free_memory()  # the previous batch's cache and activations, before this batch's cache
    cache = reserved_cache(model, max(pre.shape[1], post.shape[1]) + max_new_tokens)
    kept: list[torch.Tensor] = []  # layer ``layer``'s input over the shared columns, chunk by chunk

    @contextmanager
    def keeping(lo, hi, k):
        # the chunk runs rows k.. (safeedit.lm.ragged); the rows before it are padding there: zeros
        def grab(_module, args, kwargs):
            shown = kwargs.get("hidden_states", args[0] if args else None)[:, :max(0, min(hi, cut) - lo)]
            if shown.shape[1]:
                kept.append(torch.cat([shown.new_zeros((k, *shown.shape[1:])), shown]) if k else shown)

        handle = layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    # 1. the unedited prefill of all but the last pre-edit column, skipping padding; then the pre-edit answers
    ragged_prefill(model, pre, pre_mask, cache, stop=pre.shape[1] - 1, tokens=_generation.PREFILL_TOKENS, before_chunk=keeping)
    hidden = torch.cat(kept, dim=1)
    kept.clear()
    # transformers' search, every row kept: the post-edit pass below reuses each row's cache
    output = decode_new_tokens(model, pre, pre_mask, cache, config, greedy=False)
    before = stats.new_tokens if stats is not None else 0
    pre_answers = decode_answers(tokenizer, output, pad_id, stats)
    del output
    if stats is not None:
        stats.pre_edit_s += time.perf_counter() - started
        stats.pre_edit_tokens += stats.new_tokens - before

    # 2. back to the shared columns: layers below the edit keep them (the edit does not change them),
    # layers >= the edit are emptied and recomputed from the kept hidden states under the edit
    for li, cache_layer in enumerate(cache.layers):
        cache_layer.keep(cut if li < layer else 0)
    # a view of the cache whose layers below the edit (bypassed, never written) stand for layer
    # ``layer``: transformers sizes masks and positions from layer 0's length, which must be the
    # recomputed length here
    upper = copy.copy(cache)
    upper.layers = [cache.layers[layer]] * layer + list(cache.layers[layer:])
    ragged_prefill(model, post, post_mask, upper, stop=cut, tokens=_generation.PREFILL_TOKENS, rows_context=edited,
                   before_chunk=lambda lo, hi, k: run_from_layer(layers, layer, lambda: hidden[k:, lo:hi], returns_tuple))
    del hidden, upper
    # 3. the post-edit answers: their own tokens run through every layer, then decoding, finished rows
    # leaving the batch (safeedit.lm.greedy)
    new = decode_new_tokens(model, post, post_mask, cache, config, greedy=decodes_like_argmax(model, config),
                            rows_context=edited)
    return pre_answers, decode_answers(tokenizer, new, pad_id, stats)


def _probe_tuple(model, layers) -> bool:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return layer_returns_tuple(layers[0], lambda: model(
            input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False))


__all__ = ["generate_before_and_after", "shared_prefix_length", "supports_prefix_reuse"]
