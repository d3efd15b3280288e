"""Generators: one small interface over a local Hugging Face model and an OpenAI-compatible endpoint.

A generator turns a list of user prompts (plus an optional system prompt) into a list of
:class:`Generation` results in the same order. ``finish_reason`` is ``"length"`` when the answer
stopped at ``max_new_tokens`` (so it may be cut off), else ``"stop"``.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from safeedit.errors import ConfigError
from safeedit.chatapi import RETRY_STATUS, ChatClient, HTTPError, RateLimiter  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str | None = None


@runtime_checkable
class Generator(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """What to record in the manifest (never secrets)."""

    def generate(self, prompts: list[str], *, system: str | None = None, max_new_tokens: int = 128,
                 temperature: float = 0.0, seed: int | None = None) -> list[Generation]:
        """One answer per prompt, in order."""


class LocalHFGenerator:
    """A causal LM loaded with :func:`safeedit.lm.load_model` (hub id, folder, .gguf or alias)."""

    def __init__(self, model: str, dtype: str = "auto", device: str | None = None, batch_size: int = 8,
                 chat: bool | None = None, trust_remote_code: bool = False, loaded=None):
        self.name = model
        self.dtype, self.device, self.batch_size, self.chat = dtype, device, batch_size, chat
        self.trust_remote_code = trust_remote_code
        self._loaded = loaded  # (model, tokenizer) when the caller already has them

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "model": self.name, "dtype": self.dtype, "batch_size": self.batch_size,
                "chat": self.chat}

    def _model(self):
        if self._loaded is None:
            from safeedit.lm import load_model

            self._loaded = load_model(self.name, dtype=self.dtype, device=self.device,
                                      trust_remote_code=self.trust_remote_code)
        return self._loaded

    def generate(self, prompts, *, system=None, max_new_tokens=128, temperature=0.0, seed=None):
        from safeedit.lm import generate

        if not prompts:
            return []
        model, tokenizer = self._model()
        texts = generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, chat=self.chat,
                         batch_size=self.batch_size, do_sample=temperature > 0,
                         temperature=temperature if temperature > 0 else 1.0, seed=seed, system=system)
        out = []
        for text in texts:
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            out.append(Generation(text, "length" if n >= max_new_tokens - 1 else "stop"))
        return out


class OpenAIChatGenerator(ChatClient):
    """Chat completions over HTTP (OpenAI, vLLM, llama.cpp server, ... anything OpenAI-compatible).

    The request, key, retry and rate-limit handling is :class:`safeedit.chatapi.ChatClient`'s:
    ``base_url`` is the API root, e.g. ``https://api.openai.com/v1``; the key comes from the
    environment variable ``api_key_env`` (no Authorization header when it is unset or empty, which
    local servers accept); HTTP 408/409/425/429/5xx, connection errors and timeouts are retried
    with exponential backoff plus jitter, honouring ``Retry-After``; other 4xx errors fail at once.
    """

    def describe(self) -> dict[str, Any]:
        return {"kind": "openai-http", **super().describe()}

    def _one(self, prompt: str, system: str | None, max_new_tokens: int, temperature: float,
             seed: int | None) -> Generation:
        messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        text, finish_reason = self.chat(messages, max_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return Generation(text, finish_reason)

    def generate(self, prompts, *, system=None, max_new_tokens=128, temperature=0.0, seed=None):
        prompts = list(prompts)
        seeds = [None if seed is None else seed + i for i in range(len(prompts))]
        if self.concurrency == 1 or len(prompts) < 2:
            return [self._one(p, system, max_new_tokens, temperature, s) for p, s in zip(prompts, seeds)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda ps: self._one(ps[0], system, max_new_tokens, temperature, ps[1]),
                                 zip(prompts, seeds)))


def make_generator(spec: str, **kwargs) -> Generator:
    """``spec`` is a model for :class:`LocalHFGenerator`, or ``http`` / a URL for the HTTP generator.

    HTTP keyword arguments: base_url, model, api_key_env, timeout, max_retries, requests_per_minute,
    concurrency. Local ones: dtype, device, batch_size, chat.
    """
    if spec == "http" or spec.startswith(("http://", "https://")):
        base_url = kwargs.pop("base_url", None) or (spec if spec != "http" else None)
        if not base_url:
            raise ConfigError("the HTTP generator needs --base-url (e.g. https://api.openai.com/v1)")
        model = kwargs.pop("model", None)
        if not model:
            raise ConfigError("the HTTP generator needs --api-model (the model name the endpoint serves)")
        keep = {k: v for k, v in kwargs.items() if k in ("api_key_env", "timeout", "max_retries",
                                                          "requests_per_minute", "concurrency", "backoff")}
        return OpenAIChatGenerator(base_url, model, **keep)
    keep = {k: v for k, v in kwargs.items() if k in ("dtype", "device", "batch_size", "chat")}
    return LocalHFGenerator(spec, **keep)
