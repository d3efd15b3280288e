"""Editing methods behind one interface: ``Method(config).edit(model, tokenizer, instances) -> Edit``."""

from __future__ import annotations

from pathlib import Path

from safeedit.methods.base import Edit, EditError, InstanceEdit, Method
from safeedit.methods.dinm import DINM, DINMConfig
from safeedit.methods.locate import Location

#: name -> class; the bench runner and the CLI look methods up here
METHODS: dict[str, type[Method]] = {DINM.name: DINM}


def get_method(name: str, config_path: str | Path | None = None, **overrides) -> Method:
    """A method by name, configured from a YAML file (optional) and then keyword overrides."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    options = {}
    if config_path is not None:
        import yaml

        loaded = yaml.safe_load(Path(config_path).read_text()) or {}
        options = loaded.get("config", loaded)
        options.pop("method", None)
        options.pop("model", None)
    options.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(options) - set(cls.config_class.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown {name} option(s) {unknown} (from {config_path or 'arguments'})")
    return cls(cls.config_class(**options))


__all__ = ["DINM", "DINMConfig", "Edit", "EditError", "InstanceEdit", "Location", "METHODS", "Method", "get_method"]
