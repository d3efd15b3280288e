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
full model with full logits every step, as the reference does; both give the same update. The
grouped edit (:meth:`DINM.group_edit`) goes one step further where the layer allows it: only W_V
changes inside layer L too, so its steps start from W_V's cached input and the residual around it
(``_GroupRunner``'s value tail).

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from safeedit.data.schema import SafeEditInstance
from safeedit.lm.arch import ArchitectureMap, resolve_architecture
from safeedit.errors import ConfigError, DataError
from safeedit.lm.forward_args import keep_last_logits, logits_to_keep_arg
from safeedit.lm.generation import context_window
from safeedit.lm.layer_bypass import (capturing_layer_input, capturing_module_io, layer_returns_tuple,
                                      output_adds_module_output, run_after_layer, run_from_layer)
from safeedit.lm.rowwise import RowWiseLinear, swap_module
from safeedit.methods.base import Edit, EditError, GroupEdit, InstanceEdit, Method
from safeedit.methods.locate import Location, PromptReuse, locate_in_context, locate_reference
from safeedit.methods.losses import kl_to_reference
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
        #: group_key's locations: layer, distances, seconds, hidden states entering the layer (target)
        self._planned: dict[str, tuple] = {}
        self._last_location: Location | None = None
        #: the last located prompt's states, during group_keys only (see locate.PromptReuse)
        self._reuse: PromptReuse | None = None
        self.location_reused_tokens = 0  # prompt tokens location took from the previous prompt's states

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
        arch = resolve_architecture(model, layers=self.config.layers_module, w_v=self.config.wv_module)
        return self._edit_each(model, instances, lambda instance, edit: self._edit_one(model, tokenizer, arch, instance,
                                                                                        edit, chat))

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
        return locate_in_context(model, arch, prompt_ids, safe.ids[safe.target_start:], unsafe.ids[unsafe.target_start:],
                                 reuse=self._reuse)

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
        self._last_location = location
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
            # KL(p_edited || p_original), summed over the vocabulary, mean over positions
            kl = kl_to_reference(runner.target_logits(1).float(), reference_logp).mean()
        return nll, kl


    # ------------------------------------------------------------------ grouped editing
    @property
    def supports_grouping(self) -> bool:
        return bool(self.config.fast)  # the grouped loop is the fast path, batched

    def group_keys(self, model, tokenizer, instances: Sequence[SafeEditInstance], *,
                   chat: bool | None = None) -> list[tuple[int, float]]:
        """:meth:`group_key` of each instance (in order, with its seconds), located in the order of
        their formatted prompts: SafeEdit's adversarial prompts share long attack templates, and a
        location prefills only the prompt tokens after those it shares with the previous prompt
        (:class:`~safeedit.methods.locate.PromptReuse`; the sample's first 32 instances: 3,083 prompt
        tokens reused, 0.65 s per location instead of 0.81 s). Same layers and distances as one by
        one, up to float rounding."""
        from safeedit.lm.prefix import supports_prefix_reuse  # one full-attention cache layer per layer

        instances = list(instances)
        order = sorted(range(len(instances)), key=lambda k: self.eval_prompt(instances[k].adversarial_prompt))
        self._reuse = PromptReuse() if supports_prefix_reuse(model) else None
        try:
            keyed = super().group_keys(model, tokenizer, [instances[k] for k in order], chat=chat)
        finally:
            if self._reuse is not None:
                self.location_reused_tokens += self._reuse.reused_tokens
            self._reuse = None
        out: list[tuple[int, float]] = [None] * len(instances)  # type: ignore[list-item]
        for k, key_and_seconds in zip(order, keyed):
            out[k] = key_and_seconds
        return out

    def group_key(self, model, tokenizer, instance: SafeEditInstance, *, chat: bool | None = None) -> int:
        """The toxic layer (located now, on the unedited model, and kept for :meth:`group_edit`).

        In-context location already ran prompt + safe response, the edit's target sequence, through
        the unedited model: the hidden states entering the toxic layer are kept, so the grouped edit
        does not run that sequence again.
        """
        if instance.key not in self._planned:
            arch = resolve_architecture(model, layers=self.config.layers_module, w_v=self.config.wv_module)
            start = time.perf_counter()
            self._last_location = None
            layer, distances = self._choose_layer(model, tokenizer, arch, instance, chat)
            location, self._last_location = self._last_location, None
            target_input = None
            if location is not None and location.safe_layer_input is not None and location.layer == layer:
                target = self._sequence(tokenizer, context_window(model, tokenizer),
                                        self.eval_prompt(instance.adversarial_prompt), instance.safe_response, chat)
                if location.safe_layer_input.shape[1] == len(target.ids):  # the same sequence, not cut otherwise
                    target_input = location.safe_layer_input[0]
            self._planned[instance.key] = (layer, distances, time.perf_counter() - start, target_input)
        return self._planned[instance.key][0]

    def group_edit(self, model, tokenizer, instances: Sequence[SafeEditInstance], *,
                   chat: bool | None = None, loss_rows: int | None = None,
                   value_tail: bool | None = None) -> "DINMGroupEdit":
        """Edit K instances with the same toxic layer L independently and simultaneously.

        K copies of W_V are stacked into one trainable ``[K, ...]`` tensor that stands in for layer
        L's W_V (:class:`~safeedit.lm.rowwise.RowWiseLinear`: row k of a batch uses copy k). Each
        step runs a chunk's target sequences (and its constraint sequences) as one batch from the
        cached inputs of layer L, sums the chunk's per-instance losses and steps one Adam over its
        copies. Row k's loss depends only on copy k, and Adam is element-wise, so copy k follows
        exactly the trajectory of ``edit(model, tok, [instance_k])`` (up to float summation order).
        Sequences are right-padded: causal attention never lets a real token see the padding, and
        positions stay those of the unpadded sequence. The model's tensors are never written.

        ``loss_rows``: instances edited together (a chunk); chunks are edited one after the other, all
        steps of one before the next, so it changes memory and speed, not the result, and memory
        holds one chunk's [tokens x vocabulary] KL reference and logits, not the group's. None: 1 on
        a CPU (a CPU gains nothing from a bigger batch there, and the group's memory stays that of
        one instance whatever K), the whole group on an accelerator (one batched pass per step is
        about 3x faster on an H200, benchmarks/gpu_check.sh).

        ``value_tail``: steps compute layer L's output as the cached residual + W_V(cached input)
        instead of running layer L (see ``_GroupRunner``); None: wherever the model's layer has that
        form (checked), False: run layer L every step. Same update up to float rounding.
        """
        instances = list(instances)
        if not instances:
            raise EditError("group_edit needs at least one instance")
        if torch.is_inference_mode_enabled():
            raise EditError("DINM needs gradients; call group_edit() outside torch.inference_mode()")
        cfg = self.config
        arch = resolve_architecture(model, layers=cfg.layers_module, w_v=cfg.wv_module)
        start = time.perf_counter()
        # instances not located by an earlier group_key(s) call are located here, inside this timer
        missing = [inst for inst in instances if inst.key not in self._planned]
        located_here = sum(seconds for _, seconds in self.group_keys(model, tokenizer, missing, chat=chat))
        chosen = [self._planned[inst.key] for inst in instances]
        for inst in instances:
            self._planned.pop(inst.key, None)
        layers = sorted({c[0] for c in chosen})
        if len(layers) != 1:
            raise EditError(f"group_edit needs instances with one toxic layer, got layers {layers}; group by group_key()")
        layer = layers[0]
        located_s = [c[2] for c in chosen]
        window = context_window(model, tokenizer)
        targets = [self._sequence(tokenizer, window, self.eval_prompt(i.adversarial_prompt), i.safe_response, chat)
                   for i in instances]
        constraints = [self._sequence(tokenizer, window, i.knowledge_constraint.prompt, i.knowledge_constraint.answer, chat)
                       for i in instances]
        k_count = len(instances)
        base = arch.w_v_module(model, layer)
        stacked = base.weight.detach().unsqueeze(0).repeat(k_count, *([1] * base.weight.dim()))
        records = [InstanceEdit(key=i.key, details={"layer": layer, "distances": c[1], "group_size": k_count})
                   for i, c in zip(instances, chosen)]
        grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        module_name = f"{arch.layers}.{layer}.{arch.w_v}"
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            known = [c[3] for c in chosen]
            if loss_rows is None:
                loss_rows = 1 if base.weight.device.type == "cpu" else k_count
            if loss_rows < 1:
                raise EditError(f"loss_rows must be >= 1, got {loss_rows}")
            chunks = [list(range(c, min(c + loss_rows, k_count))) for c in range(0, k_count, loss_rows)]
            batches, known_inputs = [], {}
            for c, rows in enumerate(chunks):
                batches += [[targets[k] for k in rows], [constraints[k] for k in rows]]
                if all(known[k] is not None for k in rows):
                    known_inputs[2 * c] = [known[k] for k in rows]
            runner = _GroupRunner(model, arch, layer, batches, known_inputs=known_inputs, value_tail=value_tail)
            # chunk by chunk, all steps of a chunk before the next: a chunk's copies see only their own
            # losses and Adam is element-wise, so this is the trajectory of one optimiser over all K,
            # while only one chunk's layer inputs and [tokens x vocabulary] KL reference are alive
            for c, rows in enumerate(chunks):
                runner.prepare(2 * c, 2 * c + 1)  # the unedited model's passes, before the swap below
                reference = runner.reference_log_probs(2 * c + 1)
                part = torch.nn.Parameter(stacked[rows])  # indexing by a list copies
                optimizer = torch.optim.Adam([part], lr=cfg.lr, weight_decay=cfg.weight_decay)
                wrapper = RowWiseLinear(base, part, list(range(len(rows))), transposed=arch.w_v_transposed)
                with runner, swap_module(model, module_name, wrapper):
                    for step in range(cfg.steps + 1):
                        measuring_only = step == cfg.steps
                        optimizer.zero_grad(set_to_none=True)
                        with torch.set_grad_enabled(not measuring_only):
                            nll, kl = self._group_loss_terms(runner, 2 * c, reference,
                                                             kl_grad=not (cfg.flag("kl_no_grad") or measuring_only))
                            total = cfg.edit_weight * nll + cfg.kl_weight * kl  # row j = instance rows[j]'s loss
                        finite = torch.isfinite(total.detach())
                        if not bool(finite.all()):
                            j = int((~finite).nonzero()[0, 0])
                            bad = instances[rows[j]]
                            raise EditError(f"non-finite loss ({total[j].item()}) at step {step} editing "
                                            f"instance {bad.key} (id={bad.id!r}) at layer {layer} "
                                            f"in a group of {k_count}; model unchanged")
                        for j, k in enumerate(rows):
                            rec = records[k]
                            rec.losses.append({"step": step, "loss": total[j].item(), "nll": nll[j].item(),
                                               "kl": kl[j].item()})
                            if step == 0:
                                rec.details["nll_before"] = nll[j].item()
                            if measuring_only:
                                rec.details["nll_after"] = nll[j].item()
                        if not measuring_only:
                            total.sum().backward()
                            optimizer.step()
                stacked[rows] = part.detach()
                del reference, part, optimizer, wrapper
                runner.release(2 * c, 2 * c + 1)
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(grad_flags[n])
        # an instance's seconds: its share of the group's edit plus its own location, wherever it ran
        shared = (time.perf_counter() - start - located_here) / k_count
        for rec, loc in zip(records, located_s):
            rec.seconds = shared + loc
        return DINMGroupEdit(model, self.name, records, arch, layer, stacked)

    @staticmethod
    def _group_loss_terms(runner: "_GroupRunner", b: int, reference: list[torch.Tensor], kl_grad: bool):
        """Per-row NLL on the targets of batch ``b`` and KL on the constraints of batch ``b + 1``."""
        nll = torch.stack([F.cross_entropy(logits.float(), ids)
                           for logits, ids in zip(runner.target_logits(b), runner.target_ids(b))])
        with torch.set_grad_enabled(kl_grad):
            kls = []
            for logits, ref in zip(runner.target_logits(b + 1), reference):
                kls.append(kl_to_reference(logits.float(), ref).mean())
            kl = torch.stack(kls)
        return nll, kl


class DINMGroupEdit(GroupEdit):
    """K DINM edits of one layer's W_V, held as a stacked ``[K, ...]`` tensor beside the model."""

    def __init__(self, model, method: str, instances: list[InstanceEdit], arch: ArchitectureMap, layer: int,
                 weights: torch.Tensor):
        super().__init__(model, method, instances)
        self.arch, self.layer, self.weights = arch, layer, weights
        self.lowest_changed_layer = layer
        self.module_name = f"{arch.layers}.{layer}.{arch.w_v}"

    @contextmanager
    def rows(self, owners):
        wrapper = RowWiseLinear(self.arch.w_v_module(self.model, self.layer), self.weights, owners,
                                transposed=self.arch.w_v_transposed)
        with swap_module(self.model, self.module_name, wrapper):
            yield wrapper

    def apply(self, k: int) -> Edit:
        edit = Edit(model=self.model, method=self.method)
        weight = self.arch.w_v_weight(self.model, self.layer)
        edit.remember(self.arch.w_v_param_name(self.layer), weight)
        with torch.no_grad():
            weight.copy_(self.weights[k])
        edit.instances.append(self.instances[k])
        return edit


class _GroupRunner(FastRunner):
    """The fast path for a batch: K right-padded sequences per batch, layers >= L from cached inputs.

    ``batches[b]`` holds K sequences (row k belongs to instance k). Logits are computed only at each
    row's own scored positions.

    ``value_tail`` (default: wherever it holds): when layer L's output is a residual plus W_V's output
    (:func:`~safeedit.lm.layer_bypass.output_adds_module_output`), nothing in layer L but W_V changes
    during the edit, so W_V's input and the residual around it are cached too and a step computes
    layer L's output as residual + W_V(input): layer L's attention and the rest of its MLP are not
    run again. At the last layer only the scored positions are kept, so a step is W_V, the final norm
    and the output layer at those positions alone. Equal to running layer L up to float rounding (the
    residual is recovered as output - W_V output, in float32).
    """

    def __init__(self, model, arch: ArchitectureMap, layer: int, batches: list[list[TargetSequence]],
                 known_inputs: dict[int, list[torch.Tensor]] | None = None, value_tail: bool | None = None):
        self.model = model
        self._w_v = lambda: arch.w_v_module(model, layer)  # looked up per call: the edit swaps the module
        self.layers = arch.decoder_layers(model)
        if value_tail is None:
            value_tail = output_adds_module_output(model, self.layers, layer, self._w_v())
        self.value_tail = bool(value_tail)
        self._last = layer == len(self.layers) - 1
        self._tails: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # batch -> (W_V input, residual)
        self._active_output: torch.Tensor | None = None
        self._known = known_inputs or {}  # batch -> per-row inputs of layer L already computed
        self.device = next(model.parameters()).device
        self.layer = layer
        self.batches = batches
        self._handles: list = []
        self._active_input: torch.Tensor | None = None
        self._keep_arg = logits_to_keep_arg(model)
        self._padded: list[torch.Tensor] = []
        self._first: list[int] = []
        for seqs in batches:
            width = max(len(s.ids) for s in seqs)
            ids = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, :len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
                ids[row, len(s.ids):] = s.ids[-1]  # right padding: never seen by a real token
            self._padded.append(ids.to(self.device))
            self._first.append(min(s.target_start for s in seqs) - 1)
        # computed on demand (prepare), so a caller working through the batches in turn holds one
        # batch's layer inputs and unedited logits at a time
        self._layer_inputs: dict[int, torch.Tensor] = {}
        self._initial_logits: dict[int, list[torch.Tensor]] = {}
        self._returns_tuple = False
        if self.value_tail:  # known inputs run from layer L before any full pass has shown the type
            with torch.no_grad():
                self._returns_tuple = layer_returns_tuple(self.layers[0], lambda: model(
                    input_ids=torch.zeros((1, 1), dtype=torch.long, device=self.device), use_cache=False))

    def prepare(self, *bs: int) -> None:
        """Cache the inputs of layer L (and the unedited logits) of batches ``bs``: one unedited
        no-grad pass each, unless their inputs were given; call it outside the runner's context.
        With ``value_tail``, W_V's input and the residual around it replace layer L's input."""
        if self._handles:
            raise RuntimeError("_GroupRunner.prepare runs the unedited model: call it outside the runner's context")
        tail_hooks = capturing_module_io(self.layers[self.layer], self._w_v()) if self.value_tail else nullcontext({})
        with tail_hooks as tail, capturing_layer_input(self.layers, self.layer) as seen, torch.no_grad():
            for b in bs:
                if b in self._layer_inputs:
                    continue
                if b in self._known:  # right-pad the known rows; no forward, no initial logits needed
                    rows = self._known[b]
                    padded = rows[0].new_zeros((len(rows), self._padded[b].shape[1], rows[0].shape[-1]))
                    for i, x in enumerate(rows):
                        padded[i, :x.shape[0]] = x
                    self._initial_logits[b] = []
                    self._layer_inputs[b] = padded
                    if self.value_tail:  # layer L and up over the known inputs, once, for W_V's input
                        with run_from_layer(self.layers, self.layer, lambda: padded, self._returns_tuple):
                            self.model(input_ids=self._padded[b], use_cache=False, **keep_last_logits(self.model))
                        self._keep_tail(b, tail)
                    continue
                self._initial_logits[b] = self._batch_forward(b)
                self._layer_inputs[b] = seen["input"]
                if self.value_tail:
                    self._keep_tail(b, tail)
        if "tuple" in seen:
            self._returns_tuple = bool(seen["tuple"])

    def _keep_tail(self, b: int, seen: dict[str, torch.Tensor]) -> None:
        """Batch ``b``'s W_V input and residual (output - W_V output, float32): every position, or at
        the last layer the scored ones only (row-packed from column 0, the rest zero)."""
        a, residual = seen.pop("input"), seen.pop("layer_output").float() - seen.pop("output").float()
        if self._last:
            spans = self._spans(b)
            width = max(e - s for s, e in spans)
            a_kept = a.new_zeros((len(spans), width, a.shape[-1]))
            r_kept = residual.new_zeros((len(spans), width, residual.shape[-1]))
            for row, (s, e) in enumerate(spans):
                a_kept[row, :e - s], r_kept[row, :e - s] = a[row, s:e], residual[row, s:e]
            a, residual = a_kept, r_kept
        self._tails[b] = (a, residual)
        self._layer_inputs[b] = a  # layer L's input is not needed any more (marks the batch prepared)

    def _spans(self, b: int) -> list[tuple[int, int]]:
        """Per row: the columns whose logits predict its target tokens."""
        return [(s.target_start - 1, len(s.ids) - 1) for s in self.batches[b]]

    def __enter__(self):
        if not self.value_tail:
            return super().__enter__()
        # layers below L pass through, layer L returns residual + W_V(input) computed per step
        self._bypass = run_after_layer(self.layers, self.layer, lambda: self._active_output, self._returns_tuple)
        self._bypass.__enter__()
        self._handles.append(self._bypass)
        return self

    def release(self, *bs: int) -> None:
        """Drop what :meth:`prepare` cached for batches ``bs``."""
        for b in bs:
            self._layer_inputs.pop(b, None)
            self._initial_logits.pop(b, None)
            self._tails.pop(b, None)

    def _batch_forward(self, b: int, packed: bool = False) -> list[torch.Tensor]:
        """Per-row logits at that row's scored positions. The output layer sees only those positions
        (a pre-hook gathers them): rows of different lengths would otherwise cost logits over the span
        from the earliest scored position of any row to the end, for every row. ``packed``: the input
        holds only the scored positions, row-packed from column 0 (value tail at the last layer)."""
        if packed:
            spans = [(0, e - s) for s, e in self._spans(b)]
            ids = self._padded[b][:, :max(e for _, e in spans)]  # any ids: no layer reads their embeddings
            keep = {self._keep_arg: ids.shape[1]} if self._keep_arg else {}
        else:
            ids = self._padded[b]
            keep = {self._keep_arg: ids.shape[1] - self._first[b]} if self._keep_arg else {}
            spans = self._spans(b)
        head = self.model.get_output_embeddings()
        if head is None:
            logits = self.model(input_ids=ids, use_cache=False, **keep).logits
            offset = ids.shape[1] - logits.shape[1]
            return [logits[row, a - offset:e - offset] for row, (a, e) in enumerate(spans)]

        def gather(_module, args):
            hidden = args[0]
            offset = ids.shape[1] - hidden.shape[1]  # positions before the kept ones
            picked = torch.cat([hidden[row, a - offset:e - offset] for row, (a, e) in enumerate(spans)])
            return (picked.unsqueeze(0), *args[1:])

        handle = head.register_forward_pre_hook(gather)
        try:
            logits = self.model(input_ids=ids, use_cache=False, **keep).logits[0]
        finally:
            handle.remove()
        return list(logits.split([e - a for a, e in spans]))

    def reference_log_probs(self, b: int) -> list[torch.Tensor]:
        """The unedited model's log-probabilities on batch ``b``; once per batch, as the cached logits
        are dropped here (they would double the [tokens x vocabulary] memory of the references)."""
        self.prepare(b)
        logits, self._initial_logits[b] = self._initial_logits[b], []
        return [F.log_softmax(x.float(), dim=-1) for x in logits]

    def target_ids(self, b: int) -> list[torch.Tensor]:
        return [torch.tensor(s.ids[s.target_start:], device=self.device) for s in self.batches[b]]

    def target_logits(self, b: int) -> list[torch.Tensor]:
        if not self._handles:
            raise RuntimeError("_GroupRunner.target_logits is only valid inside its context")
        if b not in self._layer_inputs:
            raise RuntimeError(f"_GroupRunner batch {b} is not prepared (call prepare({b}) before the context)")
        if not self.value_tail:
            self._active_input = self._layer_inputs[b]
            return self._batch_forward(b)
        a, residual = self._tails[b]
        self._active_output = (residual + self._w_v()(a).float()).to(a.dtype)
        try:
            return self._batch_forward(b, packed=self._last)
        finally:
            self._active_output = None


__all__ = ["DINM", "DINMConfig", "DINMGroupEdit", "PAPER_SUFFIX"]
