"""Greedy decoding that drops finished rows from the batch.

transformers' ``generate`` keeps a finished row in the batch until the last row stops: it runs the
whole model for it at every step and pads its output. Post-edit answers are often short refusals
beside long answers (on the SafeEdit sample at 64 new tokens, 14 of 40 post-edit answers stopped
early, after 19-58 tokens; at the paper's 600 most answers stop long before the longest), so those
steps are waste. :func:`greedy_decode` removes rows once enough of them have finished: the last
running rows move into the finished rows' places in every cache layer (one copy of the moved rows'
keys and values, :meth:`safeedit.lm.kv_cache.ReservedLayer.keep_rows`), and the batch runs on with
the rows left.

Each running row sees the same tokens, positions and mask as under ``generate``, so the answers are
the same greedy answers up to float summation order (a batch of fewer rows may pick another matrix
kernel); tests compare both on tiny models and the bench compares grouped and one-at-a-time runs.
Only a cache of reserved full-attention layers can drop rows
(:func:`~safeedit.lm.ragged.supports_row_windows`); callers use ``generate`` for anything else, for
sampling, and where the model's generation config adds a logits processor (:func:`decodes_like_argmax`).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Callable, ContextManager

import torch

from safeedit.lm.forward_args import cache_arg
from safeedit.lm.ragged import positions, supports_row_windows


#: generation settings under which transformers' greedy search is the argmax of the raw logits;
#: any other value (from our config or filled in from the model's own generation config, e.g. a
#: ``repetition_penalty``) adds a logits processor, and callers then keep ``generate``
_NEUTRAL = {"do_sample": (None, False), "num_beams": (None, 1), "repetition_penalty": (None, 1.0),
            "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
            "encoder_no_repeat_ngram_size": (None, 0), "min_length": (None, 0), "min_new_tokens": (None, 0),
            "bad_words_ids": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
            "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "sequence_bias": (None,),
            "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False),
            "remove_invalid_values": (None, False), "stop_strings": (None,), "guidance_scale": (None, 1.0),
            "watermarking_config": (None,), "penalty_alpha": (None,), "dola_layers": (None,),
            "constraints": (None,), "force_words_ids": (None,), "prompt_lookup_num_tokens": (None,),
            "max_time": (None,), "num_return_sequences": (None, 1)}


def decodes_like_argmax(model, config) -> bool:
    """Whether ``generate(generation_config=config)`` on ``model`` is plain greedy search (the argmax
    of the logits at every step), as :func:`greedy_decode` is: ``config``'s settings, with unset ones
    taken from the model's generation config as ``generate`` does."""
    settings = config.to_dict()
    own = getattr(model, "generation_config", None)
    model_settings = own.to_dict() if own is not None else {}
    for name, neutral in _NEUTRAL.items():
        value = settings.get(name)
        if value is None:
            value = model_settings.get(name)
        if value not in neutral:
            return False
    return True


def drop_order(rows: int, finished: list[int]) -> list[int]:
    """The rows kept when ``finished`` leave a batch of ``rows``, in their new order (old row
    indices): the last running rows fill the finished rows' places, so the batch shrinks to its
    first ``rows - len(finished)`` rows and only the rows that change place are copied."""
    done = set(finished)
    kept = rows - len(done)
    holes = sorted(r for r in done if r < kept)
    movers = [r for r in range(kept, rows) if r not in done]
    order = list(range(kept))
    for hole, mover in zip(holes, movers):
        order[hole] = mover
    return order


def greedy_decode(model, input_ids: torch.Tensor, attention: torch.Tensor, cache, *, max_new_tokens: int,
                  stop_ids: list[int], pad_id: int,
                  rows_context: Callable[[list[int]], ContextManager] | None = None,
                  drop_fraction: float = 0.125) -> torch.Tensor:
    """Greedy new tokens ``[rows, steps]`` (``pad_id`` after a row's stop token) for left-padded
    ``input_ids``, whose first ``cache`` length columns ``cache`` already holds (all but the last,
    after a prefill, or fewer); the rest are fed at the first step. A row stops at a token in
    ``stop_ids`` (kept in its output) or after ``max_new_tokens``.

    Finished rows leave the batch once they are at least ``drop_fraction`` of its rows (one row at
    least). ``rows_context(rows)``: entered around the steps with the original batch rows running,
    in batch order (a per-row edit), and entered again with the new rows after each drop.
    """
    if not supports_row_windows(cache):
        raise ValueError("greedy_decode needs a cache of reserved full-attention layers (safeedit.lm.kv_cache)")
    rows = input_ids.shape[0]
    device = input_ids.device
    out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    if max_new_tokens <= 0 or rows == 0:
        return out[:, :0]
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    layers = list({id(layer): layer for layer in cache.layers}.values())
    cached = layers[0].get_seq_length()
    running = torch.arange(rows, device=device)  # original row of each batch row
    alive = torch.ones(rows, dtype=torch.bool, device=device)  # not stopped yet
    mask = attention.long()
    feed = input_ids[:, cached:]
    pos = positions(mask)[:, cached:]
    steps = 0
    with ExitStack() as stack:
        if rows_context is not None:
            stack.enter_context(rows_context(running.tolist()))
        with torch.inference_mode():
            for step in range(max_new_tokens):
                logits = model(input_ids=feed, attention_mask=mask, position_ids=pos, use_cache=True,
                               logits_to_keep=1, **{cache_arg(model): cache}).logits[:, -1]
                token = logits.argmax(dim=-1)
                out[running[alive], step] = token[alive]
                steps = step + 1
                alive &= ~torch.isin(token, stops)
                if step + 1 == max_new_tokens or not bool(alive.any()):
                    break
                # a stopped row still in the batch is fed padding, as generate does; it is never read again
                feed = torch.where(alive, token, torch.full_like(token, pad_id))[:, None]
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                pos = pos[:, -1:] + 1
                finished = (~alive).nonzero().flatten().tolist()
                if finished and len(finished) >= max(1.0, drop_fraction * len(alive)):
                    order = drop_order(len(alive), finished)
                    for layer in layers:
                        layer.keep_rows(order)
                    keep = torch.tensor(order, device=device)
                    mask, pos, feed, running, alive = mask[keep], pos[keep], feed[keep], running[keep], alive[keep]
                    if rows_context is not None:
                        stack.close()
                        stack.enter_context(rows_context(running.tolist()))
    return out[:, :steps]


__all__ = ["decodes_like_argmax", "drop_order", "greedy_decode"]
