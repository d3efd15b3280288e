"""Train/test splits grouped by harmful question, and the leakage check between two splits.

A trained-once method (SFT, DPO, ...) trained on an instance whose harmful ``question`` reappears in
the test set has seen the answer it is tested on, so such a test set is refused. SafeEdit's
generalisation inputs DG_otherQ / DG_otherAQ deliberately embed *other* questions, some of which
will be training questions in any split; that overlap is counted and reported, not refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Sequence

from safeedit.data.schema import SafeEditInstance


def normalize_question(text: str) -> str:
    """Lower case, white space collapsed, outer punctuation/space stripped."""
    return re.sub(r"\s+", " ", (text or "").lower()).strip(" \t\n.?!")


@dataclass
class Overlap:
    """How a test split overlaps a training split."""

    #: test instance keys whose harmful question is also a training question (leakage)
    shared_question_keys: list[str] = field(default_factory=list)
    #: distinct shared questions
    shared_questions: list[str] = field(default_factory=list)
    #: generalisation inputs (test key, input name) that embed a training question
    dg_inputs_with_train_question: list[tuple[str, str]] = field(default_factory=list)
    dg_inputs_total: int = 0

    def as_dict(self) -> dict:
        return {"shared_question_instances": len(self.shared_question_keys),
                "shared_questions": len(self.shared_questions),
                "dg_inputs_with_train_question": len(self.dg_inputs_with_train_question),
                "dg_inputs_total": self.dg_inputs_total}


def question_overlap(train: Sequence[SafeEditInstance], test: Sequence[SafeEditInstance]) -> Overlap:
    train_questions = {normalize_question(i.question) for i in train}
    train_questions.discard("")
    out = Overlap()
    shared = set()
    for inst in test:
        q = normalize_question(inst.question)
        if q in train_questions:
            out.shared_question_keys.append(inst.key)
            shared.add(q)
        for name, text in inst.eval_inputs().items():
            if name == "DS":
                continue
            out.dg_inputs_total += 1
            body = normalize_question(text)
            if any(t in body for t in train_questions if t != q):
                out.dg_inputs_with_train_question.append((inst.key, name))
    out.shared_questions = sorted(shared)
    return out


def _test_side(question: str, seed: int, test_fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}|{normalize_question(question)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def split_by_question(instances: Sequence[SafeEditInstance], test_fraction: float = 0.3,
                      seed: int = 0) -> tuple[list[SafeEditInstance], list[SafeEditInstance]]:
    """(train, test): every instance of one harmful question on the same side, chosen by a seeded
    hash of the question (stable when instances are added or removed)."""
    if not 0.0 < test_fraction < 1.0:
        from safeedit.errors import ConfigError

        raise ConfigError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    train, test = [], []
    for inst in instances:
        (test if _test_side(inst.question, seed, test_fraction) else train).append(inst)
    return train, test
