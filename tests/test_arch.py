import pytest
import torch

from safeedit.lm import UnsupportedArchitecture, resolve_architecture
from tests.conftest import tiny_config, tiny_model

FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_maps_layers_and_w_v_from_config(family):
    model = tiny_model(family)
    arch = resolve_architecture(model.config)  # from the config alone
    assert arch.num_layers(model) == 3
    for layer in range(3):
        weight = arch.w_v_weight(model, layer)
        # W_V maps the MLP's hidden width back to the residual width
        hidden = model.config.get_text_config().hidden_size
        out_dim = weight.shape[1] if arch.w_v_transposed else weight.shape[0]
        assert out_dim == hidden
        named = dict(model.named_parameters())
        assert named[arch.w_v_param_name(layer)] is weight


def test_w_v_feeds_the_residual_stream():
    """Zeroing W_V of a layer changes the output: it really is on the forward path."""
    model = tiny_model("llama")
    arch = resolve_architecture(model)
    ids = torch.tensor([[1, 2, 3, 4]])
    before = model(ids).logits
    with torch.no_grad():
        arch.w_v_weight(model, 1).zero_()
    assert not torch.allclose(before, model(ids).logits)


def test_unknown_family_lists_supported_and_manual_override():
    class Config:
        model_type = "martian"

    with pytest.raises(UnsupportedArchitecture) as err:
        resolve_architecture(Config())
    assert "llama" in str(err.value) and "--wv-module" in str(err.value)
    arch = resolve_architecture(Config(), layers="model.layers", w_v="mlp.down_proj")
    assert arch.w_v == "mlp.down_proj"


def test_layer_out_of_range_is_a_clear_error():
    model = tiny_model("llama")
    arch = resolve_architecture(model)
    with pytest.raises(IndexError, match="0..2"):
        arch.w_v_module(model, 3)
