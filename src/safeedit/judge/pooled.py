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

A judge with ``prompt_tokens > 0`` reads the request too: its input is ``prompt_open`` + the prompt's
last ``prompt_tokens`` tokens + ``prompt_close`` + the response (the chat model's own turn format by
default), and it still averages over the response's tokens only, which now carry what the request
asked (:func:`encode_prompted`). Why: the misses of the response-only judge are mostly weak
compliance whose harm only the request shows (a list of landmarks asked for as places to rob).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from safeedit.errors import ConfigError

MODEL_TYPE = "safeedit-pooled-judge"
#: the default backbone's (SmolLM2's ChatML) user turn around the prompt, and the assistant turn's start
CHATML_OPEN = "<|im_start|>user\n"
CHATML_CLOSE = "<|im_end|>\n<|im_start|>assistant\n"


class PooledJudgeConfig(PretrainedConfig):
    """``backbone``: the decoder's config as a dict (``model_type`` included); ``pool_layer``: how many of
    its decoder layers run (the pooled state is that layer's output, before any final norm);
    ``prompt_tokens``: how many of the prompt's last tokens it reads before the response (0: the
    response alone), between ``prompt_open`` and ``prompt_close``."""

    model_type = MODEL_TYPE

    def __init__(self, backbone: dict | None = None, pool_layer: int = 18, pooling: str = "mean",
                 head_hidden: int = 0, prompt_tokens: int = 0, prompt_open: str = CHATML_OPEN,
                 prompt_close: str = CHATML_CLOSE, **kwargs):
        kwargs.setdefault("num_labels", 2)
        super().__init__(**kwargs)
        self.backbone = dict(backbone or {})
        self.pool_layer = int(pool_layer)
        if int(head_hidden) < 0:
            raise ConfigError(f"head_hidden must be >= 0 (0: a linear head), got {head_hidden}")
        #: units of the head's hidden layer; 0 = a linear head (folders written before it existed)
        self.head_hidden = int(head_hidden)
        if int(prompt_tokens) < 0:
            raise ConfigError(f"prompt_tokens must be >= 0 (0: the response alone), got {prompt_tokens}")
        self.prompt_tokens = int(prompt_tokens)
        self.prompt_open = str(prompt_open)
        self.prompt_close = str(prompt_close)
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

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, hidden]: the mean of the last run layer's output over each row's real tokens, or over
        those where ``token_type_ids`` is 1 (the response, after a prompt: :func:`encode_prompted`).

        Positions count real tokens only, so left and right padding give the same numbers."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.to(torch.long)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                               use_cache=False).last_hidden_state
        if token_type_ids is not None:
            mask = mask * token_type_ids.to(torch.long)
        return masked_mean(hidden, mask)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                **kwargs) -> SequenceClassifierOutput:
        if self.config.prompt_tokens and token_type_ids is None:
            raise ConfigError("this pooled judge reads the prompt: encode its inputs with encode_prompted, "
                              "which marks the response's tokens in token_type_ids")
        pooled = self.pooled(input_ids, attention_mask, token_type_ids if self.config.prompt_tokens else None)
        logits = self.score(pooled.to(next(self.score.parameters()).dtype))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(MODEL_TYPE, PooledJudgeConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PooledJudgeConfig, PooledJudgeForSequenceClassification, exist_ok=True)


def encode_prompted(tokenizer, config: PooledJudgeConfig, responses: list[str], prompts: list[str],
                    max_length: int) -> dict[str, torch.Tensor]:
    """One right-padded batch for a prompt-reading judge: ``prompt_open`` + the prompt's last
    ``config.prompt_tokens`` tokens + ``prompt_close`` + the response's first ``max_length`` tokens;
    ``token_type_ids`` is 1 on the response's tokens (the pooled ones), 0 elsewhere.

    The prompt is cut from the left because requests, jailbreak templates included, mostly end with
    what they ask; the response is cut as the response-only judge cuts it."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts for {len(responses)} responses")
    open_ids = tokenizer(config.prompt_open, add_special_tokens=False).input_ids
    close_ids = tokenizer(config.prompt_close, add_special_tokens=False).input_ids
    rows = []
    for prompt, response in zip(prompts, responses):
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids[-config.prompt_tokens:]
        response_ids = tokenizer(response, add_special_tokens=False).input_ids[:max_length]
        if not response_ids:  # an empty response still gets one pooled token
            response_ids = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
        head = open_ids + prompt_ids + close_ids
        rows.append((head + response_ids, len(head)))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
        token_type_ids[i, start:len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def from_decoder(decoder: nn.Module, pool_layer: int, head: dict[str, torch.Tensor],
                 id2label: dict[int, str], prompt_tokens: int = 0, prompt_open: str = CHATML_OPEN,
                 prompt_close: str = CHATML_CLOSE) -> PooledJudgeForSequenceClassification:
    """A pooled judge made of a loaded causal LM's first ``pool_layer`` layers (copied; ``decoder`` is
    left as it was) and ``head``, the ``score`` module's state dict (linear or one hidden layer);
    ``prompt_tokens`` > 0 makes it read that many of the prompt's last tokens (see the module doc)."""
    base = getattr(decoder, "model", decoder)
    if not hasattr(base, "layers") or not hasattr(base, "embed_tokens"):
        raise ConfigError(f"{type(decoder).__name__} has no .model.layers / .embed_tokens (Llama-style decoder expected)")
    fields = decoder.config.to_dict()
    fields.pop("architectures", None)
    config = PooledJudgeConfig(backbone=fields, pool_layer=pool_layer, head_hidden=head_hidden_of(head),
                               prompt_tokens=prompt_tokens, prompt_open=prompt_open, prompt_close=prompt_close,
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


__all__ = ["CHATML_CLOSE", "CHATML_OPEN", "MODEL_TYPE", "PooledJudgeConfig", "PooledJudgeForSequenceClassification",
           "encode_prompted", "from_decoder", "head_hidden_of",
           "make_head", "masked_mean", "set_head"]
