"""What the per-instance editors share: teacher-forced sequences and the forward runners.

* :func:`build_sequence` formats a prompt (chat template or raw text, decided by the caller) and
  appends a target text; the prompt is cut from the left to fit ``max_length``.
* :class:`NaiveRunner` runs the whole model with full logits (what the reference code does).
* :class:`FastRunner` knows that only weights in layers >= ``layer`` change: it computes the
  hidden states entering ``layer`` once, without grad, then each call runs only the layers from
  ``layer`` up and computes logits only at the positions a loss reads. Both give the same logits.

``target_logits(i, params=...)`` runs the model with some parameters replaced by tensors
(``torch.func.functional_call``), so a hyper-network's edit ``W + ΔW`` stays differentiable
with respect to ``ΔW`` (MEND's meta-training) without touching the model's own parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from safeedit.lm.arch import ArchitectureMap
from safeedit.lm.chat import adds_special_tokens, format_prompt
from safeedit.lm.forward_args import logits_to_keep_arg
from safeedit.lm.layer_bypass import capturing_layer_input, run_from_layer
from safeedit.methods.base import EditError


@dataclass
class TargetSequence:
    """One teacher-forced sequence: token ids, and where the scored (target) tokens start."""

    ids: list[int]
    target_start: int

    @property
    def n_target(self) -> int:
        return len(self.ids) - self.target_start


def build_sequence(tokenizer, prompt: str, target: str, *, chat: bool | None, max_length: int,
                   max_target: int | None = None) -> TargetSequence:
    """``format_prompt(prompt) + target`` as token ids; the prompt is cut from the left to fit, the
    target (when ``max_target`` is set) to its first ``max_target`` tokens."""
    text = format_prompt(tokenizer, prompt, chat=chat)
    prompt_ids = tokenizer(text, add_special_tokens=adds_special_tokens(chat, tokenizer))["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not target_ids:
        raise EditError(f"empty target text for prompt {prompt[:60]!r}")
    if max_target is not None:
        target_ids = target_ids[:max_target]
    budget = max_length - len(target_ids)
    if budget < 1:
        raise EditError(f"target of {len(target_ids)} tokens does not fit max_length {max_length}")
    prompt_ids = prompt_ids[-budget:]
    return TargetSequence(prompt_ids + target_ids, len(prompt_ids))


class NaiveRunner:
    """Full model forward and full logits every step (what the reference code does)."""

    def __init__(self, model, sequences: list[TargetSequence]):
        self.model, self.sequences = model, sequences
        self.device = next(model.parameters()).device

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _ids(self, i: int) -> torch.Tensor:
        return torch.tensor([self.sequences[i].ids], device=self.device)

    def _forward(self, params: dict[str, torch.Tensor] | None, **kwargs):
        if params:
            return torch.func.functional_call(self.model, params, args=(), kwargs=kwargs, strict=False)
        return self.model(**kwargs)

    def target_ids(self, i: int) -> torch.Tensor:
        seq = self.sequences[i]
        return torch.tensor(seq.ids[seq.target_start:], device=self.device)

    def target_logits(self, i: int, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits that predict the target tokens of sequence ``i`` (position ``target_start - 1`` on)."""
        seq = self.sequences[i]
        logits = self._forward(params, input_ids=self._ids(i), use_cache=False).logits[0]
        return logits[seq.target_start - 1:-1]

    def reference_log_probs(self, i: int) -> torch.Tensor:
        with torch.no_grad():
            return F.log_softmax(self.target_logits(i).float(), dim=-1)


class FastRunner(NaiveRunner):
    """Runs layers >= L only, from cached inputs of layer L, with logits at the scored positions.

    ``keep_logits=False`` drops the unedited model's logits after caching (they cost
    ``n_target x vocab`` floats per sequence; MEND keeps many runners alive and recomputes them).
    """

    def __init__(self, model, sequences: list[TargetSequence], arch: ArchitectureMap, layer: int,
                 keep_logits: bool = True):
        super().__init__(model, sequences)
        self.layers = arch.decoder_layers(model)
        self.layer = layer
        self._layer_inputs: list[torch.Tensor] = []
        self._initial_logits: list[torch.Tensor] | None = [] if keep_logits else None
        self._returns_tuple = False
        self._handles: list = []
        self._active_input: torch.Tensor | None = None
        self._keep_arg = logits_to_keep_arg(model)
        self._cache_layer_inputs()

    def _cache_layer_inputs(self) -> None:
        """One no-grad pass per sequence: the hidden states entering layer L never change."""
        with capturing_layer_input(self.layers, self.layer) as seen, torch.no_grad():
            for i in range(len(self.sequences)):
                logits = self.model(input_ids=self._ids(i), use_cache=False, **self._keep_kwargs(i)).logits[0]
                self._layer_inputs.append(seen["input"])
                if self._initial_logits is not None:
                    self._initial_logits.append(logits[-(self.sequences[i].n_target + 1):-1])
        self._returns_tuple = bool(seen.get("tuple"))

    def __enter__(self):
        # earlier layers become identity functions while editing; layer L reads the cached input
        self._bypass = run_from_layer(self.layers, self.layer, lambda: self._active_input, self._returns_tuple)
        self._bypass.__enter__()
        self._handles.append(self._bypass)
        return self

    def __exit__(self, *exc):
        for ctx in self._handles:
            ctx.__exit__(None, None, None)
        self._handles.clear()
        return False

    def _keep_kwargs(self, i: int) -> dict:
        if self._keep_arg is None:
            return {}
        return {self._keep_arg: self.sequences[i].n_target + 1}  # the targets sit at the end

    def reference_log_probs(self, i: int) -> torch.Tensor:
        if self._initial_logits is None:  # recompute with the current (unedited) weights
            with torch.no_grad():
                return F.log_softmax(self.target_logits(i).float(), dim=-1)
        # the caching pass already ran the unedited model: its logits are the KL reference
        return F.log_softmax(self._initial_logits[i].float(), dim=-1)

    def target_logits(self, i: int, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if not self._handles:
            raise RuntimeError("FastRunner.target_logits is only valid inside its context")
        self._active_input = self._layer_inputs[i]
        logits = self._forward(params, input_ids=self._ids(i), use_cache=False, **self._keep_kwargs(i)).logits[0]
        n = self.sequences[i].n_target
        return logits[-(n + 1):-1]


__all__ = ["FastRunner", "NaiveRunner", "TargetSequence", "build_sequence"]
