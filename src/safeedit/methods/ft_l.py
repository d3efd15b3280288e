"""FT-L: constrained fine-tuning of one layer's FFN output matrix (the paper's FT-L baseline).

Per instance: make only ``W_V`` of one fixed layer trainable (``mlp.down_proj`` in Llama-style
models) and take up to ``steps`` Adam steps on NLL(safe response | adversarial input), stopping
early once the loss falls below ``early_stop_loss``. With ``norm_constraint = ε`` every weight is
clamped to ``[w₀ - ε, w₀ + ε]`` around its original value after each step.

Two objectives (``objective``):

* ``teacher_forced`` (ours, default): ordinary language-model loss, each safe-response token
  predicted from the prompt and the safe-response tokens before it;
* ``prompt_last`` (the reference's FT-L for SafeEdit): every safe-response token is scored by the
  one distribution at the last prompt position (a bag of target tokens). It cannot teach word
  order, which is why we do not default to it.

Unlike DINM there is no KL term, no toxic-layer location and no suffix. Only W_V of one layer
changes, so the edit reuses DINM's fast runner (cached activations below the layer, logits only
where the loss reads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from safeedit.data.schema import SafeEditInstance
from safeedit.errors import ConfigError
from safeedit.lm.arch import resolve_architecture
from safeedit.lm.generation import context_window
from safeedit.methods.base import Edit, EditError, InstanceEdit, Method
from safeedit.methods.sequences import FastRunner, NaiveRunner, build_sequence

OBJECTIVES = ("teacher_forced", "prompt_last")


@dataclass
class FTLConfig:
    """FT-L's options. Defaults are the reference's (EasyEdit ``hparams/FT/llama-7b.yaml`` as used for
    the SafeEdit paper's Table 1) except ``layer`` and ``objective`` (see each field)."""

    #: Adam steps per instance (reference: 25)
    steps: int = 25
    #: Adam learning rate (reference: 5e-4)
    lr: float = 5e-4
    #: Adam weight decay (reference: 0)
    weight_decay: float = 0.0
    #: stop once the loss is below this (reference: 1e-2)
    early_stop_loss: float = 1e-2
    #: clamp each weight to ±ε around its original value after every step; None = off
    #: (reference: off for LLaMA-2-7B, 5e-5 for Mistral-7B)
    norm_constraint: float | None = None
    #: the edited layer (0-based); None: ``int(layer_fraction * n_layers)`` (reference: 21 for 7B models)
    layer: int | None = None
    #: ours: the reference picks layer 21 of LLaMA-2-7B's 32 by causal tracing; for other depths we keep
    #: the same relative depth, 21/32 (layer 19 of SmolLM2-135M's 30)
    layer_fraction: float = 21 / 32
    #: ``teacher_forced`` (ours, default: ordinary LM loss) or ``prompt_last`` (reference: every target
    #: token predicted from the last prompt position)
    objective: str = "teacher_forced"
    #: text appended to the edit prompt and post-edit evaluation inputs (reference FT-L: none)
    suffix: str | None = None
    #: token budget of the edit sequence, prompt cut from the left (ours: the model window)
    max_length: int | None = None
    #: run only the layers from the edited one up, from cached inputs (ours: same update, faster)
    fast: bool = True
    #: dotted path of the decoder layers, for families not in safeedit.lm.arch (ours)
    layers_module: str | None = None
    #: W_V's path inside a decoder layer, e.g. ``mlp.down_proj`` (ours)
    wv_module: str | None = None

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"FT-L steps must be >= 0, got {self.steps}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"FT-L objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.norm_constraint is not None and self.norm_constraint < 0:
            raise ConfigError(f"FT-L norm_constraint must be >= 0 or null, got {self.norm_constraint}")
        if not 0.0 <= self.layer_fraction < 1.0:
            raise ConfigError(f"FT-L layer_fraction must be in [0, 1), got {self.layer_fraction}")


class FTL(Method):
    name = "ft-l"
    config_class = FTLConfig
    summary = "per instance: Adam on one fixed layer's FFN output matrix W_V, NLL of the safe response (baseline)"

    def eval_prompt(self, text: str) -> str:
        return f"{text.rstrip()} {self.config.suffix}" if self.config.suffix else text

    def layer_for(self, n_layers: int) -> int:
        layer = self.config.layer if self.config.layer is not None else int(self.config.layer_fraction * n_layers)
        if not 0 <= layer < n_layers:
            raise ConfigError(f"FT-L layer {layer} out of range: this model has layers 0..{n_layers - 1}")
        return layer

    def edit(self, model, tokenizer, instances: Sequence[SafeEditInstance] | SafeEditInstance, *,
             chat: bool | None = None) -> Edit:
        arch = resolve_architecture(model, layers=self.config.layers_module, w_v=self.config.wv_module)
        return self._edit_each(model, instances, lambda instance, edit: self._edit_one(model, tokenizer, arch, instance,
                                                                                        edit, chat))

    def _loss(self, runner) -> torch.Tensor:
        logits = runner.target_logits(0).float()
        targets = runner.target_ids(0)
        if self.config.objective == "prompt_last":  # all targets from the last prompt position
            logits = logits[:1].expand(len(targets), -1)
        return F.cross_entropy(logits, targets)

    def _edit_one(self, model, tokenizer, arch, instance: SafeEditInstance, edit: Edit, chat) -> InstanceEdit:
        cfg = self.config
        start = time.perf_counter()
        layer = self.layer_for(arch.num_layers(model))
        window = context_window(model, tokenizer)
        target = build_sequence(tokenizer, self.eval_prompt(instance.adversarial_prompt), instance.safe_response,
                                chat=chat, max_length=cfg.max_length or window)
        weight = arch.w_v_weight(model, layer)
        edit.remember(arch.w_v_param_name(layer), weight)
        original = edit.originals[arch.w_v_param_name(layer)]  # the value before any edit of this call
        for p in model.parameters():
            p.requires_grad_(False)
        weight.requires_grad_(True)
        runner = (FastRunner(model, [target], arch, layer, keep_logits=False) if cfg.fast
                  else NaiveRunner(model, [target]))
        optimizer = torch.optim.Adam([weight], lr=cfg.lr, weight_decay=cfg.weight_decay)
        record = InstanceEdit(key=instance.key, details={"layer": layer, "objective": cfg.objective})
        with runner:
            steps_taken = 0
            for step in range(cfg.steps + 1):
                last = step == cfg.steps
                with torch.set_grad_enabled(not last):
                    loss = self._loss(runner)
                if not torch.isfinite(loss.detach()):
                    raise EditError(f"non-finite loss ({loss.item()}) at step {step} editing instance "
                                    f"{instance.key} (id={instance.id!r}) at layer {layer}; model restored")
                record.losses.append({"step": step, "loss": loss.item(), "nll": loss.item()})
                if step == 0:
                    record.details["nll_before"] = loss.item()
                if last or loss.item() < cfg.early_stop_loss:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps_taken += 1
                if cfg.norm_constraint is not None:
                    with torch.no_grad():
                        eps = cfg.norm_constraint
                        weight.copy_(torch.clamp(weight, min=original - eps, max=original + eps))
            record.details["nll_after"] = record.losses[-1]["nll"]
            record.details["steps_taken"] = steps_taken
        weight.grad = None
        record.seconds = time.perf_counter() - start
        return record


__all__ = ["FTL", "FTLConfig"]
