"""Keyword names of a causal LM's ``forward`` that changed across transformers versions.

Two arguments every fast path here passes by name: how many trailing positions get logits
(``logits_to_keep``, formerly ``num_logits_to_keep``; absent in old models) and the KV cache
(``cache``, formerly ``past_key_values``).
"""

from __future__ import annotations

import inspect


def _params(model):
    return inspect.signature(model.forward).parameters


def logits_to_keep_arg(model) -> str | None:
    """The name of the 'compute logits only for the last n positions' argument, or None."""
    params = _params(model)
    return next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)


def keep_last_logits(model, n: int = 1) -> dict:
    """``{name: n}`` to compute logits for the last ``n`` positions only ({} when unsupported)."""
    name = logits_to_keep_arg(model)
    return {name: n} if name else {}


def cache_arg(model) -> str:
    """The name the KV cache is passed under."""
    return "cache" if "cache" in _params(model) else "past_key_values"


__all__ = ["cache_arg", "keep_last_logits", "logits_to_keep_arg"]
