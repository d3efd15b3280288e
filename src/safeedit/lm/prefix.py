"""Prefix reuse: post-edit generation that starts from the unedited model's prefill below the edit.

An edit confined to layers >= L (DINM: W_V of the toxic layer L) leaves the hidden states entering
layer L, and the attention keys/values of layers 0..L-1, unchanged for every token. The post-edit
prompt is the pre-edit prompt plus a suffix (DINM's), so the two share a long token prefix. So:

1. :func:`generate_capturing_prefix` answers the pre-edit prompts with the *unedited* model like
   :func:`safeedit.lm.generate`, and keeps, for each prompt, what its prefill computed below L:
   the keys/values of layers 0..L-1 and the hidden states entering layer L (:class:`PrefixState`).
2. :func:`generate_from_prefix` answers the post-edit prompts with the *edited* model (in place,
   or per row under a ``row_context``): for the tokens a prompt shares with its pre-edit prompt it
   runs only layers >= L, from the kept hidden states, and takes layers < L's keys/values from the
   kept state; the remaining tokens (the suffix) and the new tokens run through the whole model.

For an edit at the last layer this removes nearly all of the post-edit prefill. The saving exists
only when the pre-edit answers are generated in the same pass; answers already in a generation
cache have no prefill to share, and those prompts take the plain path. Results equal plain
generation up to float rounding (same tokens, same positions, same masks; a test checks the keys/values
against a plain prefill and the greedy answers against :func:`safeedit.lm.generate`).

Only models whose KV cache is one plain full-attention layer per decoder layer are supported
(Llama, Mistral without a sliding window in use, Qwen2, SmolLM2, ...); :func:`supports_prefix_reuse` says
so, and callers fall back to plain generation otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from safeedit.errors import ConfigError
from safeedit.lm.arch import resolve_architecture
from safeedit.lm.chat import use_chat_template
from safeedit.lm.forward_args import cache_arg, keep_last_logits
from safeedit.lm.generation import (
    GenerationStats,
    encode_for_generation,
    generate,
    generation_config,
    left_pad,
    prefill_chunk,
)
from safeedit.lm.kv_cache import reserved_cache
from safeedit.lm.layer_bypass import layer_returns_tuple, run_from_layer


@dataclass
class PrefixState:
    """What the unedited prefill of one prompt computed below layer ``layer``."""

    ids: list[int]  # the prefilled token ids (the formatted prompt minus its last token)
    layer: int
    keys: list[torch.Tensor]  # per layer < ``layer``: [kv_heads, len(ids), head_dim]
    values: list[torch.Tensor]
    hidden: torch.Tensor  # [len(ids), hidden]: the input of layer ``layer``


def supports_prefix_reuse(model) -> bool:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - a config the cache cannot read: no reuse, plain path
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _positions(attention: torch.Tensor) -> torch.Tensor:
    # as transformers' generate derives them: a token's position counts only real tokens before it
    return (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)


def _encode(model, tokenizer, prompts, chat, max_new_tokens, stats):
    # two tokens at least: the prefill keeps all but the last, which generate feeds
    return encode_for_generation(model, tokenizer, prompts, chat, max_new_tokens, stats=stats, min_prompt=2)


def _decode_new(tokenizer, output, width, batch, answers, stats, pad_id):
    new = output[:, width:]
    for row, index in enumerate(batch):
        answers[index] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
        if stats is not None:
            stats.new_tokens += int((new[row] != pad_id).sum())


def generate_capturing_prefix(model, tokenizer, prompts: list[str], *, layer: int, max_new_tokens: int = 128,
                              chat: bool | None = None, batch_size: int = 8,
                              stats: GenerationStats | None = None) -> tuple[list[str], list[PrefixState]]:
    """Greedy answers of the (unedited) model, and each prompt's :class:`PrefixState` below ``layer``."""
    chat = use_chat_template(tokenizer, chat)
    layers = resolve_architecture(model).decoder_layers(model)
    if not 0 < layer < len(layers):
        raise ConfigError(f"prefix reuse needs an edit layer in 1..{len(layers) - 1}, got {layer}")
    encoded = _encode(model, tokenizer, prompts, chat, max_new_tokens, stats)
    config = generation_config(model, tokenizer, max_new_tokens)
    pad_id = config.pad_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(prompts)
    states: list[PrefixState | None] = [None] * len(prompts)  # None: a one-token prompt, nothing to keep
    seen: list[torch.Tensor] = []  # layer ``layer``'s input, one tensor per prefill chunk

    def grab(_module, args, kwargs):
        seen.append(kwargs.get("hidden_states", args[0] if args else None))

    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            ids, attention = left_pad([encoded[i] for i in batch], pad_id, device)
            width = ids.shape[1]
            if width < 2:  # one-token prompts: nothing to prefill before the token generate feeds
                output = model.generate(input_ids=ids, attention_mask=attention, generation_config=config)
                _decode_new(tokenizer, output, width, batch, answers, stats, pad_id)
                continue
            cache = reserved_cache(model, width + max_new_tokens)
            handle = layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
            positions = _positions(attention)
            seen.clear()
            try:  # prefill all but the last token (in chunks); generate feeds that one and decodes
                step = prefill_chunk(len(batch))
                for lo in range(0, width - 1, step):
                    hi = min(width - 1, lo + step)
                    model(input_ids=ids[:, lo:hi], attention_mask=attention[:, :hi], position_ids=positions[:, lo:hi],
                          use_cache=True, **keep_last_logits(model), **{cache_arg(model): cache})
            finally:
                handle.remove()
            hidden_in = torch.cat(seen, dim=1)
            seen.clear()
            for row, index in enumerate(batch):
                n = len(encoded[index]) - 1
                if n == 0:
                    continue
                lo = width - 1 - n
                # views, not copies: the cache reserved room for the answer, so decoding below writes
                # only later columns; a layer's buffer is freed once every row's view of it is dropped
                states[index] = PrefixState(
                    ids=list(encoded[index][:-1]), layer=layer,
                    keys=[cache.layers[li].keys[row, :, lo:width - 1] for li in range(layer)],
                    values=[cache.layers[li].values[row, :, lo:width - 1] for li in range(layer)],
                    hidden=hidden_in[row, lo:].clone())
            output = model.generate(input_ids=ids, attention_mask=attention, generation_config=config,
                                    **{cache_arg(model): cache})
            _decode_new(tokenizer, output, width, batch, answers, stats, pad_id)
    return answers, states  # type: ignore[return-value]


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def generate_from_prefix(model, tokenizer, prompts: list[str], states: list[PrefixState | None], *,
                         max_new_tokens: int = 128, chat: bool | None = None, batch_size: int = 8,
                         stats: GenerationStats | None = None,
                         row_context: Callable[[list[int]], ContextManager] | None = None,
                         min_shared: float = 0.5, release_states: bool = False) -> list[str]:
    """Greedy answers of the edited model, reusing ``states[i]`` (from the unedited model) for prompt i.

    The edit must change nothing below ``states[i].layer``. ``row_context`` as in :func:`generate`.
    A prompt that shares less than ``min_shared`` of its tokens with its state (or has no state) is
    answered by plain generation, so it cannot shrink the reusable width of a whole batch.
    ``stats.reused_tokens`` counts the prompt tokens that skipped the layers below the edit.
    ``release_states``: set ``states[i]`` to None once its batch has copied it, so the kept states and
    the batch's cache are not both alive (the caller must hold no other reference to free memory).
    """
    from contextlib import nullcontext

    if len(states) != len(prompts):
        raise ConfigError(f"{len(prompts)} prompts but {len(states)} prefix states")
    if not prompts:
        return []
    chat = use_chat_template(tokenizer, chat)
    layers = resolve_architecture(model).decoder_layers(model)
    kept = {s.layer for s in states if s is not None}
    if len(kept) > 1:
        raise ConfigError("prefix states of one call must share their layer")
    encoded = _encode(model, tokenizer, prompts, chat, max_new_tokens, stats)
    # reusable tokens per prompt: shared with its state, and at least one token left to feed
    shared = [0 if st is None else min(_shared(ids, st.ids), len(ids) - 1) for ids, st in zip(encoded, states)]
    answers: list[str] = [""] * len(prompts)
    plain = [i for i in range(len(prompts)) if shared[i] < max(1.0, min_shared * len(encoded[i]))]
    if plain:
        out = generate(model, tokenizer, [prompts[i] for i in plain], max_new_tokens=max_new_tokens, chat=chat,
                       batch_size=batch_size, stats=stats,
                       row_context=None if row_context is None else lambda idx: row_context([plain[j] for j in idx]))
        for i, text in zip(plain, out):
            answers[i] = text
    reuse = sorted(set(range(len(prompts))) - set(plain), key=lambda i: len(encoded[i]))
    if not reuse:
        return answers
    layer = kept.pop()
    config = generation_config(model, tokenizer, max_new_tokens)
    pad_id = config.pad_token_id
    device = next(model.parameters()).device
    returns_tuple = _probe_tuple(model, layers)  # outside any row context: a one-row probe
    pending = Counter(id(states[i]) for i in reuse) if release_states else Counter()  # batches still to read each state
    with torch.inference_mode():
        for start in range(0, len(reuse), batch_size):
            batch = reuse[start:start + batch_size]
            ids, attention = left_pad([encoded[i] for i in batch], pad_id, device)
            width = ids.shape[1]
            first = [width - len(encoded[i]) for i in batch]  # column of each row's first token
            cached = min(f + shared[i] for f, i in zip(first, batch))  # one cache width for the batch
            if stats is not None:
                stats.reused_tokens += sum(max(0, cached - f) for f in first)
            with row_context(batch) if row_context is not None else nullcontext():
                cache = reserved_cache(model, width + max_new_tokens)
                # one pass, not chunked: layers below L are bypassed and hold nothing yet, and transformers
                # sizes the attention mask from the first layer's cache
                hidden = _gather([states[i].hidden for i in batch], first, cached)
                with run_from_layer(layers, layer, lambda: hidden, returns_tuple):
                    model(input_ids=ids[:, :cached], attention_mask=attention[:, :cached],
                          position_ids=_positions(attention[:, :cached]), use_cache=True, **keep_last_logits(model),
                          **{cache_arg(model): cache})
                # a state may serve several rows (a repeated prompt): free it after its last batch only
                last_use = set()
                if release_states:
                    pending.subtract(id(states[i]) for i in batch)
                    last_use = {id(states[i]) for i in batch if pending[id(states[i])] == 0}
                for li in range(layer):  # layers below the edit: the unedited keys/values
                    cache.layers[li].update(_gather([states[i].keys[li] for i in batch], first, cached, dim=1),
                                            _gather([states[i].values[li] for i in batch], first, cached, dim=1))
                    for i in batch:  # layer by layer, so the states and the cache are never both whole
                        if id(states[i]) in last_use:
                            states[i].keys[li] = states[i].values[li] = None
                if release_states:
                    for i in batch:
                        states[i] = None
                output = model.generate(input_ids=ids, attention_mask=attention, generation_config=config,
                                        **{cache_arg(model): cache})
            _decode_new(tokenizer, output, width, batch, answers, stats, pad_id)
    return answers


def _gather(rows: list[torch.Tensor], first: list[int], width: int, dim: int = 0) -> torch.Tensor:
    """Stack per-row tensors into ``width`` left-padded columns (zeros where a row has padding)."""
    ref = rows[0]
    shape = list(ref.shape)
    shape[dim] = width
    out = ref.new_zeros([len(rows), *shape])
    for r, (x, col) in enumerate(zip(rows, first)):
        take = width - col  # this row's real tokens inside the cached columns
        if take > 0:
            out[r].narrow(dim, col, take).copy_(x.narrow(dim, 0, take))
    return out


def _probe_tuple(model, layers) -> bool:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return layer_returns_tuple(layers[0], lambda: model(
            input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False))


__all__ = ["PrefixState", "generate_capturing_prefix", "generate_from_prefix", "supports_prefix_reuse"]
