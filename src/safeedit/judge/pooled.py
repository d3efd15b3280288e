"""A safety judge that reads a decoder's hidden states: the first layers of a chat model, averaged
over the response's tokens, and a linear head.

Why: the embedded chat model's middle layers already separate harmful compliance from refusals,
noise and benign answers better than a fine-tuned 22M-parameter sentence encoder. A logistic
regression on the mean hidden state after layer 18 of SmolLM2-135M-Instruct, trained on the
default recipe's rows, scored 0.841 on our labelled validation set and 0.795 on the held-out pool
against 0.811 / 0.780 for the fine-tuned all-MiniLM-L6-v2 (``benchmarks/judge_probe.py``). The
backbone stays frozen, so a judge is the backbone's first layers (a deterministic function of a
model every safeedit install has) plus a 2 x hidden head: small enough to ship with the code
(:mod:`safeedit.judge.shipped`).

:class:`PooledJudgeForSequenceClassification` is a ``PreTrainedModel`` registered with transformers' Auto classes
under ``model_type = "safeedit-pooled-judge"``, so a saved judge folder loads with
``AutoModelForSequenceClassification.from_pretrained`` (and :meth:`SafetyJudge.from_pretrained`)
once :mod:`safeedit.judge` is imported. Its ``forward`` returns the two logits (0 safe, 1 unsafe).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from safeedit.errors import ConfigError

MODEL_TYPE = "safeedit-pooled-judge"


class PooledJudgeConfig(PretrainedConfig):
    """``backbone``: the decoder's config as a dict (``model_type`` included); ``pool_layer``: how many of
    its decoder layers run (the pooled state is that layer's output, before any final norm)."""

    model_type = MODEL_TYPE

    def __init__(self, backbone: dict | None = None, pool_layer: int = 18, pooling: str = "mean", **kwargs):
        kwargs.setdefault("num_labels", 2)
        super().__init__(**kwargs)
        self.backbone = dict(backbone or {})
        self.pool_layer = int(pool_layer)
        if pooling != "mean":
            raise ConfigError(f"pooling must be 'mean', got {pooling!r}")
        self.pooling = pooling

    def backbone_config(self) -> PretrainedConfig:
        if "model_type" not in self.backbone:
            raise ConfigError("a pooled judge config needs backbone.model_type")
        fields = dict(self.backbone)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        if not 0 < self.pool_layer <= config.num_hidden_layers:
            raise ConfigError(f"pool_layer must be in 1..{config.num_hidden_layers}, got {self.pool_layer}")
        config.num_hidden_layers = self.pool_layer
        return config


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, hidden]: ``hidden`` [batch, seq, hidden] averaged over the positions where ``mask`` is 1."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class PooledJudgeForSequenceClassification(PreTrainedModel):
    """The backbone's first ``pool_layer`` decoder layers, a masked mean over the tokens, a linear head."""

    config_class = PooledJudgeConfig
    base_model_prefix = "backbone"
    _no_split_modules: list[str] = []

    def __init__(self, config: PooledJudgeConfig):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.backbone_config())
        if not hasattr(self.backbone, "layers") or not hasattr(self.backbone, "norm"):
            raise ConfigError(f"{type(self.backbone).__name__} is not a decoder with .layers and .norm "
                              f"(Llama-style); a pooled judge cannot read its layer outputs")
        # the pooled state is the last run layer's output as the full model's residual stream carries
        # it, not the final norm's output (which the full model applies after its last layer only)
        self.backbone.norm = nn.Identity()
        self.score = nn.Linear(self.backbone.config.hidden_size, config.num_labels)
        self.post_init()

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, hidden]: the mean of the last run layer's output over each row's real tokens.

        Positions count real tokens only, so left and right padding give the same numbers."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.to(torch.long)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                               use_cache=False).last_hidden_state
        return masked_mean(hidden, mask)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        pooled = self.pooled(input_ids, attention_mask)
        logits = self.score(pooled.to(self.score.weight.dtype))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(MODEL_TYPE, PooledJudgeConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PooledJudgeConfig, PooledJudgeForSequenceClassification, exist_ok=True)


def from_decoder(decoder: nn.Module, pool_layer: int, weight: torch.Tensor, bias: torch.Tensor,
                 id2label: dict[int, str]) -> PooledJudgeForSequenceClassification:
    """A pooled judge made of a loaded causal LM's first ``pool_layer`` layers (copied; ``decoder`` is
    left as it was) and the head ``weight`` [2, hidden], ``bias`` [2]."""
    base = getattr(decoder, "model", decoder)
    if not hasattr(base, "layers") or not hasattr(base, "embed_tokens"):
        raise ConfigError(f"{type(decoder).__name__} has no .model.layers / .embed_tokens (Llama-style decoder expected)")
    fields = decoder.config.to_dict()
    fields.pop("architectures", None)
    config = PooledJudgeConfig(backbone=fields, pool_layer=pool_layer, id2label=dict(id2label),
                               label2id={v: k for k, v in id2label.items()})
    hidden = decoder.config.hidden_size
    if tuple(weight.shape) != (config.num_labels, hidden) or tuple(bias.shape) != (config.num_labels,):
        raise ConfigError(f"head shapes {tuple(weight.shape)} / {tuple(bias.shape)} do not fit a {hidden}-wide backbone")
    with torch.device("meta"):
        judge = PooledJudgeForSequenceClassification(config)
    state = {}
    for name, tensor in base.state_dict().items():
        if name.startswith("layers."):
            if int(name.split(".")[1]) >= pool_layer:
                continue
        elif name == "norm.weight" or name.startswith("rotary_emb."):
            continue
        state[f"backbone.{name}"] = tensor.detach().clone()
    state["score.weight"] = weight.detach().to(torch.float32).clone()
    state["score.bias"] = bias.detach().to(torch.float32).clone()
    judge.load_state_dict(state, strict=False, assign=True)
    missing = [n for n, p in judge.named_parameters() if p.is_meta]
    if missing:
        raise ConfigError(f"the decoder lacks weights the judge needs: {missing[:3]}")
    # buffers (rotary inverse frequencies) are not in a state dict: rebuild them on the CPU
    judge.backbone.rotary_emb = copy.deepcopy(base.rotary_emb) if hasattr(base, "rotary_emb") else judge.backbone.rotary_emb
    return judge.eval()


__all__ = ["MODEL_TYPE", "PooledJudgeConfig", "PooledJudgeForSequenceClassification", "from_decoder", "masked_mean"]
