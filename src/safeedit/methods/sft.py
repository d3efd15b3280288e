"""``sft``: supervised fine-tuning on the training split (a trained-once baseline of the DINM paper).

Prompt = the adversarial input (formatted in the bench's prompt mode), completion = the safe
response; the loss is the NLL of the completion only (trl ``SFTTrainer``, ``completion_only_loss``).
LoRA (peft, merged into the weights afterwards) or full fine-tuning, selected by ``lora``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from safeedit.data.schema import SafeEditInstance
from safeedit.methods.base import Method
from safeedit.methods.training import (
    TrainOptions, add_lora, check_training_set, cleanup_trainer_dir, finish_lora, load_weights, loss_log_callback,
    lora_deltas, prompt_of, response_of, remove_lora, run_trainer, save_weights, train_dataset, trainer_args, trainer_guard)


@dataclass
class SFTConfig(TrainOptions):
    """SFT options. The DINM paper (Wang et al. 2024) trains SFT on SafeEdit's training split but does
    not publish its hyper-parameters; these defaults are common LoRA SFT values for 7B chat models
    (lr 1e-4 as in alpaca-lora, r 16 / alpha 32 / dropout 0.05 as Ext-Sub's authors use), 1 epoch."""

    #: peak learning rate (1e-4: a usual LoRA SFT value; use ~1e-5 with ``lora: false``)
    lr: float = 1e-4
    #: passes over the training split
    epochs: float = 1.0
    #: True: LoRA (peft) merged into the weights afterwards; False: full fine-tuning
    lora: bool = True
    #: LoRA targets (attention query/value, the alpaca-lora/Ext-Sub choice)
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


def train_sft(model, tokenizer, rows: list[dict[str, str]], options: TrainOptions, out_dir: Path, method: str,
              merge: bool = True) -> dict[str, Any]:
    """Train ``model`` on prompt/completion ``rows`` (loss on the completion only).

    Returns ``{"steps": step log, "changed": names of the changed weights}``. With LoRA and
    ``merge`` the adapter is merged into the weights; with ``merge=False`` the model is left as it was
    and ``"deltas"`` holds each adapted weight's ``B·A·scaling`` (Ext-Sub combines two of them).
    """
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    seed = torch.initial_seed() % 2**32
    out: dict[str, Any] = {}
    with trainer_guard(model, tokenizer):
        target = add_lora(model, options) if options.lora else model
        log = loss_log_callback(method)
        args = TrlSFTConfig(**trainer_args(options, out_dir, model, seed, max_length=options.max_length,
                                           completion_only_loss=True, packing=False))
        trainer = SFTTrainer(model=target, args=args, train_dataset=train_dataset(rows), processing_class=tokenizer,
                             callbacks=[log])
        out["steps"] = run_trainer(trainer, method, log)
        if not options.lora:
            out["changed"] = [n for n, _ in model.named_parameters()]
        elif merge:
            out["changed"] = finish_lora(target)[1]
        else:
            out["deltas"] = lora_deltas(target)
            out["changed"] = sorted(out["deltas"])
            remove_lora(target)
    cleanup_trainer_dir(out_dir)
    return out


class SFT(Method):
    name = "sft"
    config_class = SFTConfig
    per_instance = False
    requires_training = True
    summary = "supervised fine-tuning on (adversarial input -> safe response), LoRA or full, trained once"

    def fit(self, model, tokenizer, train: Sequence[SafeEditInstance], *, chat: bool | None = None,
            out_dir: Path) -> dict[str, Any]:
        train = check_training_set(train, self.name)
        rows = []
        for inst in train:
            prompt = prompt_of(tokenizer, inst, chat)
            rows.append({"prompt": prompt, "completion": response_of(prompt, inst.safe_response)})
        trained = train_sft(model, tokenizer, rows, self.config, Path(out_dir), self.name)
        names = trained["changed"]
        save_weights(model, names, out_dir, {"method": self.name})
        return {"losses": trained["steps"], "examples": len(rows), "mode": "lora" if self.config.lora else "full",
                "changed_tensors": len(names), "config": asdict(self.config)}

    def load_fitted(self, model, tokenizer, out_dir: Path) -> None:
        load_weights(model, out_dir)
