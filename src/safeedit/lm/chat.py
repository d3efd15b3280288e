"""Prompt formatting: the model's chat template (default) or raw text (the paper's reference mode)."""

from __future__ import annotations


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, text: str, chat: bool = True, system: str | None = None) -> str:
    """The string the model sees before its answer.

    ``chat=True`` wraps ``text`` as one user turn with the generation prompt appended; it falls
    back to raw text for tokenizers without a template. Raw mode returns ``text`` unchanged.
    """
    if not chat or not has_chat_template(tokenizer):
        return text if system is None else f"{system}\n\n{text}"
    messages = [{"role": "user", "content": text}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def adds_special_tokens(chat: bool, tokenizer) -> bool:
    """Chat templates already contain BOS/turn tokens; raw text needs the tokenizer's own."""
    return not (chat and has_chat_template(tokenizer))
