"""Method options from YAML files and ``--set KEY=VALUE``: read, check and convert to the declared type.

YAML 1.1 reads ``1e-5`` (no dot) as a *string*, and ``--set`` values arrive as text, so every
value is converted to the type its config field declares (``float``, ``int``, ``bool``, ``str``,
``X | None``, lists); a value that does not convert, or an option the config does not have, is a
:class:`~safeedit.errors.ConfigError` naming the option and where it came from.

A method's YAML file may name the ``method`` and the ``model`` its values were chosen for
(``configs/dinm/mistral-7b.yaml``). :func:`choose_model` uses that model when the user names none and
refuses a different one, so a learning rate tuned for one model is never applied to another silently.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from safeedit.errors import ConfigError, InputNotFoundError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"null", "none", "~", ""}


@dataclass(frozen=True)
class ConfigFile:
    """A method's YAML file: the options, and the method and model it declares (if any)."""

    path: str
    options: dict[str, Any]
    method: str | None = None
    model: str | None = None


def read_config_file(path: str | Path) -> ConfigFile:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"method config not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(loaded).__name__}")
    options = dict(loaded.get("config", loaded))
    method, model = options.pop("method", None), options.pop("model", None)
    return ConfigFile(str(path), options, method, model)


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-5", "suffix=null"]`` -> ``{"lr": "1e-5", "suffix": None}`` (types come later)."""
    import yaml

    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        options[key.strip().replace("-", "_")] = parsed
    return options


def choose_model(requested: str | None, config: ConfigFile | None, default: str) -> str:
    """The model to run: the one asked for, else the config file's, else ``default``.

    A config file written for another model is refused, naming both.
    """
    declared = config.model if config is not None else None
    if requested is None:
        return declared or default
    if declared is not None and declared != requested:
        raise ConfigError(
            f"{config.path} holds values for model {declared!r}, but --model is {requested!r}; "
            f"drop --model to run {declared!r}, or copy the file without its 'model:' line to use "
            f"these values on another model")
    return requested


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if type(None) in options and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} is not {' or '.join(_type_name(o) for o in options)}")
    if origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (item_type, *_) = typing.get_args(tp) or (Any,)
            return [value_ if item_type is Any else _convert(value_, item_type, where) for value_ in value]
        raise ConfigError(f"{where}: {value!r} is not a list")
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where}: {value!r} is not a mapping")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise ConfigError(f"{where}: {value!r} is not true/false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not an integer")
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, (int, float)) and math.isfinite(number) and float(number).is_integer():
                return int(number)
        except ValueError:
            pass
        raise ConfigError(f"{where}: {value!r} is not an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not a number") from None
        if math.isnan(number):
            raise ConfigError(f"{where}: NaN is not allowed")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: {value!r} is not text")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}")


def coerce_options(config_class: type, options: dict[str, Any], origin: str) -> dict[str, Any]:
    """``options`` converted to the types ``config_class`` declares; unknown options are refused."""
    hints = typing.get_type_hints(config_class)
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown {config_class.__name__} option(s) {unknown} (from {origin}); "
                          f"known: {', '.join(sorted(known))}")
    return {k: _convert(v, hints[k], f"option {k} (from {origin})") for k, v in options.items()}


def make_config(config_class: type, options: dict[str, Any], origin: str):
    """An instance of ``config_class`` from ``options`` (converted and checked, see module doc)."""
    return config_class(**coerce_options(config_class, options, origin))
