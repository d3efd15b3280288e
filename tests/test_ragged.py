"""Prefill that skips padding (``safeedit.lm.ragged``): the same cache and answers as a full prefill,
fewer positions computed."""

import pytest
import torch

from safeedit.lm import generate
from safeedit.lm.forward_args import cache_arg
from safeedit.lm.generation import left_pad
from safeedit.lm.kv_cache import reserved_cache
from safeedit.lm.ragged import first_real_columns, positions, prefill_spans, ragged_prefill
from tests.conftest import tiny_model, tiny_tokenizer
from tests.test_prefix import count_layer0_tokens

# lengths far apart, as an instance's five inputs are (a ~40-token question beside ~1,000-token jailbreaks)
PROMPTS = ["w1 w2", "w3 w4 w5", "w6 " * 12 + "w7", "w8 w9 " * 15 + "w10"]


def test_spans_run_only_rows_with_a_real_token_and_fit_the_token_budget():
    first = [30, 20, 5, 0]  # rows sorted shortest first, left padded to 40 columns
    spans = prefill_spans(first, stop=40, tokens=12)
    assert spans[0][0] == 0 and spans[-1][1] == 40
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no column twice
    for lo, hi, k in spans:
        assert all(f >= hi for f in first[:k])  # a skipped row has no real token before the chunk's end
        assert first[k] < hi or k == len(first) - 1
        assert (len(first) - k) * (hi - lo) <= 12 or hi - lo == 1
    assert spans[0][2] >= 2  # the short rows wait while the longest runs its first columns
    computed = sum((len(first) - k) * (hi - lo) for lo, hi, k in spans)
    assert computed <= 1.1 * sum(40 - f for f in first) < 40 * len(first)  # close to the 105 real of 160
    # rows out of order: a row that has no token yet but sits after a running row still runs
    lo, hi, k = prefill_spans([0, 30], stop=40, tokens=100)[0]
    assert k == 0


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_ragged_prefill_fills_the_cache_a_full_prefill_fills(family):
    model, tok = tiny_model(family), tiny_tokenizer()
    ids = [tok(p)["input_ids"] for p in sorted(PROMPTS, key=len)]
    input_ids, attention = left_pad(ids, 0, "cpu")
    width = input_ids.shape[1]
    full, ragged = reserved_cache(model, width + 4), reserved_cache(model, width + 4)
    with torch.inference_mode():
        model(input_ids=input_ids, attention_mask=attention, position_ids=positions(attention), use_cache=True,
              **{cache_arg(model): full})
        ragged_prefill(model, input_ids, attention, ragged, stop=width, tokens=8)
    assert ragged.get_seq_length() == width
    first = first_real_columns(attention)
    for a, b in zip(full.layers, ragged.layers):
        for row, f in enumerate(first):  # equal over a row's real columns; what lies before is never read
            torch.testing.assert_close(b.keys[row, :, f:], a.keys[row, :, f:], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(b.values[row, :, f:], a.values[row, :, f:], rtol=1e-5, atol=1e-5)
        assert torch.isfinite(b.keys).all() and torch.isfinite(b.values).all()


def test_generate_skips_padding_and_answers_as_one_prompt_at_a_time(monkeypatch):
    import safeedit.lm.generation as generation

    monkeypatch.setattr(generation, "PREFILL_TOKENS", 16)  # several chunks for these short prompts
    model, tok = tiny_model("llama"), tiny_tokenizer()
    single = [generate(model, tok, p, max_new_tokens=6, chat=False) for p in PROMPTS]
    counted, handle = count_layer0_tokens(model)
    try:
        batched = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=4, chat=False)
    finally:
        handle.remove()
    assert batched == single
    lengths = [len(tok(p)["input_ids"]) for p in PROMPTS]
    padded = len(PROMPTS) * (max(lengths) - 1) + len(PROMPTS) * 6  # a full prefill, then one row-token a step
    assert counted["n"] < padded - 0.3 * len(PROMPTS) * max(lengths), (counted["n"], padded)
