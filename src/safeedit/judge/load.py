"""``load_judge(spec)``: one entry point for every kind of safety judge.

``spec`` is one of

- ``None`` or ``"default"``: our trained classifier at :func:`default_judge_dir`;
- a folder or hub id of a **sequence classifier** (``*ForSequenceClassification`` in its
  config): :meth:`SafetyJudge.from_pretrained`, unchanged — ``zjunlp/SafeEdit-Safety-Classifier``
  included;
- a folder or hub id of a **causal LM** (``*ForCausalLM`` / ``*ForConditionalGeneration``), a
  ``.gguf`` file or a built-in model alias (``smollm2-135m``): a generative judge that writes its
  verdict, with a prompt format (``llama-guard``, ``harmbench``, ``rubric``) given as ``format``
  or guessed from the name (``*guard*``, ``*harmbench*``) or from a moderation chat template;
- ``http:MODEL``: a model behind an OpenAI-compatible chat-completions endpoint at ``base_url``
  (format ``rubric`` unless given or guessed from the name), key from ``$api_key_env``.

Every judge returned has the same call contract (``judge(responses, prompts=None,
batch_size=...) -> JudgeResult``), ``with_prompt``, ``source`` and ``identity()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safeedit.errors import ConfigError, InputNotFoundError
from safeedit.judge.model import JudgeError

_CLASSIFIER = ("ForSequenceClassification",)
_GENERATIVE = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")


def _architectures_of(spec: str, trust_remote_code: bool = False) -> list[str]:
    path = Path(spec).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise InputNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
        try:
            return list(json.loads(config.read_text()).get("architectures") or [])
        except json.JSONDecodeError as exc:
            raise JudgeError(f"{config} is not valid JSON: {exc}") from exc
    if path.exists():
        raise InputNotFoundError(f"judge {spec}: neither a model folder nor a .gguf file")
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise InputNotFoundError(f"judge not found: {spec} (neither a folder, a hub id owner/name, "
                                f"http:MODEL nor a built-in model alias)")
    from transformers import AutoConfig

    try:  # a hub id: the config alone says what kind of model it is
        return list(getattr(AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code),
                            "architectures", None) or [])
    except OSError as exc:
        raise JudgeError(f"could not read the config of judge {spec!r} from the hub: {exc}") from exc


def judge_kind(spec: str | None, trust_remote_code: bool = False) -> str:
    """``"classifier"``, ``"generative"`` (local causal LM) or ``"http"`` for a judge spec."""
    if spec is None or spec == "default":
        return "classifier"
    spec = str(spec)
    if spec.startswith("http:") and not spec.startswith(("http://", "https://")):
        return "http"
    if spec.startswith(("http://", "https://")):
        raise ConfigError(f"judge {spec!r}: write http:MODEL and give the URL with --judge-base-url")
    from safeedit.lm.loading import EMBEDDED_MODELS

    if spec in EMBEDDED_MODELS or spec.endswith(".gguf"):
        return "generative"
    archs = _architectures_of(spec, trust_remote_code)
    if any(a.endswith(_CLASSIFIER) for a in archs):
        return "classifier"
    if any(a.endswith(_GENERATIVE) for a in archs):
        return "generative"
    raise JudgeError(f"judge {spec}: its config names architectures {archs or 'none'}; expected a "
                     f"*ForSequenceClassification classifier or a *ForCausalLM generative judge")


def load_judge(spec: str | None = None, device: str | None = None, *, format: str | None = None,
               base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", require_key: bool = False,
               concurrency: int = 4, timeout: float = 120.0, max_retries: int = 5, backoff: float = 1.0,
               requests_per_minute: float | None = None, on_unparsed: str = "half", parse_retries: int = 2,
               dtype: str = "auto", trust_remote_code: bool = False, max_length: int | None = None,
               max_prompt_chars: int = 6000, max_response_chars: int = 4000) -> Any:
    """Load the judge ``spec`` names (see the module doc); options that do not apply are ignored.

    ``format`` for a classifier is an error (it has no prompt). ``on_unparsed`` and
    ``parse_retries``: see :mod:`safeedit.judge.generative`.
    """
    from safeedit.judge.formats import get_format, guess_format
    from safeedit.judge.generative import GenerativeJudge, HTTPBackend, LocalBackend
    from safeedit.judge.model import SafetyJudge

    kind = judge_kind(spec, trust_remote_code)
    if kind == "classifier":
        if format is not None:
            raise ConfigError(f"judge {spec or 'default'} is a sequence classifier: --judge-format applies "
                             f"to generative judges only")
        return SafetyJudge.from_pretrained(None if spec in (None, "default") else spec, device=device,
                                           trust_remote_code=trust_remote_code, max_length=max_length)
    fmt_kwargs = dict(max_prompt_chars=max_prompt_chars, max_response_chars=max_response_chars)
    if kind == "http":
        from safeedit.chatapi import ChatClient

        model = spec[len("http:"):]
        if not model:
            raise ConfigError("judge http:MODEL needs the model name the endpoint serves, e.g. http:gpt-4o-mini")
        if not base_url:
            raise ConfigError(f"judge {spec} needs --judge-base-url (the API root, e.g. https://api.openai.com/v1)")
        name = format or guess_format(model) or "rubric"
        fmt = get_format(name, **fmt_kwargs)
        client = ChatClient(base_url, model, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries,
                            backoff=backoff, requests_per_minute=requests_per_minute, concurrency=concurrency,
                            require_key=require_key)
        # a served guard model applies its own moderation template to the bare conversation; any other
        # model asked in the llama-guard format gets our written prompt
        backend = HTTPBackend(client, native=fmt.name == "llama-guard" and "guard" in model.lower())
        return GenerativeJudge(backend, fmt, on_unparsed=on_unparsed, parse_retries=parse_retries)
    from safeedit.lm import load_model

    fmt = get_format(format, **fmt_kwargs) if format is not None else None  # bad names fail before loading
    model, tokenizer = load_model(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if fmt is None:
        guessed = guess_format(spec, getattr(tokenizer, "chat_template", None))
        if guessed is None:
            raise ConfigError(f"cannot tell the prompt format of generative judge {spec}: pass --judge-format "
                             f"llama-guard, harmbench or rubric")
        fmt = get_format(guessed, **fmt_kwargs)
    native = None if fmt.name == "llama-guard" else False  # only a moderation template takes the bare conversation
    backend = LocalBackend(model, tokenizer, source=spec, native=native)
    return GenerativeJudge(backend, fmt, on_unparsed=on_unparsed, parse_retries=parse_retries)
