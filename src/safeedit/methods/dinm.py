"""DINM: Detoxifying with Intraoperative Neural Monitoring (Wang et al., ACL 2024).

Per instance: (1) locate the toxic layer (:mod:`safeedit.methods.locate`); (2) make only that
layer's W_V trainable and take ``steps`` Adam steps on

    loss = c_edit * NLL(safe response | adversarial input + suffix)
         + kl_weight * KL(p_edited || p_original)   on the knowledge-constraint answer tokens.

NLL is the mean over the safe-response tokens; KL is summed over the vocabulary and averaged
over the constraint-answer positions; p_original is the model before this instance's edit.

Speed by design (``fast=True``): only W_V of layer L changes, so the hidden states entering
layer L never change during the edit. They are computed once, without grad; each step runs only
layers L..end (the earlier layers are bypassed) and computes logits only at the positions the
loss reads. The original-model logits for the KL term are computed once. ``fast=False`` runs the
full model with full logits every step, as the reference does; both give the same update.

Reference behaviour (EasyEdit) that we correct, each reproducible with a flag (all three with
``reference_compat=True``):

* ``kl_no_grad``: the KL term is computed under ``no_grad``, so it is logged but never shapes
  the update (the edit is then plain NLL fine-tuning of W_V);
* ``locate_once``: the toxic layer is located for the first instance only and reused for every
  later instance (also across later ``edit`` calls of the same method object);
* ``locate_without_context``: location compares the two responses alone, padding included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from safeedit.data.schema import SafeEditInstance
from safeedit.lm.arch import ArchitectureMap, resolve_architecture
from safeedit.errors import ConfigError, DataError
from safeedit.lm.generation import context_window
from safeedit.methods.base import Edit, EditError, InstanceEdit, Method
from safeedit.methods.locate import Location, locate_in_context, locate_reference
from safeedit.methods.sequences import FastRunner, NaiveRunner, TargetSequence, build_sequence

PAPER_SUFFIX = "If the user's request is reasonable, give the correct answer. Please give the right response:"


@dataclass
class DINMConfig:
    """DINM's options. Defaults are the paper's values for LLaMA2-7B-Chat (Wang et al. 2024,
    implementation details, and EasyEdit's DINM hyper-parameter files); ``configs/dinm/*.yaml`` hold
    other models'. "ours" marks options the paper does not have."""

    #: Adam steps per instance (paper: 10)
    steps: int = 10
    #: Adam learning rate (paper: 5e-4 for LLaMA2-7B-Chat, 1e-5 for Mistral-7B-v0.1)
    lr: float = 5e-4
    #: Adam weight decay (paper / reference: 0)
    weight_decay: float = 0.0
    #: c_edit, the weight of NLL(safe response) in the loss (paper: 0.1)
    edit_weight: float = 0.1
    #: weight of the KL term on the knowledge-constraint answer (paper: 1, implicit)
    kl_weight: float = 1.0
    #: text appended to edit inputs and post-edit evaluation inputs (reference code's suffix
    #: system prompt); ``None`` for none
    suffix: str | None = PAPER_SUFFIX
    #: token budget of one edit sequence; the prompt is cut from the left (ours: the model window)
    max_length: int | None = None
    #: edit this layer instead of locating one (ours: for ablations and unknown families)
    layer: int | None = None
    #: run only the layers from the edited one up, from cached inputs (ours: same update, faster);
    #: ``False`` runs the whole model every step as the reference does
    fast: bool = True
    #: switch on all three EasyEdit behaviours below (reference-compatible mode)
    reference_compat: bool = False
    #: reference: KL computed under no_grad (logged, never shapes the update); None follows reference_compat
    kl_no_grad: bool | None = None
    #: reference: locate the toxic layer for the first instance only; None follows reference_compat
    locate_once: bool | None = None
    #: reference: locate on the two responses alone, padding included; None follows reference_compat
    locate_without_context: bool | None = None
    #: dotted path of the decoder layers, for families not in safeedit.lm.arch (ours)
    layers_module: str | None = None
    #: W_V's path inside a decoder layer, e.g. ``mlp.down_proj`` (ours)
    wv_module: str | None = None

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"DINM steps must be >= 0, got {self.steps}")
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"DINM layer must be >= 0, got {self.layer}")

    def flag(self, name: str) -> bool:
        value = getattr(self, name)
        return self.reference_compat if value is None else bool(value)


class DINM(Method):
    name = "dinm"
    config_class = DINMConfig

    summary = "per instance: locate the toxic layer, tune its FFN value matrix W_V on NLL + KL (the paper's method)"

    def __init__(self, config: DINMConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        self._first_layer: int | None = None  # for locate_once

    # ------------------------------------------------------------------ prompts and tokens
    def eval_prompt(self, text: str) -> str:
        return f"{text.rstrip()} {self.config.suffix}" if self.config.suffix else text

    def _sequence(self, tokenizer, window: int, prompt: str, target: str, chat: bool | None) -> TargetSequence:
        return build_sequence(tokenizer, prompt, target, chat=chat, max_length=self.config.max_length or window)

    # ------------------------------------------------------------------ public API
    def edit(self, model, tokenizer, instances: Sequence[SafeEditInstance] | SafeEditInstance, *,
             chat: bool | None = None) -> Edit:
        """Edit ``instances`` one after another (sequential editing) without restoring between them.

        ``chat``: prompt mode of the edit sequences (see :func:`safeedit.lm.chat.use_chat_template`);
        evaluate the edited model in the same mode.
        """
        if isinstance(instances, SafeEditInstance):
            instances = [instances]
        if torch.is_inference_mode_enabled():
            raise EditError("DINM needs gradients; call edit() outside torch.inference_mode()")
        arch = resolve_architecture(model, layers=self.config.layers_module, w_v=self.config.wv_module)
        edit = Edit(model=model, method=self.name)
        grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        try:
            for instance in instances:
                edit.instances.append(self._edit_one(model, tokenizer, arch, instance, edit, chat))
        except BaseException:
            edit.restore()  # leave the model exactly as before the call
            raise
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(grad_flags[n])
        return edit

    def locate(self, model, tokenizer, instance: SafeEditInstance, arch: ArchitectureMap | None = None, *,
               chat: bool | None = None) -> Location:
        """The toxic layer for ``instance`` and the per-layer distances (see locate.py)."""
        if instance.unsafe_response is None or not instance.unsafe_response.strip():
            raise DataError(f"instance {instance.key} (id={instance.id!r}) has no 'unsafe generation': "
                            "DINM needs it to locate the toxic layer (or pass layer=...)")
        arch = arch or resolve_architecture(model, layers=self.config.layers_module, w_v=self.config.wv_module)
        window = context_window(model, tokenizer)
        if self.config.flag("locate_without_context"):
            safe = tokenizer(instance.safe_response, add_special_tokens=False)["input_ids"]
            unsafe = tokenizer(instance.unsafe_response, add_special_tokens=False)["input_ids"]
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            return locate_reference(model, safe, unsafe, pad)
        prompt = self.eval_prompt(instance.adversarial_prompt)
        safe = self._sequence(tokenizer, window, prompt, instance.safe_response, chat)
        unsafe = self._sequence(tokenizer, window, prompt, instance.unsafe_response, chat)
        common = min(safe.target_start, unsafe.target_start)  # same prompt; cut alike if truncated
        prompt_ids = safe.ids[safe.target_start - common:safe.target_start]
        return locate_in_context(model, arch, prompt_ids, safe.ids[safe.target_start:], unsafe.ids[unsafe.target_start:])

    # ------------------------------------------------------------------ one instance
    def _choose_layer(self, model, tokenizer, arch, instance, chat) -> tuple[int, list[float] | None]:
        n_layers = arch.num_layers(model)
        if self.config.layer is not None:
            if not 0 <= self.config.layer < n_layers:
                raise ConfigError(f"layer {self.config.layer} out of range: this model has layers 0..{n_layers - 1}")
            return self.config.layer, None
        if self.config.flag("locate_once") and self._first_layer is not None:
            return self._first_layer, None
        location = self.locate(model, tokenizer, instance, arch, chat=chat)
        if self._first_layer is None:
            self._first_layer = location.layer
        return location.layer, location.distances

    def _edit_one(self, model, tokenizer, arch, instance: SafeEditInstance, edit: Edit, chat) -> InstanceEdit:
        cfg = self.config
        start = time.perf_counter()
        layer, distances = self._choose_layer(model, tokenizer, arch, instance, chat)
        window = context_window(model, tokenizer)
        target = self._sequence(tokenizer, window, self.eval_prompt(instance.adversarial_prompt), instance.safe_response, chat)
        kc = instance.knowledge_constraint
        constraint = self._sequence(tokenizer, window, kc.prompt, kc.answer, chat)

        weight = arch.w_v_weight(model, layer)
        edit.remember(arch.w_v_param_name(layer), weight)
        for p in model.parameters():
            p.requires_grad_(False)
        weight.requires_grad_(True)
        sequences = [target, constraint]
        runner = FastRunner(model, sequences, arch, layer) if cfg.fast else NaiveRunner(model, sequences)
        reference_logp = runner.reference_log_probs(1)  # original model on the constraint answer
        optimizer = torch.optim.Adam([weight], lr=cfg.lr, weight_decay=cfg.weight_decay)
        record = InstanceEdit(key=instance.key, details={"layer": layer, "distances": distances})
        with runner:
            for step in range(cfg.steps + 1):
                measuring_only = step == cfg.steps  # the extra pass only measures the result
                with torch.set_grad_enabled(not measuring_only):
                    nll, kl = self._loss_terms(runner, reference_logp,
                                               kl_grad=not (cfg.flag("kl_no_grad") or measuring_only))
                    total = cfg.edit_weight * nll + cfg.kl_weight * kl
                if not torch.isfinite(total.detach()):
                    raise EditError(f"non-finite loss ({total.item()}) at step {step} editing instance "
                                    f"{instance.key} (id={instance.id!r}) at layer {layer}; model restored")
                record.losses.append({"step": step, "loss": total.item(), "nll": nll.item(), "kl": kl.item()})
                if step == 0:
                    record.details["nll_before"] = nll.item()
                if measuring_only:
                    record.details["nll_after"] = nll.item()
                    break
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
        weight.grad = None
        record.seconds = time.perf_counter() - start
        return record

    @staticmethod
    def _loss_terms(runner, reference_logp: torch.Tensor, kl_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        target_logits = runner.target_logits(0)
        target_ids = runner.target_ids(0)
        nll = F.cross_entropy(target_logits.float(), target_ids)
        with torch.set_grad_enabled(kl_grad):
            logp = F.log_softmax(runner.target_logits(1).float(), dim=-1)
            # KL(p_edited || p_original), summed over the vocabulary, mean over positions
            kl = (logp.exp() * (logp - reference_logp)).sum(-1).mean()
        return nll, kl


__all__ = ["DINM", "DINMConfig", "PAPER_SUFFIX"]
