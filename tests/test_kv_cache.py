"""The reserved KV cache holds the same keys/values as transformers' DynamicCache and gives the same answers."""

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from safeedit.lm.kv_cache import ReservedLayer, reserved_cache
from tests.conftest import tiny_model, tiny_tokenizer


def _chunks(seed: int, batch: int = 3, lengths=(5, 1, 1, 4, 1)):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 2, n, 8, generator=g), torch.randn(batch, 2, n, 8, generator=g)) for n in lengths]


@pytest.mark.parametrize("capacity", [0, 6, 12, 40])
def test_updates_return_what_concatenation_returns(capacity):
    reserved, plain = ReservedLayer(capacity), DynamicLayer()
    for k, v in _chunks(0):
        rk, rv = reserved.update(k, v)
        pk, pv = plain.update(k, v)
        assert torch.equal(rk, pk) and torch.equal(rv, pv)
        assert reserved.get_seq_length() == plain.get_seq_length()


def test_writes_go_into_the_reserved_buffer_without_reallocating():
    layer = ReservedLayer(20)
    chunks = _chunks(1)
    layer.update(*chunks[0])
    buffer = layer._key_buffer.data_ptr()
    for k, v in chunks[1:]:
        layer.update(k, v)
    assert layer._key_buffer.data_ptr() == buffer
    assert layer.keys.data_ptr() == buffer and layer.get_seq_length() == 12


def test_crop_and_batch_selection_keep_the_cache_consistent():
    reserved, plain = ReservedLayer(30), DynamicLayer()
    chunks = _chunks(2)
    for k, v in chunks[:3]:
        reserved.update(k, v)
        plain.update(k, v)
    reserved.crop(-2)
    plain.crop(-2)
    index = torch.tensor([2, 0])
    reserved.batch_select_indices(index)
    plain.batch_select_indices(index)
    k, v = chunks[3]
    rk, rv = reserved.update(k[:2], v[:2])
    pk, pv = plain.update(k[:2], v[:2])
    assert torch.equal(rk, pk) and torch.equal(rv, pv)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gpt_neox"])
def test_greedy_answers_equal_transformers_own_cache(family):
    """safeedit.lm.generate (reserved cache) against model.generate with transformers' default cache."""
    from safeedit.lm import generate
    from safeedit.lm.generation import generation_config, left_pad

    tok = tiny_tokenizer()
    model = tiny_model(family)
    prompts = ["w1 w2 w3 w9 w4", "w5", "w7 w8 w9 w10 w11 w12 w13 w14", "w3 w3"]
    ours = generate(model, tok, prompts, max_new_tokens=10, batch_size=4, chat=False)
    encoded = [tok(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    ids, attention = left_pad([encoded[i] for i in order], tok.pad_token_id, "cpu")
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=attention,
                             generation_config=generation_config(model, tok, 10))
    theirs = {i: tok.decode(out[row, ids.shape[1]:], skip_special_tokens=True).strip() for row, i in enumerate(order)}
    assert ours == [theirs[i] for i in range(len(prompts))]
    assert any(ours)


def test_sliding_window_layers_are_left_to_transformers():
    model = tiny_model("gemma2")
    cache = reserved_cache(model, 16)
    kinds = {type(layer).__name__ for layer in cache.layers}
    assert "ReservedLayer" in kinds and kinds - {"ReservedLayer"}, kinds


def test_keep_cuts_back_in_place_and_later_updates_write_after():
    layer = ReservedLayer(capacity=10)
    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer.update(k, v)
    buffer = layer.keys.data_ptr()
    layer.keep(3)
    assert layer.get_seq_length() == 3
    k2, v2 = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4)
    keys, values = layer.update(k2, v2)
    assert torch.equal(keys, torch.cat([k[:, :, :3], k2], dim=2))
    assert torch.equal(values, torch.cat([v[:, :, :3], v2], dim=2))
    assert keys.data_ptr() == buffer  # the same reserved room, no new allocation
    layer.keep(0)
    assert layer.get_seq_length() == 0
    assert torch.equal(layer.update(k2, v2)[0], k2)
    with pytest.raises(ValueError, match="cannot keep 5"):
        layer.keep(5)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_cache_reserves_all_its_layers_in_one_block(family):
    """The reserved layers' buffers are slices of one allocation (freed whole with the cache); a
    layer that outgrows its capacity gets its own buffer and keeps its numbers."""
    model, tok = tiny_model(family), tiny_tokenizer()
    cache = reserved_cache(model, 12)
    ids = tok(["w1 w2 w3 w4 w5"], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    reserved = [layer for layer in cache.layers if isinstance(layer, ReservedLayer)]
    storages = {layer.keys.untyped_storage().data_ptr() for layer in reserved}
    storages |= {layer.values.untyped_storage().data_ptr() for layer in reserved}
    assert len(storages) == 1
    first = reserved[0].keys.clone()
    reserved[0].update(torch.randn(1, first.shape[1], 20, first.shape[-1]), torch.randn(1, first.shape[1], 20, first.shape[-1]))
    assert reserved[0].keys.untyped_storage().data_ptr() not in storages  # outgrown: a buffer of its own
    assert torch.equal(reserved[0].keys[:, :, :first.shape[2]], first)
