"""Grouped-query attention on the CPU without copying the KV cache for every query head.

Models with fewer key/value heads than query heads (SmolLM2: 3 for 9; Llama-2-70B, Mistral,
Qwen2) need each key/value head shared by a group of query heads. transformers' SDPA path lets
torch do that (``enable_gqa``) only when no attention mask is passed; with a mask, which every
padded batch and every step over a cache has, it copies the keys and values once per query head
(``repeat_kv``) for any query longer than one token. Over a long cache that copy costs more than
the attention: in the post-edit pass of 14 SafeEdit jailbreak prompts (~25 suffix tokens each over
~1,000 cached) on SmolLM2-135M, 60 % of the profiled time of that step was the copy; the step took
1.05 s, and 0.76 s with ``enable_gqa`` (``benchmarks/decode_step.py --query 25 --attention both``
times such steps). torch's CPU kernel takes a mask with ``enable_gqa``, so on the CPU we ask for it.

:func:`use_cpu_gqa_attention` switches a loaded model to :data:`IMPLEMENTATION`, transformers'
SDPA attention in every case but that one (CPU tensors, a mask, a query of several tokens, a
grouped model), where it calls ``scaled_dot_product_attention(..., enable_gqa=True)``. Same
arithmetic, each query head against its own group's keys; results equal up to float summation
order. The name is never written into a saved config, so saved models load anywhere as before.
"""

from __future__ import annotations

import torch.nn.functional as F

#: the attention implementation's registered name
IMPLEMENTATION = "safeedit_cpu_sdpa"


def cpu_gqa_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                 is_causal=None, **kwargs):
    """transformers' SDPA attention, with ``enable_gqa`` instead of ``repeat_kv`` for masked
    multi-token queries on the CPU (see the module docstring)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if (query.device.type != "cpu" or groups <= 1 or attention_mask is None or query.shape[2] == 1
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
            or kwargs.get("output_attentions", False)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # with a mask transformers' path never sets is_causal either: the mask carries the causality
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, is_causal=False, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, cpu_gqa_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)  # the masks SDPA gets


def use_cpu_gqa_attention(model) -> bool:
    """Switch ``model`` from SDPA to :data:`IMPLEMENTATION` if it uses SDPA and groups its
    key/value heads; returns whether it did. Other implementations (eager, flash) are left alone."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    if getattr(config, "_attn_implementation", None) != "sdpa" or not heads or kv_heads >= heads:
        return False
    _register()
    model.set_attn_implementation(IMPLEMENTATION)
    return model.config._attn_implementation == IMPLEMENTATION


__all__ = ["IMPLEMENTATION", "cpu_gqa_sdpa", "use_cpu_gqa_attention"]
