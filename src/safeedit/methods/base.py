"""The interface every editing method shares, and the exact-restore record of an edit.

A method edits a model *in place* and returns an :class:`Edit` that remembers the original value
of every tensor it changed (nothing else: no deep copies of a model). ``Edit.restore()`` copies
those values back bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from safeedit.data.schema import SafeEditInstance


class EditError(RuntimeError):
    """An edit could not be carried out; the model has been left as it was before the call."""


@dataclass
class InstanceEdit:
    """What happened when one instance was edited (everything is JSON-serialisable)."""

    key: str
    layer: int | None = None
    distances: list[float] | None = None
    losses: list[dict[str, float]] = field(default_factory=list)
    nll_before: float | None = None
    nll_after: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Edit:
    """Undo record for an in-place edit: original values of the tensors that changed."""

    model: nn.Module
    method: str
    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    instances: list[InstanceEdit] = field(default_factory=list)

    def remember(self, name: str, tensor: torch.Tensor) -> None:
        """Keep the value from before the *first* change of ``name`` (sequential edits reuse it)."""
        if name not in self.originals:
            self.originals[name] = tensor.detach().clone()

    @property
    def changed(self) -> list[str]:
        return sorted(self.originals)

    def restore(self) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, original in self.originals.items():
                params[name].copy_(original)
        if not self.is_restored():
            raise EditError("restore did not reproduce the original tensors bit for bit")

    def is_restored(self) -> bool:
        params = dict(self.model.named_parameters())
        return all(torch.equal(params[n], t) for n, t in self.originals.items())


class Method:
    """Base class: a config dataclass (paper defaults) + ``edit(model, tokenizer, instances)``."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config=None, **overrides):
        self.config = config if config is not None else self.config_class()
        for key, value in overrides.items():
            if not hasattr(self.config, key):
                raise TypeError(f"{type(self.config).__name__} has no option {key!r}")
            setattr(self.config, key, value)

    def edit(self, model, tokenizer, instances: Sequence[SafeEditInstance]) -> Edit:
        raise NotImplementedError

    def eval_prompt(self, text: str) -> str:
        """How the edited model is prompted at evaluation time (DINM appends its suffix)."""
        return text
