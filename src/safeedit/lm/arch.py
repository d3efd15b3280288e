"""Find, from the config alone, where a model keeps its decoder layers and each layer's W_V.

W_V is the paper's name for the FFN's second matrix (the "value" matrix of the key-value view
of FFNs): it maps the MLP's hidden activations back to the residual stream. DINM edits only this
matrix in the toxic layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from safeedit.errors import ConfigError, SelectionError


class UnsupportedArchitecture(ConfigError):
    """The model family is not in the map and no module names were given by hand."""


@dataclass(frozen=True)
class ArchitectureMap:
    """Dotted attribute paths, relative to the CausalLM model object."""

    layers: str  # the ModuleList of decoder layers
    w_v: str  # relative to one decoder layer
    #: GPT-2 stores Conv1D weights as (in, out); everything else as nn.Linear (out, in)
    w_v_transposed: bool = False

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.layers)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.decoder_layers(model))

    def w_v_module(self, model: nn.Module, layer: int) -> nn.Module:
        layers = self.decoder_layers(model)
        if not isinstance(layer, int) or not 0 <= layer < len(layers):
            raise SelectionError(f"layer {layer!r} out of range: this model has layers 0..{len(layers) - 1}")
        return _get(layers[layer], self.w_v)

    def w_v_param_name(self, layer: int) -> str:
        """Name of the W_V weight in ``model.state_dict()`` / ``named_parameters()``."""
        return f"{self.layers}.{layer}.{self.w_v}.weight"

    def w_v_weight(self, model: nn.Module, layer: int) -> torch.nn.Parameter:
        return self.w_v_module(model, layer).weight


_LLAMA_LIKE = ArchitectureMap(layers="model.layers", w_v="mlp.down_proj")

#: model_type (from config.json) -> map. Families that share Llama's module names share its map.
ARCHITECTURES: dict[str, ArchitectureMap] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    # multimodal Gemma 3 checkpoints keep the text decoder one level deeper
    "gemma3": ArchitectureMap(layers="model.language_model.layers", w_v="mlp.down_proj"),
    "gpt2": ArchitectureMap(layers="transformer.h", w_v="mlp.c_proj", w_v_transposed=True),
    "gpt_neox": ArchitectureMap(layers="gpt_neox.layers", w_v="mlp.dense_4h_to_h"),
}


def _get(root: nn.Module, dotted: str):
    obj = root
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise UnsupportedArchitecture(
                f"{type(root).__name__} has no attribute path {dotted!r} (stopped at {part!r})"
            )
        obj = getattr(obj, part)
    return obj


def resolve_architecture(
    model_or_config, layers: str | None = None, w_v: str | None = None
) -> ArchitectureMap:
    """Map for a model (or its config). ``layers``/``w_v`` override the table."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    base = ARCHITECTURES.get(model_type)
    if base is None and not (layers and w_v):
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedArchitecture(
            f"model family {model_type!r} is not in safeedit's architecture map (supported: {supported}). "
            "Pass the module names by hand, e.g. --layers-module model.layers --wv-module mlp.down_proj "
            "(Python: resolve_architecture(model, layers='model.layers', w_v='mlp.down_proj'))."
        )
    if base is None:
        return ArchitectureMap(layers=layers, w_v=w_v)
    return ArchitectureMap(layers=layers or base.layers, w_v=w_v or base.w_v, w_v_transposed=base.w_v_transposed)
