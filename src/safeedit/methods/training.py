"""Training plumbing shared by the trained-once baselines (SFT, DPO, RLHF, Ext-Sub).

One place for what every trl-based baseline needs:

* :class:`TrainOptions` -- the options every trainer takes (learning rate, epochs/steps, batch,
  LoRA shape); each method's config subclasses it with its own documented defaults.
* :func:`check_training_set` -- refuse an empty or too-small training set, or one without unsafe
  responses where a method needs them, with one line naming the culprit.
* :func:`prompt_of` -- the training prompt is the adversarial input formatted exactly as the bench
  will show it at evaluation time (chat template or raw text, :func:`safeedit.lm.chat.format_prompt`).
* :func:`trainer_args` -- the trl config keywords (fp32, no checkpoints written, loss every step).
* :class:`LossLog` -- a trainer callback keeping every logged step and stopping on a NaN/inf loss.
* :func:`add_lora` / :func:`lora_deltas` / :func:`remove_lora` / :func:`add_deltas` -- peft LoRA on
  and off, and a LoRA merged into the weights as ``W += B·A·scaling`` (``get_delta_weight``).
* :func:`save_weights` / :func:`load_weights` -- the artefact: the final values of every tensor
  training changed, as safetensors, so :meth:`Method.load_fitted` reproduces the weights bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from safeedit.data.schema import SafeEditInstance
from safeedit.errors import DataError, RunFailedError

#: fewer training instances than this is refused (one gradient step teaches nothing measurable)
MIN_TRAIN_INSTANCES = 2
#: the artefact file every weight-changing baseline writes
WEIGHTS_FILE = "weights.safetensors"


class TrainingFailedError(RunFailedError):
    """Training could not finish (a NaN/inf loss); nothing is saved."""


@dataclass
class TrainOptions:
    """Options every trained-once baseline shares. Subclasses override the defaults with their
    own sources (the paper or the method's authors) and say so per field."""

    #: peak learning rate (AdamW)
    lr: float = 1e-5
    #: passes over the training split (ignored when ``max_steps`` > 0)
    epochs: float = 1.0
    #: stop after this many optimiser steps (0: run ``epochs``); CPU configs use it to bound time
    max_steps: int = 0
    #: training examples per forward pass
    batch_size: int = 4
    #: forward passes accumulated per optimiser step (effective batch = batch_size x this)
    grad_accum: int = 1
    #: longest training sequence in tokens (prompt + response); longer ones are truncated
    max_length: int = 1024
    #: AdamW weight decay
    weight_decay: float = 0.0
    #: share of steps (a number < 1) or number of steps (>= 1) spent warming the learning rate up
    warmup_ratio: float = 0.0
    #: learning-rate schedule (transformers names: linear, cosine, constant, ...)
    lr_scheduler: str = "linear"
    #: True: train LoRA adapters (peft) and merge them into the weights; False: full fine-tuning
    lora: bool = True
    #: LoRA rank
    lora_r: int = 16
    #: LoRA alpha (scaling = alpha / r)
    lora_alpha: int = 32
    #: LoRA dropout
    lora_dropout: float = 0.05
    #: module names LoRA adapts (peft ``target_modules``)
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    #: decoder layers LoRA adapts (peft ``layers_to_transform``; None: all). Adapting only the top
    #: layers keeps the backward pass short; the CPU configs use it to fit the time budget
    lora_layers: list[int] | None = None


def check_training_set(train: Sequence[SafeEditInstance], method: str, *, need_unsafe: bool = False,
                       minimum: int = MIN_TRAIN_INSTANCES) -> list[SafeEditInstance]:
    """The instances a method can train on, or a :class:`DataError` naming what is missing."""
    train = list(train)
    if not train:
        raise DataError(f"{method}: the training set is empty")
    if len(train) < minimum:
        raise DataError(f"{method}: the training set has {len(train)} instance(s); at least {minimum} are needed")
    no_safe = [i.key for i in train if not (i.safe_response or "").strip()]
    if no_safe:
        raise DataError(f"{method}: training instance {no_safe[0]} has no safe response "
                        f"({len(no_safe)} instance(s) without one)")
    if need_unsafe:
        usable = [i for i in train if (i.unsafe_response or "").strip()]
        if not usable:
            raise DataError(f"{method}: none of the {len(train)} training instances has an unsafe response "
                            f"(field 'unsafe generation'); {method} trains on safe/unsafe pairs")
        if len(usable) < minimum:
            raise DataError(f"{method}: only {len(usable)} training instance(s) have an unsafe response; "
                            f"at least {minimum} are needed")
        train = usable
    return train


def prompt_of(tokenizer, inst: SafeEditInstance, chat: bool | None) -> str:
    """The adversarial input as the model sees it at evaluation time (same prompt mode)."""
    from safeedit.lm.chat import format_prompt

    return format_prompt(tokenizer, inst.adversarial_prompt, chat=chat)


def response_of(prompt: str, response: str) -> str:
    """The training target as it follows ``prompt``: chat prompts end with the assistant header;
    a raw-text prompt gets one space first, so the last prompt word and the first response word
    are not tokenized as one."""
    if prompt and not prompt[-1].isspace() and response and not response[0].isspace():
        return " " + response
    return response


def trainer_args(options: TrainOptions, out_dir: Path, model, seed: int, **extra) -> dict[str, Any]:
    """Keywords for a trl ``*Config``: float32 (``bf16=False``), loss logged every step, nothing
    checkpointed (the artefact is written by the method), progress bar on."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    args = dict(
        output_dir=str(out_dir / "trainer"), learning_rate=options.lr, num_train_epochs=options.epochs,
        max_steps=options.max_steps if options.max_steps > 0 else -1,
        per_device_train_batch_size=options.batch_size, gradient_accumulation_steps=options.grad_accum,
        weight_decay=options.weight_decay, warmup_steps=options.warmup_ratio,
        lr_scheduler_type=options.lr_scheduler, logging_steps=1, save_strategy="no", report_to="none",
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=on_cpu, seed=seed, data_seed=seed,
        dataloader_num_workers=0, disable_tqdm=False, logging_nan_inf_filter=False,
    )
    args.update(extra)
    return args


def _is_bad(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isfinite(value)


def loss_log_callback(method: str):
    """A ``TrainerCallback`` (built lazily: transformers is imported only when training)."""
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        """Every logged step (loss, lr, rewards ...); a NaN/inf loss stops training with an error."""

        def __init__(self):
            self.steps: list[dict[str, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "train_runtime" in logs:  # the end-of-training summary, not a step
                return
            row = {"step": state.global_step, **{k: float(v) for k, v in logs.items()
                                                   if isinstance(v, (int, float))}}
            if "loss" in logs and _is_bad(logs["loss"]):
                raise TrainingFailedError(f"{method}: loss is {logs['loss']} at step {state.global_step} "
                                          f"(lr {logs.get('learning_rate', '?')}); lower the learning rate")
            self.steps.append(row)

    return LossLog()


@contextlib.contextmanager
def trainer_guard(model, tokenizer) -> Iterator[None]:
    """Undo what trainers change on the model and tokenizer besides the weights: train mode,
    ``use_cache``, ``requires_grad`` flags, an instance-level ``forward`` patch (trl's fused LM
    head), the tokenizer's padding side and pad token."""
    was_training = model.training
    use_cache = getattr(model.config, "use_cache", None)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    had_forward = "forward" in model.__dict__
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    try:
        yield
    finally:
        if not had_forward:
            model.__dict__.pop("forward", None)
        if use_cache is not None:
            model.config.use_cache = use_cache
        for n, p in model.named_parameters():
            if n in grads:
                p.requires_grad_(grads[n])
        model.train(was_training)
        tokenizer.padding_side, tokenizer.pad_token = padding_side, pad_token


def run_trainer(trainer, method: str, log) -> list[dict[str, float]]:
    """``trainer.train()``; the per-step log; refuse a run whose loss was never finite."""
    trainer.train()
    losses = [row for row in log.steps if "loss" in row]
    if not losses:
        raise TrainingFailedError(f"{method}: training logged no loss (no step ran)")
    return log.steps


def train_dataset(rows: list[dict[str, str]]):
    from datasets import Dataset

    return Dataset.from_list(rows)


# ---------------------------------------------------------------- LoRA on, off and merged
def add_lora(model, options: TrainOptions, adapter: str = "default"):
    """``model`` wrapped in a peft LoRA model (the base model's modules are adapted in place)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                        target_modules=list(options.lora_targets), bias="none", task_type="CAUSAL_LM",
                        layers_to_transform=list(options.lora_layers) if options.lora_layers else None)
    try:
        return get_peft_model(model, config, adapter_name=adapter)
    except ValueError as exc:  # e.g. target modules not found in this architecture
        from safeedit.errors import ConfigError

        raise ConfigError(f"LoRA on {type(model).__name__} failed (lora_targets={options.lora_targets}): {exc}") from exc


def lora_deltas(peft_model, adapter: str = "default") -> dict[str, torch.Tensor]:
    """``{base weight name: B·A·scaling}`` for every LoRA-adapted module (peft ``get_delta_weight``).

    The names are those of the plain model's ``named_parameters`` (``model.layers.0.self_attn.q_proj.weight``).
    """
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    out = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and adapter in module.lora_A:
                out[f"{name}.weight"] = module.get_delta_weight(adapter).detach().clone()
    if not out:
        raise RunFailedError(f"no LoRA module holds adapter {adapter!r}")
    return out


def remove_lora(peft_model):
    """The plain model back, LoRA layers removed without merging (peft ``unload``)."""
    return peft_model.unload()


def add_deltas(model, deltas: dict[str, torch.Tensor]) -> None:
    """``W += delta`` for each named weight, in place, in the weight's dtype."""
    params = dict(model.named_parameters())
    missing = sorted(set(deltas) - set(params))
    if missing:
        raise RunFailedError(f"delta for unknown weight {missing[0]}")
    with torch.no_grad():
        for name, delta in deltas.items():
            params[name].add_(delta.to(params[name].dtype))


# ---------------------------------------------------------------- the artefact
def save_weights(model, names: Sequence[str], out_dir: Path, meta: dict[str, str] | None = None) -> Path:
    """The current values of the named weights in ``out_dir/weights.safetensors``."""
    from safetensors.torch import save_file

    params = dict(model.named_parameters())
    tensors = {n: params[n].detach().to("cpu").contiguous().clone() for n in names}
    path = Path(out_dir) / WEIGHTS_FILE
    save_file(tensors, str(path), metadata={k: str(v) for k, v in (meta or {}).items()})
    return path


def load_weights(model, out_dir: Path) -> list[str]:
    """Copy the saved weights into ``model`` (bit for bit); returns their names."""
    from safetensors.torch import load_file

    from safeedit.errors import InputNotFoundError

    path = Path(out_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise InputNotFoundError(f"trained artefact missing: {path}")
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise RunFailedError(f"{path} holds weight {unknown[0]!r}, which this model does not have")
    with torch.no_grad():
        for name, value in tensors.items():
            if tuple(value.shape) != tuple(params[name].shape):
                raise RunFailedError(f"{path}: {name} has shape {tuple(value.shape)}, the model's is "
                                     f"{tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    return sorted(tensors)


def cleanup_trainer_dir(out_dir: Path) -> None:
    """Trainers create ``output_dir`` even when they save nothing; keep the artefact folder clean."""
    shutil.rmtree(Path(out_dir) / "trainer", ignore_errors=True)


def finish_lora(peft_model, adapter: str = "default"):
    """Merge a trained LoRA into the weights (``W += B·A·scaling``); the plain model and the delta names."""
    deltas = lora_deltas(peft_model, adapter)
    model = remove_lora(peft_model)
    add_deltas(model, deltas)
    return model, sorted(deltas)
