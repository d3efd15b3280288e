"""The interface every method shares, and the exact-restore record of an edit.

Two kinds of method, one class (see DESIGN.md):

* **Per-instance editors** (``per_instance = True``: DINM, FT-L, MEND's edit step) change a few
  tensors for one test instance through :meth:`Method.edit`, which returns an :class:`Edit`
  remembering the original value of every tensor it changed (no deep copies of a model);
  ``Edit.restore()`` puts them back bit for bit before the next instance.
* **Trained-once methods** (``per_instance = False``: the unedited model ``none``, Self-Reminder,
  SFT, DPO, RLHF, Ext-Sub) change the model once, in :meth:`Method.fit` on a training split (or
  not at all), and every test instance is then evaluated on that one model.

Any method may need training (``requires_training``): MEND, a per-instance editor, trains its
hyper-network once in ``fit`` and then edits each instance. ``fit`` saves what it trained in a
folder and :meth:`Method.load_fitted` applies a saved folder again, so a resumed run never
retrains. Every method says how the model is prompted at evaluation time (:meth:`eval_prompt`).

The prompt mode (chat template or raw text) is decided once by the caller
(:func:`safeedit.lm.chat.use_chat_template`) and passed in as ``chat=``; a method never decides it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from safeedit.data.schema import SafeEditInstance
from safeedit.errors import RunFailedError
from safeedit.methods.options import make_config


class EditError(RunFailedError):
    """An edit could not be carried out; the model has been left as it was before the call."""


@dataclass
class InstanceEdit:
    """What happened when one instance was edited (everything is JSON-serialisable).

    ``details`` holds what only one method knows (DINM: ``layer``, ``distances``, ``nll_before``,
    ``nll_after``); the runner and reports read it without knowing the method.
    """

    key: str
    seconds: float = 0.0
    losses: list[dict[str, float]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


class GroupEdit:
    """K independent per-instance edits made together and held *beside* the model (see DESIGN.md).

    The model's own tensors are never written by a grouped edit: :meth:`rows` serves each batch row
    with its own instance's edit (instance ``owners[b]`` for row ``b``) for the length of a block,
    and :meth:`apply` writes one instance's edit into the model as an ordinary :class:`Edit` (for
    evaluations that run one edited model at a time; ``Edit.restore()`` undoes it bit for bit).
    """

    #: the lowest decoder layer whose weights the edits change; below it nothing differs from the
    #: unedited model (prefix reuse starts there). None: unknown, no reuse
    lowest_changed_layer: int | None = None

    def __init__(self, model: nn.Module, method: str, instances: list[InstanceEdit]):
        self.model = model
        self.method = method
        self.instances = instances

    def __len__(self) -> int:
        return len(self.instances)

    def rows(self, owners: Sequence[int]):
        """Context manager: inside it, batch row ``b`` of a forward pass sees instance ``owners[b]``'s edit."""
        raise NotImplementedError

    def apply(self, k: int) -> Edit:
        """Edit the model in place as instance ``k``'s edit alone; the returned record restores it."""
        raise NotImplementedError


class Method:
    """Base class: a config dataclass (paper defaults, documented per field) and the calls below."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    #: True: edit -> evaluate -> restore per test instance; False: one model for all test instances
    per_instance: ClassVar[bool] = True
    #: True: the bench refuses to run without a training split (``fit`` needs one)
    requires_training: ClassVar[bool] = False
    #: one line for ``--help`` and reports
    summary: ClassVar[str] = ""
    #: True: the KQA/CSum prompts go through :meth:`general_prompt` too (a prompt-only defence is on
    #: for every query), so the runner measures general ability even when no weight changed
    wraps_general_prompts: ClassVar[bool] = False

    def __init__(self, config=None, **overrides):
        if config is None:
            config = make_config(self.config_class, overrides, "arguments")
        elif overrides:
            config = make_config(self.config_class, {**asdict(config), **overrides}, "arguments")
        self.config = config

    # ------------------------------------------------------------ per-instance editors
    def edit(self, model, tokenizer, instances: Sequence[SafeEditInstance], *, chat: bool | None = None) -> Edit:
        """Edit ``model`` in place for ``instances`` (one after another); return the undo record."""
        raise NotImplementedError(f"{self.name} is not a per-instance editor")

    # ------------------------------------------------------------ grouped editing (optional capability)
    @property
    def supports_grouping(self) -> bool:
        """True when :meth:`group_key` and :meth:`group_edit` are implemented for this configuration.

        The bench edits instances with the same :meth:`group_key` together through :meth:`group_edit`;
        methods without it (or configured without it) are run one instance at a time.
        """
        return False

    def group_key(self, model, tokenizer, instance: SafeEditInstance, *, chat: bool | None = None):
        """Instances with equal keys can share one :meth:`group_edit` call (DINM: the toxic layer)."""
        raise NotImplementedError(f"{self.name} does not edit in groups")

    def group_keys(self, model, tokenizer, instances: Sequence[SafeEditInstance], *,
                   chat: bool | None = None) -> list[tuple[Any, float]]:
        """:meth:`group_key` of each instance, in order, with the seconds it took. A method may work
        through them in another order when that computes less (DINM: prompts sorted, so location
        reuses their shared prefixes)."""
        out = []
        for instance in instances:
            started = time.perf_counter()
            key = self.group_key(model, tokenizer, instance, chat=chat)
            out.append((key, time.perf_counter() - started))
        return out

    def group_edit(self, model, tokenizer, instances: Sequence[SafeEditInstance], *,
                   chat: bool | None = None) -> GroupEdit:
        """Edit each of ``instances`` *independently* (each from the unedited model), all at once.

        Each instance's result equals what ``edit(model, tokenizer, [instance])`` would give (up to
        float summation order); the model's tensors are left untouched.
        """
        raise NotImplementedError(f"{self.name} does not edit in groups")

    def _edit_each(self, model, instances, edit_one) -> Edit:
        """Shared frame of an in-place editor: ``edit_one(instance, edit)`` for each instance, one after
        another; any failure restores the model before re-raising; ``requires_grad`` flags are put back."""
        if isinstance(instances, SafeEditInstance):
            instances = [instances]
        if torch.is_inference_mode_enabled():
            raise EditError(f"{self.name} needs gradients; call edit() outside torch.inference_mode()")
        edit = Edit(model=model, method=self.name)
        grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        try:
            for instance in instances:
                edit.instances.append(edit_one(instance, edit))
        except BaseException:
            edit.restore()  # leave the model exactly as before the call
            raise
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(grad_flags[n])
        return edit

    # ------------------------------------------------------------ training (trained-once methods, MEND)
    def fit(self, model, tokenizer, train: Sequence[SafeEditInstance], *, chat: bool | None = None,
            out_dir: Path) -> dict[str, Any]:
        """Train once on ``train``; save what :meth:`load_fitted` needs under ``out_dir``.

        A trained-once method leaves ``model`` trained (in place); a per-instance method keeps what
        it trained on itself. Returns a JSON-able record (seconds, losses, ...). The default trains
        nothing.
        """
        return {}

    def load_fitted(self, model, tokenizer, out_dir: Path) -> None:
        """Apply what :meth:`fit` saved in ``out_dir`` (a resumed run never retrains)."""

    # ------------------------------------------------------------ evaluation
    def eval_prompt(self, text: str) -> str:
        """How the model is prompted at evaluation time (DINM appends its suffix)."""
        return text

    def general_prompt(self, text: str) -> str:
        """How a KQA/CSum prompt is shown to the model (unchanged unless ``wraps_general_prompts``)."""
        return text
