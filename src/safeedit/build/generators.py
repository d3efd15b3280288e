"""Generators: one small interface over a local Hugging Face model and an OpenAI-compatible endpoint.

A generator turns a list of user prompts (plus an optional system prompt) into a list of
:class:`Generation` results in the same order. ``finish_reason`` is ``"length"`` when the answer
stopped at ``max_new_tokens`` (so it may be cut off), else ``"stop"``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from safeedit.errors import ConfigError, RunFailedError

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


class HTTPError(RunFailedError):
    pass


class RateLimiter:
    """At most ``per_minute`` request starts per minute, spaced evenly (thread-safe)."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIChatGenerator:
    """Chat completions over HTTP (OpenAI, vLLM, llama.cpp server, ... anything OpenAI-compatible).

    ``base_url`` is the API root, e.g. ``https://api.openai.com/v1``; requests go to
    ``{base_url}/chat/completions``. The key is read from the environment variable ``api_key_env``
    (no Authorization header when it is unset or empty, which local servers accept). Failed
    requests (HTTP 408/409/425/429/5xx, connection errors, timeouts) are retried with exponential
    backoff plus jitter, honouring ``Retry-After``; other 4xx errors fail at once.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0,
                 requests_per_minute: float | None = None, concurrency: int = 1,
                 extra_body: dict[str, Any] | None = None):
        self.base_url = base_url.rstrip("/")
        self.name = model
        self.api_key_env = api_key_env
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.limiter = RateLimiter(requests_per_minute)
        self.requests_per_minute = requests_per_minute
        self.concurrency = max(1, concurrency)
        self.extra_body = extra_body or {}
        self.attempts = 0  # requests sent, retries included (for tests and reports)

    def describe(self) -> dict[str, Any]:
        return {"kind": "openai-http", "model": self.name, "base_url": self.base_url,
                "api_key_env": self.api_key_env, "timeout": self.timeout, "max_retries": self.max_retries,
                "requests_per_minute": self.requests_per_minute, "concurrency": self.concurrency}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: dict) -> dict:
        url = f"{self.base_url}/chat/completions"
        data = json.dumps(body).encode("utf-8")
        last_error = ""
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            self.attempts += 1
            delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
            request = urllib.request.Request(url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                last_error = f"HTTP {exc.code}: {detail}"
                if exc.code not in RETRY_STATUS:
                    raise HTTPError(f"{url}: {last_error}") from exc
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after:
                    try:
                        delay = min(self.max_backoff, float(retry_after))
                    except ValueError:
                        pass
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if attempt < self.max_retries:
                log.warning("%s failed (%s); retry %d/%d in %.1fs", url, last_error, attempt + 1,
                            self.max_retries, delay)
                time.sleep(delay)
        raise HTTPError(f"{url}: giving up after {self.max_retries + 1} attempts; last error: {last_error}")

    def _one(self, prompt: str, system: str | None, max_new_tokens: int, temperature: float,
             seed: int | None) -> Generation:
        messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        body = {"model": self.name, "messages": messages, "max_tokens": max_new_tokens,
                "temperature": temperature, **self.extra_body}
        if seed is not None:
            body["seed"] = seed
        reply = self._post(body)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise HTTPError(f"unexpected reply from {self.base_url}: {json.dumps(reply)[:300]}") from exc
        return Generation(text.strip(), choice.get("finish_reason"))

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
