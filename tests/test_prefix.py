"""Prefix reuse: post-edit answers from the unedited prefill below the edit equal plain generation,
and the shared tokens really skip the layers below the edit."""

from contextlib import nullcontext

import pytest
import torch

from safeedit.lm import generate, resolve_architecture
from safeedit.lm.prefix import generate_before_and_after, supports_prefix_reuse
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


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_prefill_in_chunks_gives_the_same_answers(family, monkeypatch):
    """Chunked prefill (``PREFILL_TOKENS``) changes memory, not results: plain generation with
    3-position chunks equals one-pass prefill (gemma2: sliding-window layers left to transformers)."""
    import safeedit.lm.generation as generation

    model, tok = tiny_model(family), tiny_tokenizer()
    pre = prompts()
    gen = dict(max_new_tokens=8, chat=False, batch_size=3)
    whole = generate(model, tok, pre, **gen)
    gen.pop("batch_size")
    assert supports_prefix_reuse(model) == (family == "llama")  # sliding-window layers: no prefix reuse
    if family == "gemma2":
        with pytest.raises(ValueError, match="one full-attention KV cache layer"):
            generate_before_and_after(model, tok, pre, pre, layer=1, edited=lambda rows: nullcontext(), **gen)
    monkeypatch.setattr(generation, "PREFILL_TOKENS", 9)  # batches of 3 rows: 3 positions per step
    assert generation.prefill_chunk(3) < max(len(tok(p)["input_ids"]) for p in pre)
    assert generate(model, tok, pre, batch_size=3, **gen) == whole


def noisy_edit(model, layer, scale=2.0, seed=0):
    """A context manager editing W_V of ``layer`` in place (big enough to change answers), undone after."""
    from contextlib import contextmanager

    w_v = resolve_architecture(model).w_v_weight(model, layer)
    delta = torch.randn(w_v.shape, generator=torch.Generator().manual_seed(seed)) * scale

    @contextmanager
    def edited(_rows=None):
        with torch.no_grad():
            w_v.add_(delta)
        try:
            yield
        finally:
            with torch.no_grad():
                w_v.sub_(delta)
    return edited


@pytest.mark.parametrize("family,layer", [("llama", 1), ("llama", 2), ("qwen2", 2)])
def test_before_and_after_equal_plain_generation(family, layer):
    """One shared prefill and cache per batch give the unedited answers to the pre-edit prompts and the
    edited answers to the post-edit prompts, as two plain generations do; the shared tokens pass layer 0
    once instead of twice. Suffixes of different lengths leave masked columns inside rows."""
    from safeedit.lm.generation import GenerationStats

    model, tok = tiny_model(family), tiny_tokenizer()
    assert supports_prefix_reuse(model)
    pre = prompts()
    post = [p + SUFFIX * (1 + i % 2) for i, p in enumerate(pre)]
    edited = noisy_edit(model, layer)
    gen = dict(max_new_tokens=8, chat=False)
    expected_pre = generate(model, tok, pre, **gen)
    with edited():
        expected_post = generate(model, tok, post, **gen)
    assert expected_post != generate(model, tok, post, **gen)  # the edit changes answers

    counted, handle = count_layer0_tokens(model)
    stats = GenerationStats()
    try:
        got_pre, got_post = generate_before_and_after(model, tok, pre, post, layer=layer, edited=edited,
                                                      batch_tokens=60, stats=stats, **gen)
        seen_shared = counted["n"]
        generate(model, tok, pre, **gen)
        with edited():
            generate(model, tok, post, **gen)
        seen_plain = counted["n"] - seen_shared
    finally:
        handle.remove()
    assert got_pre == expected_pre
    assert got_post == expected_post
    # a pair shares all but the last pre-edit token; one sharing under half its post-edit prompt is plain
    lengths = [(len(tok(a)["input_ids"]), len(tok(b)["input_ids"])) for a, b in zip(pre, post)]
    assert any(a - 1 < 0.5 * b for a, b in lengths)
    shared = sum(a - 1 for a, b in lengths if a - 1 >= 0.5 * b)
    assert stats.reused_tokens == shared
    # layer 0 saw the shared tokens once, not twice (padding layouts differ by a few columns)
    assert seen_plain - seen_shared >= 0.7 * shared, (seen_plain, seen_shared, shared)


@pytest.mark.parametrize("prefill_tokens", [2048, 7])
def test_before_and_after_serves_each_row_its_own_edit_and_shares_little_plainly(prefill_tokens, monkeypatch):
    """Grouped rows (each its own DINM edit), a pair that shares nothing, and prefill in chunks of a
    few positions (both the unedited prefill and the recomputation above the edit)."""
    import safeedit.lm.generation as generation

    monkeypatch.setattr(generation, "PREFILL_TOKENS", prefill_tokens)
    tok, insts = tiny_tokenizer(), ragged_instances()
    model = tiny_model("llama")
    group = DINM(suffix=None, lr=1e-2, steps=3, layer=2).group_edit(model, tok, insts)
    inputs = [list(i.eval_inputs().values()) for i in insts]
    pre = [p for ps in inputs for p in ps]
    post = [p + SUFFIX for p in pre]
    post[1] = "w99 " + post[1]  # not an extension of its pre-edit prompt: the plain path
    owners = [k for k, ps in enumerate(inputs) for _ in ps]
    rows = lambda idx: group.rows([owners[i] for i in idx])  # noqa: E731
    gen = dict(max_new_tokens=6, chat=False)
    got_pre, got_post = generate_before_and_after(model, tok, pre, post, layer=2, edited=rows, batch_tokens=80, **gen)
    assert got_pre == generate(model, tok, pre, **gen)
    assert got_post == generate(model, tok, post, row_context=rows, **gen)
    with pytest.raises(ValueError, match="post-edit prompts"):
        generate_before_and_after(model, tok, pre, post[:-1], layer=2, edited=rows, **gen)
    with pytest.raises(ValueError, match="edit layer"):
        generate_before_and_after(model, tok, pre, post, layer=0, edited=rows, **gen)
