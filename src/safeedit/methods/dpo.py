"""``dpo``: direct preference optimisation on the training split (a trained-once baseline of the
DINM paper): prompt = the adversarial input, chosen = the safe response, rejected = the unsafe one
(trl ``DPOTrainer``, sigmoid loss).

The reference model is the model before training: with LoRA, the same model with the adapter
switched off; with full fine-tuning, its log-probabilities are computed once before the first step
(``precompute_ref_log_probs``), so no second copy of the model is held in memory.
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
    prompt_of, response_of, run_trainer, save_weights, train_dataset, trainer_args, trainer_guard)


@dataclass
class DPOConfig(TrainOptions):
    """DPO options. The DINM paper trains DPO on SafeEdit's training split without publishing its
    hyper-parameters; beta 0.1 is the DPO paper's (Rafailov et al. 2023) and trl's default, lr 5e-6
    a usual LoRA DPO value (use ~5e-7 for full fine-tuning of a 7B model), 1 epoch."""

    #: peak learning rate
    lr: float = 5e-6
    #: DPO temperature beta: strength of the implicit KL to the reference model (Rafailov et al. 2023)
    beta: float = 0.1
    #: passes over the training split
    epochs: float = 1.0
    #: True: LoRA (peft) merged afterwards, reference = adapter off; False: full fine-tuning
    lora: bool = True
    #: LoRA targets
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


class DPO(Method):
    name = "dpo"
    config_class = DPOConfig
    per_instance = False
    requires_training = True
    summary = "direct preference optimisation, chosen = safe, rejected = unsafe response, trained once"

    def fit(self, model, tokenizer, train: Sequence[SafeEditInstance], *, chat: bool | None = None,
            out_dir: Path) -> dict[str, Any]:
        from trl import DPOConfig as TrlDPOConfig
        from trl import DPOTrainer

        cfg, out_dir = self.config, Path(out_dir)
        train = check_training_set(train, self.name, need_unsafe=True)
        rows = []
        for inst in train:
            prompt = prompt_of(tokenizer, inst, chat)
            rows.append({"prompt": prompt, "chosen": response_of(prompt, inst.safe_response),
                         "rejected": response_of(prompt, inst.unsafe_response)})
        seed = torch.initial_seed() % 2**32
        with trainer_guard(model, tokenizer):
            target = add_lora(model, cfg) if cfg.lora else model
            log = loss_log_callback(self.name)
            args = TrlDPOConfig(**trainer_args(cfg, out_dir, model, seed, max_length=cfg.max_length, beta=cfg.beta,
                                               precompute_ref_log_probs=not cfg.lora))
            trainer = DPOTrainer(model=target, args=args, train_dataset=train_dataset(rows),
                                 processing_class=tokenizer, callbacks=[log])
            steps = run_trainer(trainer, self.name, log)
            if cfg.lora:
                model, names = finish_lora(target)
            else:
                names = [n for n, _ in model.named_parameters()]
        cleanup_trainer_dir(out_dir)
        save_weights(model, names, out_dir, {"method": self.name})
        return {"losses": steps, "examples": len(rows), "mode": "lora" if cfg.lora else "full",
                "changed_tensors": len(names), "config": asdict(cfg)}

    def load_fitted(self, model, tokenizer, out_dir: Path) -> None:
        load_weights(model, out_dir)
