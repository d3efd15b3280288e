"""Grouped-query attention without the per-head KV copy on the CPU (``safeedit.lm.cpu_attention``):
the same logits, gradients and answers as transformers' SDPA path, and no ``repeat_kv``."""

import pytest
import torch

from safeedit.lm import generate
from safeedit.lm.cpu_attention import IMPLEMENTATION, use_cpu_gqa_attention
from safeedit.lm.forward_args import cache_arg
from safeedit.lm.generation import left_pad
from safeedit.lm.kv_cache import reserved_cache
from tests.conftest import tiny_model, tiny_tokenizer

PROMPTS = ["w1 w2", "w3 w4 w5 w6 w7 w8", "w9 " * 14 + "w10"]


def _batch(tok):
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    return left_pad(ids, 0, "cpu")


def _no_repeat_kv(monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa

    def refuse(*_a, **_k):
        raise AssertionError("repeat_kv called: the KV cache was copied per query head")

    monkeypatch.setattr(sdpa, "repeat_kv", refuse)


def test_switch_applies_only_to_sdpa_models_with_grouped_heads():
    model = tiny_model("llama")  # 4 query heads, 2 key/value heads
    assert model.config._attn_implementation == "sdpa"
    assert use_cpu_gqa_attention(model)
    assert model.config._attn_implementation == IMPLEMENTATION
    assert not use_cpu_gqa_attention(tiny_model("gpt2"))  # one key/value head per query head
    eager = tiny_model("llama")
    eager.set_attn_implementation("eager")
    assert not use_cpu_gqa_attention(eager)
    assert eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_masked_multi_token_queries_over_a_cache_match_sdpa(family, monkeypatch):
    tok = tiny_tokenizer()
    reference, switched = tiny_model(family), tiny_model(family)
    assert use_cpu_gqa_attention(switched)
    input_ids, attention = _batch(tok)
    width = input_ids.shape[1]
    logits = []
    for model, guarded in ((reference, False), (switched, True)):
        with monkeypatch.context() as patch:
            if guarded:
                _no_repeat_kv(patch)
            cache = reserved_cache(model, width + 4)
            with torch.inference_mode():  # two chunks: the second attends to the cache, padding masked
                model(input_ids=input_ids[:, :8], attention_mask=attention[:, :8], use_cache=True,
                      **{cache_arg(model): cache})
                out = model(input_ids=input_ids[:, 8:], attention_mask=attention, use_cache=True,
                            **{cache_arg(model): cache})
            logits.append(out.logits)
    real = attention[:, 8:].bool()
    torch.testing.assert_close(logits[1][real], logits[0][real], rtol=1e-5, atol=1e-5)


def test_gradients_match_sdpa(monkeypatch):
    tok = tiny_tokenizer()
    input_ids, attention = _batch(tok)
    grads = []
    for switch in (False, True):
        model = tiny_model("llama")
        with monkeypatch.context() as patch:
            if switch:
                assert use_cpu_gqa_attention(model)
                _no_repeat_kv(patch)
            logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
            logits[attention.bool()].logsumexp(-1).sum().backward()
        grads.append(model.model.layers[1].self_attn.v_proj.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_greedy_answers_unchanged_and_saved_config_keeps_sdpa(tmp_path):
    tok = tiny_tokenizer()
    reference, switched = tiny_model("llama"), tiny_model("llama")
    use_cpu_gqa_attention(switched)
    kwargs = dict(max_new_tokens=6, chat=False, batch_size=3)
    assert generate(switched, tok, PROMPTS, **kwargs) == generate(reference, tok, PROMPTS, **kwargs)
    switched.save_pretrained(tmp_path)
    assert IMPLEMENTATION not in (tmp_path / "config.json").read_text()
