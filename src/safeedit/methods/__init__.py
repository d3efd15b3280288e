"""Methods behind one interface (see :mod:`safeedit.methods.base`); look them up by name here."""

from __future__ import annotations

from pathlib import Path

from safeedit.errors import ConfigError
from safeedit.methods.base import Edit, EditError, InstanceEdit, Method
from safeedit.methods.dinm import DINM, DINMConfig
from safeedit.methods.ft_l import FTL, FTLConfig
from safeedit.methods.locate import Location
from safeedit.methods.dpo import DPO, DPOConfig
from safeedit.methods.ext_sub import ExtSub, ExtSubConfig
from safeedit.methods.mend import MEND, MENDConfig
from safeedit.methods.none import Unedited
from safeedit.methods.rlhf import RLHF, RLHFConfig
from safeedit.methods.self_reminder import SelfReminder, SelfReminderConfig
from safeedit.methods.sft import SFT, SFTConfig
from safeedit.methods.options import ConfigFile, coerce_options, make_config, read_config_file

#: name -> class; the bench runner and the CLI look methods up here
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Unedited, DINM, FTL, MEND, SelfReminder, SFT, DPO, RLHF, ExtSub)}


def get_method(name: str, config: str | Path | ConfigFile | None = None, **overrides) -> Method:
    """A method by name, configured from a YAML file (optional) and then keyword overrides.

    Values are converted to the declared types; an explicit ``None`` override sets the option to None.
    """
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    if config is not None and not isinstance(config, ConfigFile):
        config = read_config_file(config)
    options: dict = {}
    if config is not None:
        if config.method is not None and config.method != name:
            raise ConfigError(f"{config.path} is a config for method {config.method!r}, not {name!r}")
        options.update(coerce_options(cls.config_class, config.options, config.path))
    options.update(coerce_options(cls.config_class, overrides, "arguments"))
    return cls(make_config(cls.config_class, options, config.path if config else "arguments"))


__all__ = ["DINM", "DINMConfig", "DPO", "DPOConfig", "Edit", "EditError", "ExtSub", "ExtSubConfig", "FTL", "FTLConfig",
           "InstanceEdit", "Location", "MEND", "MENDConfig", "METHODS", "Method", "RLHF", "RLHFConfig", "SFT", "SFTConfig",
           "SelfReminder", "SelfReminderConfig", "Unedited", "get_method"]
