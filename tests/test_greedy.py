"""Greedy decoding that drops finished rows (``safeedit.lm.greedy``): the same tokens as transformers'
``generate``, rows leaving the batch as they stop."""

from contextlib import contextmanager

import pytest
import torch

from safeedit.lm.forward_args import cache_arg
from safeedit.lm.generation import left_pad
from safeedit.lm.greedy import drop_order, greedy_decode
from safeedit.lm.kv_cache import reserved_cache
from safeedit.lm.ragged import ragged_prefill
from tests.conftest import tiny_model, tiny_tokenizer

PROMPTS = ["w1 w2", "w3 w4 w5", "w6 " * 9 + "w7", "w8 w9 " * 6 + "w10", "w11", "w12 w13 w14 w15"]
NEW = 12


def test_drop_order_fills_holes_with_the_last_running_rows():
    assert drop_order(6, [1, 4]) == [0, 5, 2, 3]
    assert drop_order(4, [3]) == [0, 1, 2]  # the last row leaves: nothing moves
    assert drop_order(5, [0, 1, 2]) == [3, 4]
    order = drop_order(8, [0, 2, 7])
    assert sorted(order) == [1, 3, 4, 5, 6] and all(src >= len(order) for dst, src in enumerate(order) if dst != src)


def test_keep_rows_in_place_equals_a_gather():
    model = tiny_model("llama")
    ids = torch.randint(5, 100, (5, 7))
    caches = [reserved_cache(model, 10), reserved_cache(model, 10)]
    with torch.inference_mode():
        for cache in caches:
            model(input_ids=ids, use_cache=True, **{cache_arg(model): cache})
    in_place, gathered = caches[0].layers[1], caches[1].layers[1]
    expected = in_place.keys[[0, 4, 2]].clone()
    with torch.inference_mode():  # where decoding calls it
        in_place.keep_rows([0, 4, 2])  # row 4 moves into row 1's place, inside the buffer
        gathered.keep_rows([2, 0, 4])  # not a drop order: gathered
    assert torch.equal(in_place.keys, expected)
    assert torch.equal(gathered.keys, expected[[2, 0, 1]])
    assert in_place.keys.shape[0] == 3 and in_place._owns_views()


def _stop_tokens(model, tok, ids):
    """Tokens the greedy answers emit at different steps, so rows stop at different times."""
    input_ids, attention = left_pad(ids, tok.pad_token_id, "cpu")
    out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=NEW, do_sample=False,
                         eos_token_id=None, pad_token_id=tok.pad_token_id)[:, input_ids.shape[1]:]
    stops = {int(out[0, 2]), int(out[2, 6]), int(out[3, 9])}
    return sorted(stops)


def _reference(model, tok, ids, stops):
    input_ids, attention = left_pad(ids, tok.pad_token_id, "cpu")
    out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=NEW, do_sample=False,
                         eos_token_id=stops, pad_token_id=tok.pad_token_id)
    return out[:, input_ids.shape[1]:]


@pytest.mark.parametrize("drop_fraction", [0.0, 0.5, 2.0])
def test_tokens_equal_generate_whenever_rows_leave(drop_fraction):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    stops = _stop_tokens(model, tok, ids)
    expected = _reference(model, tok, ids, stops)
    assert (expected == tok.pad_token_id).any(), "no row stopped early: the test would not test dropping"
    input_ids, attention = left_pad(ids, tok.pad_token_id, "cpu")
    cache = reserved_cache(model, input_ids.shape[1] + NEW)
    with torch.inference_mode():
        ragged_prefill(model, input_ids, attention, cache, stop=input_ids.shape[1] - 1, tokens=16)
    seen = []

    @contextmanager
    def rows(running):
        seen.append(list(running))
        yield

    got = greedy_decode(model, input_ids, attention, cache, max_new_tokens=NEW, stop_ids=stops,
                        pad_id=tok.pad_token_id, rows_context=rows, drop_fraction=drop_fraction)
    assert torch.equal(got, expected[:, :got.shape[1]]) and got.shape == expected.shape
    assert seen[0] == list(range(len(PROMPTS)))
    if drop_fraction <= 0.5:
        assert len(seen) > 1 and len(seen[-1]) < len(PROMPTS)  # rows left and the context followed them
        assert len(cache.layers[0].keys) == len(seen[-1])
    else:
        assert len(seen) == 1


def test_a_per_row_edit_follows_its_rows_after_a_drop():
    """Row-owned weights (a grouped edit) stay with their rows when rows move."""
    from safeedit.lm.rowwise import RowWiseLinear, swap_module

    model, tok = tiny_model("llama"), tiny_tokenizer()
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    name = "model.layers.2.mlp.down_proj"
    base = model.get_submodule(name)
    torch.manual_seed(1)
    weights = torch.stack([base.weight + 0.05 * torch.randn_like(base.weight) for _ in PROMPTS])
    stops = _stop_tokens(model, tok, ids)
    expected = []
    for k, x in enumerate(ids):  # each prompt alone under its own weights
        with swap_module(model, name, RowWiseLinear(base, weights, [k])):
            expected.append(_reference(model, tok, [x], stops)[0])
    assert any((want == tok.pad_token_id).any() for want in expected), "no row stopped early"
    input_ids, attention = left_pad(ids, tok.pad_token_id, "cpu")
    cache = reserved_cache(model, input_ids.shape[1] + NEW)

    @contextmanager
    def rows(running):
        with swap_module(model, name, RowWiseLinear(base, weights, running)):
            yield

    with torch.inference_mode():
        ragged_prefill(model, input_ids, attention, cache, stop=input_ids.shape[1] - 1, tokens=16, rows_context=rows)
    got = greedy_decode(model, input_ids, attention, cache, max_new_tokens=NEW, stop_ids=stops,
                        pad_id=tok.pad_token_id, rows_context=rows, drop_fraction=0.0)
    for row, want in enumerate(expected):
        n = int((want != tok.pad_token_id).sum())
        assert torch.equal(got[row, :n], want[:n])


def test_a_model_whose_generation_config_adds_processors_keeps_transformers_search():
    from safeedit.lm import generate
    from safeedit.lm.generation import generation_config
    from safeedit.lm.greedy import decodes_like_argmax

    model, tok = tiny_model("llama"), tiny_tokenizer()
    assert decodes_like_argmax(model, generation_config(model, tok, NEW))
    model.generation_config.repetition_penalty = 1.3  # as some instruct models ship
    config = generation_config(model, tok, NEW)
    assert not decodes_like_argmax(model, config)
    input_ids, attention = left_pad([tok(PROMPTS[3])["input_ids"]], tok.pad_token_id, "cpu")
    penalised = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
    text = tok.decode(penalised[0, input_ids.shape[1]:], skip_special_tokens=True).strip()
    assert generate(model, tok, PROMPTS[3], max_new_tokens=NEW, chat=False) == text
