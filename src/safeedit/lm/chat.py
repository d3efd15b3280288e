"""Prompt formatting: the model's chat template (default) or raw text (the paper's reference mode).

:func:`use_chat_template` is the one rule for the prompt mode; generation, editing, training and
the general-ability metrics all call it, so a run is in one mode throughout.
"""

from __future__ import annotations


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat_template(tokenizer, chat: bool | None = None) -> bool:
    """The prompt mode: ``chat=None`` (default) or ``True`` use the chat template when the tokenizer
    has one; ``False`` (the paper's raw-text mode) never does. A tokenizer without a template is
    always prompted with raw text."""
    return chat is not False and has_chat_template(tokenizer)


def format_prompt(tokenizer, text: str, chat: bool | None = True, system: str | None = None) -> str:
    """The string the model sees before its answer.

    In chat mode (see :func:`use_chat_template`) ``text`` becomes one user turn with the generation
    prompt appended; in raw mode ``text`` is returned unchanged (after ``system`` if given).
    """
    if not use_chat_template(tokenizer, chat):
        return text if system is None else f"{system}\n\n{text}"
    messages = [{"role": "user", "content": text}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def adds_special_tokens(chat: bool | None, tokenizer) -> bool:
    """Chat templates already contain BOS/turn tokens; raw text needs the tokenizer's own."""
    return not use_chat_template(tokenizer, chat)
