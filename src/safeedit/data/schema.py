"""One typed record per SafeEdit instance, and the JSON field names of the public files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the five evaluation inputs of the paper, in report order
EVAL_KEYS = ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ")
DG_KEYS = EVAL_KEYS[1:]

# JSON field names used by SafeEdit files (spaces included, as published)
F_ID = "id"
F_CATEGORY = "unsafety category"
F_ADVERSARIAL = "adversarial prompt"
F_QUESTION = "question"
F_ATTACK_CATEGORY = "attack category"
F_ATTACK_NAME = "attack name"
F_UNSAFE = "unsafe generation"
F_SAFE = "safe generation"
F_GENERALIZATION = "generalization test"
F_CONSTRAINT = "knowledge constrain"

#: sub-fields of ``generalization test`` -> evaluation key
GENERALIZATION_FIELDS = {
    "test input of only harmful question": "DG_onlyQ",
    "test input of other attack prompt input": "DG_otherA",
    "test input of other question input": "DG_otherQ",
    "test input of other questions and attack prompts": "DG_otherAQ",
}


@dataclass(frozen=True)
class KnowledgeConstraint:
    """An ordinary instruction and its answer, used to keep general behaviour during an edit."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class GeneralizationInputs:
    only_question: str
    other_attack: str
    other_question: str
    other_attack_and_question: str
    other_attack_category: str | None = None
    other_attack_name: str | None = None

    def as_eval_inputs(self) -> dict[str, str]:
        return {
            "DG_onlyQ": self.only_question,
            "DG_otherA": self.other_attack,
            "DG_otherQ": self.other_question,
            "DG_otherAQ": self.other_attack_and_question,
        }


@dataclass(frozen=True)
class SafeEditInstance:
    """One SafeEdit record.

    ``id`` values repeat across public SafeEdit sources, so the stable key is ``key``
    (source name + position in that source), never ``id`` alone.
    """

    position: int
    id: Any
    category: str
    question: str
    adversarial_prompt: str
    safe_response: str
    unsafe_response: str | None
    knowledge_constraint: KnowledgeConstraint
    attack_category: str | None = None
    attack_name: str | None = None
    generalization: GeneralizationInputs | None = None
    source: str = ""

    @property
    def key(self) -> str:
        return f"{self.source}#{self.position}"

    @property
    def edit_only(self) -> bool:
        """True for records without the generalization block (e.g. three_instances_for_editing.json)."""
        return self.generalization is None

    def eval_inputs(self) -> dict[str, str]:
        """The evaluation inputs keyed DS, DG_onlyQ, DG_otherA, DG_otherQ, DG_otherAQ (DS only if edit-only)."""
        inputs = {"DS": self.adversarial_prompt}
        if self.generalization is not None:
            inputs.update(self.generalization.as_eval_inputs())
        return inputs

    def to_record(self) -> dict[str, Any]:
        """Back to the published JSON layout."""
        record: dict[str, Any] = {
            F_ID: self.id,
            F_CATEGORY: self.category,
            F_ADVERSARIAL: self.adversarial_prompt,
            F_QUESTION: self.question,
            F_ATTACK_CATEGORY: self.attack_category,
            F_ATTACK_NAME: self.attack_name,
            F_UNSAFE: self.unsafe_response,
            F_SAFE: self.safe_response,
        }
        if self.generalization is not None:
            g = self.generalization
            record[F_GENERALIZATION] = {
                "test input of only harmful question": g.only_question,
                "test input of other attack prompt input": g.other_attack,
                "test input of other question input": g.other_question,
                "test input of other questions and attack prompts": g.other_attack_and_question,
                "attack_category": g.other_attack_category,
                "attack_name": g.other_attack_name,
            }
        record[F_CONSTRAINT] = {"prompt": self.knowledge_constraint.prompt, "answer": self.knowledge_constraint.answer}
        return record
