"""``ext-sub``: extraction-before-subtraction of an anti-expert (Hu et al., AAAI 2024, arXiv 2308.08090).

Two LoRA modules are trained on the training split, both with the adversarial input as prompt: an
*expert* on the safe responses and an *anti-expert* on the unsafe ones. Subtracting the whole
anti-expert would also remove what it shares with the expert (fluency, instruction following), so
Ext-Sub first extracts the shared part and subtracts only the rest. As the authors' code computes
it, per LoRA-adapted matrix, with deltas ``W_E = B_E·A_E`` and ``W_A = B_A·A_A`` (out x in): for
each input index i, with ``e_i`` and ``a_i`` the i-th columns (vectors over the output dimension),

    c_i = normalize(normalize(e_i) + normalize(a_i))
    w_i = e_i - lambda * (a_i - (a_i · c_i) c_i)

and ``W += scaling · W`` merges the result. Both adapters share one LoRA shape, so the scaling
(alpha / r) factors out of the formula and :func:`ext_sub_delta` is applied to peft's scaled
``get_delta_weight`` directly. The authors stack all modules into one tensor, which assumes equal
output sizes; grouped-query attention gives ``k_proj``/``v_proj`` fewer outputs than ``q_proj``, so
here each module is computed on its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from safeedit.data.schema import SafeEditInstance
from safeedit.errors import ConfigError, RunFailedError
from safeedit.methods.base import Method
from safeedit.methods.sft import train_sft
from safeedit.methods.training import (
    TrainOptions, add_deltas, check_training_set, load_weights, prompt_of, response_of, save_weights)


@dataclass
class ExtSubConfig(TrainOptions):
    """Ext-Sub options; the training defaults are the authors' (Hu et al. 2024): LoRA r 16,
    alpha 32, dropout 0.05 on q_proj/v_proj, 2 epochs, lr 2e-5 (for LLaMA-7B)."""

    #: weight of the subtracted anti-expert part (the authors' default 1.0)
    lam: float = 1.0
    #: peak learning rate of both LoRA trainings (authors: 2e-5)
    lr: float = 2e-5
    #: passes over the training split for each LoRA (authors: 2)
    epochs: float = 2.0
    #: LoRA rank (authors: 16)
    lora_r: int = 16
    #: LoRA alpha (authors: 32)
    lora_alpha: int = 32
    #: LoRA dropout (authors: 0.05)
    lora_dropout: float = 0.05
    #: LoRA targets (authors: q_proj, v_proj)
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    #: Ext-Sub operates on LoRA modules; must stay true
    lora: bool = True

    def __post_init__(self):
        if not self.lora:
            raise ConfigError("ext-sub: the method subtracts LoRA modules; lora must be true")


def ext_sub_delta(expert: torch.Tensor, anti: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Ext-Sub for one matrix (out x in): the expert minus the anti-expert's part not shared with it,
    column by column (each column is a vector over the output dimension for one input index)."""
    if expert.shape != anti.shape or expert.dim() != 2:
        raise ValueError(f"expert {tuple(expert.shape)} and anti-expert {tuple(anti.shape)} must be equal 2-D shapes")
    e, a = expert.float(), anti.float()
    c = F.normalize(F.normalize(e, dim=0) + F.normalize(a, dim=0), dim=0)
    shared = (a * c).sum(dim=0, keepdim=True) * c
    return (e - lam * (a - shared)).to(expert.dtype)


def ext_sub_deltas(expert: dict[str, torch.Tensor], anti: dict[str, torch.Tensor],
                   lam: float = 1.0) -> dict[str, torch.Tensor]:
    """:func:`ext_sub_delta` per module; both dicts must name the same modules."""
    if set(expert) != set(anti):
        raise RunFailedError(f"expert and anti-expert adapt different modules: "
                             f"{sorted(set(expert) ^ set(anti))[:3]}")
    return {name: ext_sub_delta(expert[name], anti[name], lam) for name in expert}


class ExtSub(Method):
    name = "ext-sub"
    config_class = ExtSubConfig
    per_instance = False
    requires_training = True
    summary = "expert (safe) LoRA minus the anti-expert (unsafe) LoRA's non-shared part (Hu et al. 2024)"

    def fit(self, model, tokenizer, train: Sequence[SafeEditInstance], *, chat: bool | None = None,
            out_dir: Path) -> dict[str, Any]:
        cfg, out_dir = self.config, Path(out_dir)
        train = check_training_set(train, self.name, need_unsafe=True)
        prompts = [prompt_of(tokenizer, i, chat) for i in train]
        deltas, logs = {}, {}
        for role, responses in (("expert", [i.safe_response for i in train]),
                                ("anti_expert", [i.unsafe_response for i in train])):
            rows = [{"prompt": p, "completion": response_of(p, r)} for p, r in zip(prompts, responses)]
            trained = train_sft(model, tokenizer, rows, cfg, out_dir, f"{self.name} {role}", merge=False)
            deltas[role], logs[role] = trained["deltas"], trained["steps"]
        combined = ext_sub_deltas(deltas["expert"], deltas["anti_expert"], cfg.lam)
        add_deltas(model, combined)
        save_weights(model, sorted(combined), out_dir, {"method": self.name})
        norms = {role: float(sum(d.norm() ** 2 for d in deltas[role].values()) ** 0.5) for role in deltas}
        norms["combined"] = float(sum(d.norm() ** 2 for d in combined.values()) ** 0.5)
        return {"losses": logs["expert"], "losses_anti_expert": logs["anti_expert"], "examples": len(train),
                "mode": "lora", "changed_tensors": len(combined), "delta_norms": norms, "config": asdict(cfg)}

    def load_fitted(self, model, tokenizer, out_dir: Path) -> None:
        load_weights(model, out_dir)

