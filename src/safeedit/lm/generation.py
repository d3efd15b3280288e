"""Batched generation with left padding and a KV cache.

Each prompt is tokenized once. Prompts are grouped by length so batches carry little padding,
then answers are put back in the caller's order; the prefill skips what padding is left
(:mod:`safeedit.lm.ragged`), and greedy decoding drops rows as they finish
(:mod:`safeedit.lm.greedy`). Prompts longer than the model's window minus
``max_new_tokens`` are cut from the left, because SafeEdit inputs end with the harmful question;
every cut is reported (a warning, and ``GenerationStats.truncated`` when asked for).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch
from tqdm.auto import tqdm

from safeedit.errors import ConfigError
from safeedit.lm.chat import adds_special_tokens, format_prompt, use_chat_template
from safeedit.lm.forward_args import cache_arg
from safeedit.lm.greedy import decodes_like_argmax, greedy_decode
from safeedit.lm.kv_cache import reserved_cache
from safeedit.lm.ragged import ragged_prefill, supports_row_windows

log = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    truncated: list[int] = field(default_factory=list)  # prompt indices cut from the left
    new_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens a pre-/post-edit pair shared (``safeedit.lm.prefix``)
    # ``safeedit.lm.prefix.generate_before_and_after``: the pre-edit share of the time and of new_tokens
    pre_edit_s: float = 0.0
    pre_edit_tokens: int = 0


def warn_truncated(n_cut: int, n_prompts: int, max_prompt: int, indices: list[int]) -> None:
    message = (
        f"{n_cut} of {n_prompts} prompts exceed the model window minus max_new_tokens "
        f"({max_prompt} tokens) and were cut from the left (indices {indices[:10]}"
        f"{'...' if len(indices) > 10 else ''})"
    )
    warnings.warn(message, stacklevel=3)
    log.warning(message)


def context_window(model, tokenizer) -> int:
    window = getattr(model.config, "max_position_embeddings", None)
    if window is None:
        get_text = getattr(model.config, "get_text_config", None)
        window = getattr(get_text(), "max_position_embeddings", None) if get_text else None
    if window is None:
        window = tokenizer.model_max_length
    return int(min(window, 1_000_000))


def stop_token_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def encode_for_generation(model, tokenizer, prompts: list[str], chat: bool, max_new_tokens: int, *,
                          system: str | None = None, stats: GenerationStats | None = None,
                          min_prompt: int = 1) -> list[list[int]]:
    """Token ids of the formatted prompts, cut from the left to fit the window beside
    ``max_new_tokens``; every cut is warned about and recorded in ``stats``."""
    max_prompt = context_window(model, tokenizer) - max_new_tokens
    if max_prompt < min_prompt:
        raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room in the model's window")
    encoded, truncated = encode_prompts(tokenizer, prompts, chat, system, max_prompt)
    if truncated:
        warn_truncated(len(truncated), len(prompts), max_prompt, truncated)
    if stats is not None:
        stats.truncated.extend(truncated)
    return encoded


def generation_config(model, tokenizer, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                      top_p: float = 1.0):
    """transformers' GenerationConfig for our calls: greedy unless sampling, the model's stop tokens."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=stop_token_ids(model, tokenizer),
        use_cache=True,
    )


def encode_prompts(
    tokenizer, prompts: list[str], chat: bool, system: str | None, max_len: int
) -> tuple[list[list[int]], list[int]]:
    """Token ids for each formatted prompt, left-truncated to ``max_len``; also the cut indices."""
    if not prompts:  # a fast tokenizer fails on an empty batch
        return [], []
    texts = [format_prompt(tokenizer, p, chat=chat, system=system) for p in prompts]
    encoded = tokenizer(texts, add_special_tokens=adds_special_tokens(chat, tokenizer))["input_ids"]
    truncated = [i for i, ids in enumerate(encoded) if len(ids) > max_len]
    return [ids[-max_len:] for ids in encoded], truncated


#: tokens (rows x positions) one prefill step processes: longer prompts are prefilled in chunks of
#: ``PREFILL_TOKENS // rows`` positions, so a batch's activations (the MLP's three [tokens x 1536]
#: tensors of SmolLM2, the attention's blocks) stay ~50 MiB instead of growing with the prompt
#: (8 SafeEdit prompts of ~1,000 tokens at once: ~400 MiB more peak memory), for the same arithmetic.
#: 1,024 rather than 2,048: the bench's peak RSS ~50 MiB lower at 8,192 decode tokens, and a prefill
#: of 5-20 rows measured no slower (1,024-token matrix products still run at full speed here)
PREFILL_TOKENS = 1024


def prefill_chunk(rows: int) -> int:
    """Positions per prefill step for a batch of ``rows`` (see :data:`PREFILL_TOKENS`)."""
    return max(1, PREFILL_TOKENS // max(1, rows))


def token_budget_batches(lengths: list[int], budget: int, extra: int = 0) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length and cut into batches whose padded size, rows x (longest
    + ``extra``), stays within ``budget`` tokens (a longer row still gets a batch of its own).

    The padded size is what a batch's KV cache holds (``extra``: the tokens it will generate), so the
    budget bounds its memory, and sorting keeps short rows from paying for a long row's padding. Of
    the cuts of the sorted rows, the one with the fewest batches is taken (each batch costs a decode
    step's reading of every weight), and among those the one with the fewest padded slots (what each
    decode step's attention reads): filling batches greedily would leave e.g. SafeEdit's ~450-token
    prompts in a batch of 60-token questions, at 450 slots per row."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    widths = [lengths[i] + extra for i in order]
    # best[j]: (batches, padded slots) of the best cut of the first j sorted rows; start[j]: its last batch's first row
    best: list[tuple[float, float]] = [(0, 0)] + [(float("inf"), float("inf"))] * len(order)
    start = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j - 1, -1, -1):  # last batch = sorted rows i..j-1, padded to row j-1's width
            size = (j - i) * widths[j - 1]
            if size > budget and j - i > 1:
                break  # an earlier start only adds rows
            candidate = (best[i][0] + 1, best[i][1] + size)
            if candidate < best[j]:
                best[j], start[j] = candidate, i
    batches: list[list[int]] = []
    j = len(order)
    while j:
        batches.append(order[start[j]:j])
        j = start[j]
    return batches[::-1]


def decode_answers(tokenizer, new: torch.Tensor, pad_id: int, stats: GenerationStats | None = None) -> list[str]:
    """The text of each row of generated ids ``new`` (special tokens stripped); counts them in ``stats``."""
    if stats is not None:
        stats.new_tokens += int((new != pad_id).sum())
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


def decode_new_tokens(model, input_ids: torch.Tensor, attention: torch.Tensor, cache, config, *, greedy: bool,
                      rows_context: Callable[[list[int]], ContextManager] | None = None) -> torch.Tensor:
    """The new tokens of a left-padded batch whose ``cache`` holds its first columns (or None):
    :func:`safeedit.lm.greedy.greedy_decode`, which drops finished rows, for ``greedy`` search over a
    reserved cache, transformers' ``generate`` otherwise. ``rows_context(rows)``: the batch rows running
    (a per-row edit)."""
    if greedy and supports_row_windows(cache):
        return greedy_decode(model, input_ids, attention, cache, max_new_tokens=config.max_new_tokens,
                             stop_ids=config.eos_token_id, pad_id=config.pad_token_id, rows_context=rows_context)
    with rows_context(list(range(input_ids.shape[0]))) if rows_context is not None else nullcontext():
        output = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                **({} if cache is None else {cache_arg(model): cache}))
    return output[:, input_ids.shape[1]:]


def left_pad(batch: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids):] = 1
    return input_ids.to(device), attention.to(device)


def generate(
    model,
    tokenizer,
    prompts: list[str] | str,
    max_new_tokens: int = 128,
    chat: bool | None = None,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    system: str | None = None,
    progress: bool = False,
    stats: GenerationStats | None = None,
    row_context: Callable[[list[int]], ContextManager] | None = None,
) -> list[str] | str:
    """Answer each prompt; returns only the new text with special tokens stripped.

    ``chat=None`` uses the chat template when the tokenizer has one. Greedy by default; with
    ``do_sample=True`` pass ``seed`` for reproducible samples.

    ``row_context(indices)``: a context manager entered around each batch, given the caller's
    indices of the prompts in that batch, in row order (grouped evaluation uses it to serve each
    row with its own instance's edit, :meth:`safeedit.methods.base.GroupEdit.rows`).
    """
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if not prompts:
        return []
    chat = use_chat_template(tokenizer, chat)
    encoded = encode_for_generation(model, tokenizer, prompts, chat, max_new_tokens, system=system, stats=stats)

    config = generation_config(model, tokenizer, max_new_tokens, do_sample=do_sample, temperature=temperature,
                               top_p=top_p)
    pad_id = config.pad_token_id
    greedy = not do_sample and decodes_like_argmax(model, config)
    if seed is not None:
        torch.manual_seed(seed)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding per batch
    answers: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc="generate", disable=not progress, leave=False):
            input_ids, attention = left_pad([encoded[i] for i in batch], pad_id, device)
            cache = reserved_cache(model, input_ids.shape[1] + max_new_tokens)
            rows = (lambda rows, batch=batch: row_context([batch[r] for r in rows])) if row_context else None
            if supports_row_windows(cache):
                # all but the last column, skipping padding (safeedit.lm.ragged); the decoding feeds the last
                if input_ids.shape[1] > 1:
                    ragged_prefill(model, input_ids, attention, cache, stop=input_ids.shape[1] - 1,
                                   tokens=PREFILL_TOKENS, rows_context=rows)
                config.prefill_chunk_size = None
            else:  # chunked prefill needs a cache object; transformers' own otherwise
                config.prefill_chunk_size = prefill_chunk(len(batch)) if cache is not None else None
            new = decode_new_tokens(model, input_ids, attention, cache, config, greedy=greedy, rows_context=rows)
            for index, text in zip(batch, decode_answers(tokenizer, new, pad_id, stats)):
                answers[index] = text
    return answers[0] if single else answers
