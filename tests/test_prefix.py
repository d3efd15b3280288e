"""Prefix reuse: post-edit answers from the unedited prefill below the edit equal plain generation,
and the shared tokens really skip the layers below the edit."""

import pytest
import torch

from safeedit.lm import generate, resolve_architecture
from safeedit.lm.prefix import generate_capturing_prefix, generate_from_prefix, supports_prefix_reuse
from safeedit.methods import DINM
from tests.conftest import tiny_model, tiny_tokenizer
from tests.test_grouped import ragged_instances

SUFFIX = " w5 w6 w7"


def prompts():
    # ragged lengths, so rows carry different left padding in both calls
    return ["w1 w2 w3 w4 w9 w10 w11", "w3 " * 14 + "w8", "w20 w21", "w30 w31 w32 w33 " * 3]


def count_layer0_tokens(model):
    counted = {"n": 0}

    def hook(_m, args):
        counted["n"] += args[0].shape[0] * args[0].shape[1]

    # layer 0's FFN: a bypassed layer is still *called* (its hooks fire) but computes nothing inside
    return counted, resolve_architecture(model).w_v_module(model, 0).register_forward_pre_hook(hook)


@pytest.mark.parametrize("family,layer", [("llama", 1), ("llama", 2), ("qwen2", 2)])
def test_post_edit_answers_equal_plain_generation(family, layer):
    model, tok = tiny_model(family), tiny_tokenizer()
    assert supports_prefix_reuse(model)
    pre = prompts()
    post = [p + SUFFIX for p in pre]
    gen = dict(max_new_tokens=8, chat=False, batch_size=3)

    answers, states = generate_capturing_prefix(model, tok, pre, layer=layer, **gen)
    assert answers == generate(model, tok, pre, **gen)  # the capturing pass is an ordinary generation
    assert [len(s.ids) for s in states] == [len(tok(p)["input_ids"]) - 1 for p in pre]

    w_v = resolve_architecture(model).w_v_weight(model, layer)
    with torch.no_grad():  # an edit at `layer`, big enough to change the answers
        w_v.add_(torch.randn_like(w_v) * 2.0)
    expected = generate(model, tok, post, **gen)
    assert expected != generate(tiny_model(family), tok, post, **gen)

    counted, handle = count_layer0_tokens(model)
    try:
        reused = generate_from_prefix(model, tok, post, states, **gen)
        seen_with_reuse = counted["n"]
        generate(model, tok, post, **gen)
        seen_plain = counted["n"] - seen_with_reuse
    finally:
        handle.remove()
    assert reused == expected
    # layer 0 never saw the shared prompt tokens again (padding alignment may recompute a few)
    shared = sum(len(s.ids) for s in states)
    assert seen_plain - seen_with_reuse >= 0.7 * shared, (seen_plain, seen_with_reuse, shared)


def test_grouped_rows_reuse_the_unedited_prefix():
    tok, insts = tiny_tokenizer(), ragged_instances()
    model = tiny_model("llama")
    group = DINM(suffix=None, lr=1e-2, steps=3, layer=2).group_edit(model, tok, insts)
    inputs = [list(i.eval_inputs().values()) for i in insts]
    pre = [p for ps in inputs for p in ps]
    post = [p + SUFFIX for p in pre]
    owners = [k for k, ps in enumerate(inputs) for _ in ps]
    gen = dict(max_new_tokens=6, chat=False, batch_size=4)

    _, states = generate_capturing_prefix(model, tok, pre, layer=2, **gen)
    rows = lambda idx: group.rows([owners[i] for i in idx])  # noqa: E731
    assert generate_from_prefix(model, tok, post, states, row_context=rows, **gen) == \
        generate(model, tok, post, row_context=rows, **gen)


def test_rows_that_share_little_take_the_plain_path_and_the_rest_still_reuse():
    from safeedit.lm.generation import GenerationStats

    model, tok = tiny_model("llama"), tiny_tokenizer()
    pre = prompts()
    post = [p + SUFFIX for p in pre]
    post[1] = "w99 " + post[1]  # not an extension of its pre-edit prompt: shares nothing
    gen = dict(max_new_tokens=6, chat=False, batch_size=4)
    _, states = generate_capturing_prefix(model, tok, pre, layer=2, **gen)
    states[2] = None  # no state at all: plain path
    w_v = resolve_architecture(model).w_v_weight(model, 2)
    with torch.no_grad():
        w_v.add_(torch.randn_like(w_v))
    stats = GenerationStats()
    assert generate_from_prefix(model, tok, post, states, stats=stats, **gen) == generate(model, tok, post, **gen)
    # only rows 0 and 3 reuse, and one short row never caps the other's reusable width
    assert stats.reused_tokens >= len(states[0].ids) + len(states[3].ids) - 2


def test_states_must_match_prompts():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    _, states = generate_capturing_prefix(model, tok, prompts()[:2], layer=1, max_new_tokens=2, chat=False)
    with pytest.raises(ValueError, match="2 prefix states"):
        generate_from_prefix(model, tok, prompts()[:3], states, max_new_tokens=2, chat=False)
    with pytest.raises(ValueError, match="edit layer"):
        generate_capturing_prefix(model, tok, prompts(), layer=0, max_new_tokens=2, chat=False)


def test_released_states_shared_by_rows_of_later_batches_stay_usable():
    """``release_states`` frees a state after the last batch that reads it: a prompt repeated across
    batches (DG_onlyQ of several instances) keeps its state until then, and the answers are unchanged."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    pre = prompts()
    _, states = generate_capturing_prefix(model, tok, pre, layer=2, max_new_tokens=6, chat=False)
    w_v = resolve_architecture(model).w_v_weight(model, 2)
    with torch.no_grad():
        w_v.add_(torch.randn_like(w_v))
    order = [0, 1, 2, 3, 0, 3, 1]  # repeats land in different batches of 2
    post = [pre[i] + SUFFIX for i in order]
    shared = [states[i] for i in order]
    gen = dict(max_new_tokens=6, chat=False, batch_size=2)
    expected = generate_from_prefix(model, tok, post, list(shared), **gen)
    assert expected == generate(model, tok, post, **gen)
    assert generate_from_prefix(model, tok, post, shared, release_states=True, **gen) == expected
    # every reused entry released and its tensors freed (prompt 2 is too short to reuse: plain path)
    assert all(s is None for i, s in zip(order, shared) if i != 2)
    assert all(k is None for i in (0, 1, 3) for k in states[i].keys)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_prefill_in_chunks_gives_the_same_answers_and_states(family, monkeypatch):
    """Chunked prefill (``PREFILL_TOKENS``) changes memory, not results: plain generation and the
    capturing pass with 3-position chunks equal one-pass prefill, keys/values and layer inputs included."""
    import safeedit.lm.generation as generation

    model, tok = tiny_model(family), tiny_tokenizer()
    pre = prompts()
    gen = dict(max_new_tokens=8, chat=False, batch_size=3)
    whole = generate(model, tok, pre, **gen)
    states_whole = generate_capturing_prefix(model, tok, pre, layer=2, **gen)[1] if family == "llama" else None
    monkeypatch.setattr(generation, "PREFILL_TOKENS", 9)  # batches of 3 rows: 3 positions per step
    assert generation.prefill_chunk(3) < max(len(tok(p)["input_ids"]) for p in pre)
    assert generate(model, tok, pre, **gen) == whole
    if family == "llama":
        answers, states = generate_capturing_prefix(model, tok, pre, layer=2, **gen)
        assert answers == whole
        for a, b in zip(states, states_whole):
            assert a.ids == b.ids
            assert torch.allclose(a.hidden, b.hidden, atol=1e-5)
            assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.keys + a.values, b.keys + b.values))
