"""One client for OpenAI-compatible chat-completions endpoints (OpenAI, vLLM, llama.cpp server, ...).

Shared by the build pipeline's HTTP generator (:mod:`safeedit.build.generators`) and the HTTP
safety judge (:mod:`safeedit.judge.generative`), so retries, rate limiting and key handling
behave the same everywhere.

- Requests go to ``{base_url}/chat/completions``; ``base_url`` is the API root, e.g.
  ``https://api.openai.com/v1``.
- The key is read from the environment variable ``api_key_env`` at request time and is never
  stored or recorded. When the variable is unset or empty no Authorization header is sent
  (local servers accept that); ``require_key=True`` makes an unset variable an error instead.
- HTTP 408/409/425/429/5xx, connection errors, timeouts and undecodable bodies are retried with
  exponential backoff plus jitter, honouring ``Retry-After`` (seconds); other 4xx fail at once.
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
from typing import Any

from safeedit.errors import ConfigError, RunFailedError

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class HTTPError(RunFailedError):
    """A chat-completions request failed for good (after retries, or a non-retryable status)."""


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


class ChatClient:
    """Send chat messages to an OpenAI-compatible endpoint and get the reply text back."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0,
                 requests_per_minute: float | None = None, concurrency: int = 1,
                 extra_body: dict[str, Any] | None = None, require_key: bool = False):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base URL {base_url!r} must start with http:// or https:// (e.g. https://api.openai.com/v1)")
        self.base_url = base_url.rstrip("/")
        self.name = model
        self.api_key_env = api_key_env
        if require_key and not os.environ.get(api_key_env):
            raise ConfigError(f"the API key for {self.base_url} is read from ${api_key_env}, which is not set")
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.limiter = RateLimiter(requests_per_minute)
        self.requests_per_minute = requests_per_minute
        self.concurrency = max(1, concurrency)
        self.extra_body = extra_body or {}
        self.attempts = 0  # requests sent, retries included (for tests and reports)
        self._count_lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """What to record about the endpoint (never the key)."""
        return {"model": self.name, "base_url": self.base_url, "api_key_env": self.api_key_env,
                "timeout": self.timeout, "max_retries": self.max_retries,
                "requests_per_minute": self.requests_per_minute, "concurrency": self.concurrency}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def post(self, body: dict) -> dict:
        """POST ``body`` to ``/chat/completions`` with retries; the decoded JSON reply."""
        url = f"{self.base_url}/chat/completions"
        data = json.dumps(body).encode("utf-8")
        last_error = ""
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            with self._count_lock:
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
                    hint = ""
                    if exc.code in (401, 403):
                        hint = (f" (the key is read from ${self.api_key_env}, which is "
                                f"{'set' if os.environ.get(self.api_key_env) else 'not set'})")
                    raise HTTPError(f"{url}: {last_error}{hint}") from exc
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after:
                    try:
                        delay = min(self.max_backoff, float(retry_after))
                    except ValueError:
                        pass
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
                last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt < self.max_retries:
                log.warning("%s failed (%s); retry %d/%d in %.1fs", url, last_error, attempt + 1,
                            self.max_retries, delay)
                time.sleep(delay)
        raise HTTPError(f"{url}: giving up after {self.max_retries + 1} attempts; last error: {last_error}")

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 128, temperature: float = 0.0,
             seed: int | None = None) -> tuple[str, str | None]:
        """One completion: ``(text, finish_reason)``; the text is stripped."""
        body = {"model": self.name, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature, **self.extra_body}
        if seed is not None:
            body["seed"] = seed
        reply = self.post(body)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise HTTPError(f"unexpected reply from {self.base_url}: {json.dumps(reply)[:300]}") from exc
        return text.strip(), choice.get("finish_reason")
