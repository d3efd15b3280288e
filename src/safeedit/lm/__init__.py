"""Models: loading (hub id, local dir, GGUF, embedded alias), architecture lookup, chat formatting, generation."""

from safeedit.lm.arch import ArchitectureMap, UnsupportedArchitecture, resolve_architecture
from safeedit.lm.chat import format_prompt, has_chat_template, use_chat_template
from safeedit.lm.generation import generate
from safeedit.lm.loading import ModelLoadError, load_model, resolve_model_source

__all__ = [
    "ArchitectureMap",
    "ModelLoadError",
    "UnsupportedArchitecture",
    "format_prompt",
    "generate",
    "has_chat_template",
    "load_model",
    "resolve_architecture",
    "resolve_model_source",
    "use_chat_template",
]
