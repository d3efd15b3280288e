"""A safety judge that reads a decoder's hidden states: the first layers of a chat model, averaged
over the response's tokens, and a small head (linear, or one hidden layer).

Why: the embedded chat model's middle layers already separate harmful compliance from refusals,
noise and benign answers better than a fine-tuned 22M-parameter sentence encoder. A logistic
regression on the mean hidden state after layer 18 of SmolLM2-135M-Instruct, trained on the
default recipe's rows, scored 0.841 on our labelled validation set and 0.795 on the held-out pool
against 0.811 / 0.780 for the fine-tuned all-MiniLM-L6-v2 (``benchmarks/judge_probe.py``). The
backbone stays frozen, so a judge is the backbone's first layers (a deterministic function of a
model every safeedit install has) plus a head of under 1 MB: small enough to ship with the code
(:mod:`safeedit.judge.shipped`).

:class:`PooledJudgeForSequenceClassification` is a ``PreTrainedModel`` registered with transformers' Auto classes
under ``model_type = "safeedit-pooled-judge"``, so a saved judge folder loads with
``AutoModelForSequenceClassification.from_pretrained`` (and :meth:`SafetyJudge.from_pretrained`)
once :mod:`safeedit.judge` is imported. Its ``forward`` returns the two logits (0 safe, 1 unsafe).

The head (``score``) is either a linear layer (``head_hidden = 0``: state ``score.weight``,
``score.bias``) or ``Linear -> GELU -> Linear`` with ``head_hidden`` units (``score.0.*``,
``score.2.*``). A head is passed around as that state dict (``{"score.weight": ..., ...}``), the
form ``head.safetensors`` stores.
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

    def __init__(self, backbone: dict | None = None, pool_layer: int = 18, pooling: str = "mean",
                 head_hidden: int = 0, **kwargs):
        kwargs.setdefault("num_labels", 2)
        super().__init__(**kwargs)
        self.backbone = dict(backbone or {})
        self.pool_layer = int(pool_layer)
        if int(head_hidden) < 0:
            raise ConfigError(f"head_hidden must be >= 0 (0: a linear head), got {head_hidden}")
        #: units of the head's hidden layer; 0 = a linear head (folders written before it existed)
        self.head_hidden = int(head_hidden)
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


def make_head(hidden_size: int, head_hidden: int, num_labels: int = 2) -> nn.Module:
    """The judge's ``score`` module: linear when ``head_hidden`` is 0, else one GELU hidden layer."""
    if head_hidden == 0:
        return nn.Linear(hidden_size, num_labels)
    return nn.Sequential(nn.Linear(hidden_size, head_hidden), nn.GELU(), nn.Linear(head_hidden, num_labels))


def head_hidden_of(head: dict[str, torch.Tensor]) -> int:
    """``head_hidden`` of a head state dict (see the module docstring): 0 for a linear head."""
    if "score.weight" in head:
        return 0
    if "score.0.weight" not in head:
        raise ConfigError(f"not a judge head: expected score.weight or score.0.weight, got {sorted(head)[:4]}")
    return int(head["score.0.weight"].shape[0])


def set_head(judge: "PooledJudgeForSequenceClassification", head: dict[str, torch.Tensor]) -> None:
    """Give ``judge`` the head ``head`` (its ``score`` module rebuilt to the head's shape, the config's
    ``head_hidden`` with it)."""
    width = head_hidden_of(head)
    module = make_head(judge.backbone.config.hidden_size, width, judge.config.num_labels)
    module.load_state_dict({k[len("score."):]: v.detach().to(torch.float32).clone() for k, v in head.items()})
    judge.score = module.train(judge.training)
    judge.config.head_hidden = width


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, hidden]: ``hidden`` [batch, seq, hidden] averaged over the positions where ``mask`` is 1."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class PooledJudgeForSequenceClassification(PreTrainedModel):
    """The backbone's first ``pool_layer`` decoder layers, a masked mean over the tokens, a small head."""

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
        self.score = make_head(self.backbone.config.hidden_size, getattr(config, "head_hidden", 0), config.num_labels)
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
        logits = self.score(pooled.to(next(self.score.parameters()).dtype))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(MODEL_TYPE, PooledJudgeConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PooledJudgeConfig, PooledJudgeForSequenceClassification, exist_ok=True)


def from_decoder(decoder: nn.Module, pool_layer: int, head: dict[str, torch.Tensor],
                 id2label: dict[int, str]) -> PooledJudgeForSequenceClassification:
    """A pooled judge made of a loaded causal LM's first ``pool_layer`` layers (copied; ``decoder`` is
    left as it was) and ``head``, the ``score`` module's state dict (linear or one hidden layer)."""
    base = getattr(decoder, "model", decoder)
    if not hasattr(base, "layers") or not hasattr(base, "embed_tokens"):
        raise ConfigError(f"{type(decoder).__name__} has no .model.layers / .embed_tokens (Llama-style decoder expected)")
    fields = decoder.config.to_dict()
    fields.pop("architectures", None)
    config = PooledJudgeConfig(backbone=fields, pool_layer=pool_layer, head_hidden=head_hidden_of(head),
                               id2label=dict(id2label), label2id={v: k for k, v in id2label.items()})
    hidden = decoder.config.hidden_size
    expected = {f"score.{k}": tuple(v.shape) for k, v in
                make_head(hidden, config.head_hidden, config.num_labels).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in head.items()}
    if got != expected:
        raise ConfigError(f"head shapes {got} do not fit a {hidden}-wide backbone (expected {expected})")
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
    for name, tensor in head.items():
        state[name] = tensor.detach().to(torch.float32).clone()
    judge.load_state_dict(state, strict=False, assign=True)
    missing = [n for n, p in judge.named_parameters() if p.is_meta]
    if missing:
        raise ConfigError(f"the decoder lacks weights the judge needs: {missing[:3]}")
    # buffers (rotary inverse frequencies) are not in a state dict: rebuild them on the CPU
    judge.backbone.rotary_emb = copy.deepcopy(base.rotary_emb) if hasattr(base, "rotary_emb") else judge.backbone.rotary_emb
    return judge.eval()


__all__ = ["MODEL_TYPE", "PooledJudgeConfig", "PooledJudgeForSequenceClassification", "from_decoder", "head_hidden_of",
           "make_head", "masked_mean", "set_head"]
