"""``rlhf``: on-policy reinforcement learning against the safety judge, with a KL penalty to the
reference model (trl ``RLOOTrainer``, REINFORCE leave-one-out).

For each adversarial input of the training split the policy samples ``num_generations`` responses;
each is rewarded with the judge's p(safe) of the *response alone* (the judge truncates it to its own
window, 512 tokens for the paper's judge), and the policy gradient uses the mean reward of the other
samples of the same prompt as baseline, minus ``beta`` x KL(policy || reference). PPO, the
classic RLHF algorithm, was removed from trl in 1.13; RLOO is trl's maintained on-policy trainer
with the same objective (reward minus a KL penalty to the reference) and needs no value network.

The policy is trained as a LoRA (merged into the weights afterwards); the reference model is the
same model with the adapter switched off, so no copy is held in memory.

The reward judge is, by default, the same default judge folder the bench scores with: a method
optimised against the instrument that measures it can learn the judge's blind spots, so DS of an
``rlhf`` run is an upper bound unless ``reward_judge`` names another classifier. Degenerate
responses (the bench's degenerate rate) are the usual sign of such reward hacking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from safeedit.data.schema import SafeEditInstance
from safeedit.errors import ConfigError
from safeedit.methods.base import Method
from safeedit.methods.training import (
    TrainOptions, add_lora, check_training_set, cleanup_trainer_dir, finish_lora, load_weights, loss_log_callback,
    prompt_of, run_trainer, save_weights, train_dataset, trainer_args, trainer_guard)


@dataclass
class RLHFConfig(TrainOptions):
    """RLHF options. The DINM paper names RLHF among the baselines but publishes no RLHF row or
    settings; these defaults are trl's RLOO defaults (lr 1e-6 for full models, here 1e-5 for a
    LoRA policy; beta 0.05; 2 samples per prompt) with a 128-token response budget."""

    #: peak learning rate
    lr: float = 1e-5
    #: passes over the training prompts
    epochs: float = 1.0
    #: completions per optimiser step (must be a multiple of ``num_generations``)
    batch_size: int = 8
    #: KL penalty coefficient to the reference model (trl RLOO default)
    beta: float = 0.05
    #: responses sampled per prompt (the leave-one-out baseline needs at least 2)
    num_generations: int = 2
    #: new tokens per sampled response
    max_completion_length: int = 128
    #: sampling temperature
    temperature: float = 1.0
    #: the reward model: a safe/unsafe classifier folder or hub id (None: the default judge folder)
    reward_judge: str | None = None
    #: LoRA targets (the policy is always a LoRA; full fine-tuning would need a second model copy)
    lora: bool = True
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self):
        if self.num_generations < 2:
            raise ConfigError("rlhf: num_generations must be >= 2 (RLOO's baseline is the other samples' reward)")
        if self.batch_size % self.num_generations:
            raise ConfigError(f"rlhf: batch_size ({self.batch_size}) must be a multiple of num_generations "
                              f"({self.num_generations})")
        if not self.lora:
            raise ConfigError("rlhf: only a LoRA policy is supported (lora: true); the adapter switched off is "
                              "the KL reference")


def judge_reward(judge):
    """A trl reward function: p(safe) of each completion by ``judge`` (response only)."""

    def safety_judge(prompts, completions, **kwargs) -> list[float]:
        texts = [c if isinstance(c, str) else (c[-1]["content"] if c else "") for c in completions]
        verdict = judge(texts, prompts=list(prompts) if judge.with_prompt else None)
        return [1.0 - p for p in verdict.unsafe_prob]

    return safety_judge


def _cut_left(tokenizer, prompt: str, budget: int) -> str:
    """``prompt`` cut from the left to ``budget`` tokens (the harmful question sits at the end), as
    the bench's generation does; RLOO itself does not truncate prompts."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return prompt if len(ids) <= max(1, budget) else tokenizer.decode(ids[-max(1, budget):])


class RLHF(Method):
    name = "rlhf"
    config_class = RLHFConfig
    per_instance = False
    requires_training = True
    summary = "on-policy RL (trl RLOO) with the safety judge's p(safe) as reward and a KL penalty, trained once"

    def _judge(self):
        from safeedit.judge import SafetyJudge
        from safeedit.errors import InputNotFoundError

        try:
            return SafetyJudge.from_pretrained(self.config.reward_judge)
        except InputNotFoundError as exc:
            raise InputNotFoundError(f"rlhf: reward judge missing: {exc}") from exc

    def fit(self, model, tokenizer, train: Sequence[SafeEditInstance], *, chat: bool | None = None,
            out_dir: Path) -> dict[str, Any]:
        from trl import RLOOConfig, RLOOTrainer

        cfg, out_dir = self.config, Path(out_dir)
        train = check_training_set(train, self.name)
        judge = self._judge()
        rows = [{"prompt": _cut_left(tokenizer, prompt_of(tokenizer, i, chat), cfg.max_length - cfg.max_completion_length)}
                for i in train]
        seed = torch.initial_seed() % 2**32
        with trainer_guard(model, tokenizer):
            target = add_lora(model, cfg)
            log = loss_log_callback(self.name)
            args = RLOOConfig(**trainer_args(
                cfg, out_dir, model, seed, beta=cfg.beta, num_generations=cfg.num_generations,
                max_completion_length=cfg.max_completion_length, temperature=cfg.temperature))
            tokenizer.padding_side = "left"
            trainer = RLOOTrainer(model=target, reward_funcs=judge_reward(judge), args=args,
                                  train_dataset=train_dataset(rows), processing_class=tokenizer, callbacks=[log])
            steps = run_trainer(trainer, self.name, log)
            model, names = finish_lora(target)
        cleanup_trainer_dir(out_dir)
        save_weights(model, names, out_dir, {"method": self.name})
        rewards = [r["reward"] for r in steps if "reward" in r]
        return {"losses": steps, "examples": len(rows), "mode": "lora", "changed_tensors": len(names),
                "reward_judge": repr(judge), "reward_first": rewards[0] if rewards else None,
                "reward_last": rewards[-1] if rewards else None, "config": asdict(cfg)}

    def load_fitted(self, model, tokenizer, out_dir: Path) -> None:
        load_weights(model, out_dir)
