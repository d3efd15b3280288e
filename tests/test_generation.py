import warnings

import pytest
import torch

from safeedit.lm import generate
from safeedit.lm.chat import format_prompt


@pytest.mark.slow
def test_batched_greedy_equals_one_by_one(embedded, sample):
    model, tok = embedded
    prompts = [sample[i].question for i in range(4)] + ["What is 2+2?", sample[0].adversarial_prompt]
    batched = generate(model, tok, prompts, max_new_tokens=24, batch_size=6)
    single = [generate(model, tok, p, max_new_tokens=24) for p in prompts]
    assert batched == single
    assert all(isinstance(a, str) and a for a in batched)
    assert all("<|im_end|>" not in a and "<|im_start|>" not in a for a in batched)


@pytest.mark.slow
def test_raw_mode_and_chat_mode_differ(embedded):
    model, tok = embedded
    assert format_prompt(tok, "Hi", chat=False) == "Hi"
    assert "<|im_start|>user" in format_prompt(tok, "Hi", chat=True)


@pytest.mark.slow
def test_long_prompt_is_truncated_from_the_left_and_reported(embedded, monkeypatch):
    model, tok = embedded
    monkeypatch.setattr(model.config, "max_position_embeddings", 64)
    long_prompt = "blah " * 200 + "What is the capital of France?"
    from safeedit.lm.generation import GenerationStats

    stats = GenerationStats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = generate(model, tok, [long_prompt, "Hi"], max_new_tokens=8, stats=stats)
    assert stats.truncated == [0]
    assert any("cut from the left" in str(w.message) for w in caught)
    assert len(out) == 2


@pytest.mark.slow
def test_sampling_is_reproducible_with_a_seed(embedded):
    model, tok = embedded
    a = generate(model, tok, ["Tell me a story."], max_new_tokens=12, do_sample=True, seed=3)
    b = generate(model, tok, ["Tell me a story."], max_new_tokens=12, do_sample=True, seed=3)
    assert a == b


def test_tiny_model_batched_equals_single():
    from tests.conftest import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model("llama")
    prompts = ["w1 w2 w3", "w5", "w7 w8 w9 w10 w11 w12", "w3 w3"]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=4, chat=False)
    single = [generate(model, tok, p, max_new_tokens=6, chat=False) for p in prompts]
    assert batched == single
    assert not torch.is_inference_mode_enabled()


def test_token_budget_batches_sort_by_length_and_bound_the_padded_size():
    from safeedit.lm.generation import token_budget_batches

    lengths = [900, 40, 950, 120, 35, 1000, 400]
    batches = token_budget_batches(lengths, budget=2200, extra=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)
    for b in batches:
        assert len(b) == 1 or len(b) * (max(lengths[i] for i in b) + 64) <= 2200
    # the short rows share one batch, the 400-token row pairs with a 900-token one (fewer slots than
    # padding it beside the short rows, in the same three batches), the long ones go two at a time
    assert batches == [[4, 1, 3], [6, 0], [2, 5]]
    assert token_budget_batches([5000], budget=100) == [[0]]  # too long for the budget: a batch of its own
    assert token_budget_batches([], budget=100) == []


def test_token_budget_batches_use_fewest_batches_then_fewest_padded_slots():
    from safeedit.lm.generation import token_budget_batches

    # filling the first batch greedily would put the two 100-token rows with the short ones (8 rows
    # x 100 = 800 slots, then 3 x 200): 1,400 slots; the same two batches can hold 60 + 1,000
    lengths = [10] * 6 + [100] * 2 + [200] * 3
    batches = token_budget_batches(lengths, budget=1000)
    assert batches == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert slots == 1060
    # no fewer batches exist within the budget, and every batch stays within it
    assert len(token_budget_batches(lengths, budget=10**6)) == 1
    for budget in (150, 400, 999, 2200):
        got = token_budget_batches(lengths, budget=budget)
        assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget for b in got)
