import time

import pytest
import torch

from safeedit.lm import ModelLoadError, load_model, resolve_model_source
from safeedit.lm import loading
from tests.conftest import tiny_model, tiny_tokenizer


def test_unknown_alias_lists_choices():
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        resolve_model_source("not-a-model")


def test_missing_path_and_non_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_source(str(tmp_path / "missing" / "x.gguf"))
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_model_source(str(tmp_path))


def test_hub_id_is_passed_through_untouched():
    source = resolve_model_source("zjunlp/some-model")
    assert source.kind == "hub" and source.location == "zjunlp/some-model"


def test_local_folder_loads_with_left_padding(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    tok = tiny_tokenizer()
    tok.pad_token = None  # load_model must supply one
    tok.save_pretrained(tmp_path)
    loaded, tokenizer = load_model(str(tmp_path), dtype="float32", device="cpu")
    assert tokenizer.pad_token == "</s>" and tokenizer.padding_side == "left"
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.slow
def test_embedded_alias_converts_once(embedded, monkeypatch):
    model, tokenizer = embedded
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None

    def refuse(*_):
        raise AssertionError("second load converted the GGUF again")

    monkeypatch.setattr(loading, "_convert_gguf", refuse)
    start = time.perf_counter()
    again, _ = load_model("smollm2-135m", dtype="float32", device="cpu")
    assert time.perf_counter() - start < 30
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
