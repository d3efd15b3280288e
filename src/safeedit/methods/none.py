"""``none``: the unedited model, evaluated through the same runner path as any trained-once method."""

from __future__ import annotations

from dataclasses import dataclass

from safeedit.methods.base import Method


@dataclass
class NoneConfig:
    """The unedited model has no options."""


class Unedited(Method):
    name = "none"
    config_class = NoneConfig
    per_instance = False
    summary = "the unedited model (the baseline every other method is compared with)"
