"""Check raw SafeEdit records and turn them into typed instances; every problem names record and field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from safeedit.errors import DataError
from safeedit.data.schema import (
    F_ADVERSARIAL, F_ATTACK_CATEGORY, F_ATTACK_NAME, F_CATEGORY, F_CONSTRAINT, F_GENERALIZATION, F_ID,
    F_QUESTION, F_SAFE, F_UNSAFE, GENERALIZATION_FIELDS, GeneralizationInputs, KnowledgeConstraint,
    SafeEditInstance,
)

REQUIRED_TEXT = (F_CATEGORY, F_QUESTION, F_ADVERSARIAL, F_SAFE)
OPTIONAL_TEXT = (F_UNSAFE, F_ATTACK_CATEGORY, F_ATTACK_NAME)


@dataclass(frozen=True)
class RecordProblem:
    source: str
    position: int
    record_id: Any
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: record {self.position} (id={self.record_id!r}): field {self.field!r}: {self.message}"


class SafeEditValidationError(DataError):
    def __init__(self, problems: list[RecordProblem]):
        self.problems = problems
        shown = "\n".join(str(p) for p in problems[:20])
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s) in SafeEdit data:\n{shown}{more}")


def _text_problem(value: Any, required: bool) -> str | None:
    if value is None:
        return "missing" if required else None
    if not isinstance(value, str):
        return f"expected text, got {type(value).__name__}"
    if required and not value.strip():
        return "empty"
    return None


def check_record(record: Any, position: int, source: str) -> list[RecordProblem]:
    """All problems of one raw record (an empty list when it is valid)."""
    if not isinstance(record, dict):
        return [RecordProblem(source, position, None, "<record>", f"expected a JSON object, got {type(record).__name__}")]
    rid = record.get(F_ID)
    problems: list[RecordProblem] = []

    def add(field: str, message: str) -> None:
        problems.append(RecordProblem(source, position, rid, field, message))

    if F_ID not in record:
        add(F_ID, "missing")
    for name in REQUIRED_TEXT:
        if (msg := _text_problem(record.get(name), required=True)):
            add(name, msg)
    for name in OPTIONAL_TEXT:
        if (msg := _text_problem(record.get(name), required=False)):
            add(name, msg)
    constraint = record.get(F_CONSTRAINT)
    if not isinstance(constraint, dict):
        add(F_CONSTRAINT, "missing" if constraint is None else "expected an object with 'prompt' and 'answer'")
    else:
        for sub in ("prompt", "answer"):
            if (msg := _text_problem(constraint.get(sub), required=True)):
                add(f"{F_CONSTRAINT}.{sub}", msg)
    generalization = record.get(F_GENERALIZATION)
    if generalization is not None:
        if not isinstance(generalization, dict):
            add(F_GENERALIZATION, "expected an object")
        else:
            for sub in GENERALIZATION_FIELDS:
                if (msg := _text_problem(generalization.get(sub), required=True)):
                    add(f"{F_GENERALIZATION}.{sub}", msg)
    return problems


def to_instance(record: dict, position: int, source: str) -> SafeEditInstance:
    """Typed instance from a record that passed :func:`check_record`."""
    g = record.get(F_GENERALIZATION)
    generalization = None
    if g is not None:
        generalization = GeneralizationInputs(
            only_question=g["test input of only harmful question"],
            other_attack=g["test input of other attack prompt input"],
            other_question=g["test input of other question input"],
            other_attack_and_question=g["test input of other questions and attack prompts"],
            other_attack_category=g.get("attack_category"),
            other_attack_name=g.get("attack_name"),
        )
    c = record[F_CONSTRAINT]
    return SafeEditInstance(
        position=position,
        id=record[F_ID],
        category=record[F_CATEGORY].strip(),
        question=record[F_QUESTION],
        adversarial_prompt=record[F_ADVERSARIAL],
        safe_response=record[F_SAFE],
        unsafe_response=record.get(F_UNSAFE),
        knowledge_constraint=KnowledgeConstraint(prompt=c["prompt"], answer=c["answer"]),
        attack_category=record.get(F_ATTACK_CATEGORY),
        attack_name=record.get(F_ATTACK_NAME),
        generalization=generalization,
        source=source,
    )
