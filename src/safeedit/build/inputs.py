"""Input files of a build: unsafety categories, attack-prompt templates, instruction pairs.

Formats (all UTF-8; ``.json`` or ``.jsonl``):

* **categories** -- objects ``{"name": ..., "policy": ...}``: a JSON list, a JSONL file, or a JSON
  object with the list under ``"categories"``. Names must be unique, policies non-empty.
* **attack templates** -- objects ``{"name": ..., "template": ..., "category": ...}`` (category
  optional): a JSON list, a JSONL file, or a JSON object with the list under ``"templates"``. Every
  template must contain the slot ``{question}`` (literal, braces included); it is replaced by the
  harmful question, so other braces in the template are left alone.
* **instruction pairs** (the knowledge constraints, D_cons) -- JSONL or JSON list of
  ``{"instruction": ..., "answer": ...}``; ``prompt``/``output`` are accepted as synonyms.
  A TriviaQA-style file (``{"question": ..., "answers": [...]}``) can be given as an extra source;
  the answer alias that most other aliases contain becomes the pair's answer.

The files shipped in ``configs/build`` are written by the safeedit authors; pass your own
(e.g. the paper's 48 attack prompts) with ``--attacks FILE``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeedit.data.jsonio import read_json_list
from safeedit.errors import DataError, InputNotFoundError

#: the literal slot an attack template must contain
QUESTION_SLOT = "{question}"


def shipped_config_dir() -> Path:
    """``configs/build`` of the source tree (the package is installed editable from the repo)."""
    return Path(__file__).resolve().parents[3] / "configs" / "build"


def default_input(name: str) -> Path:
    path = shipped_config_dir() / name
    if not path.is_file():
        raise InputNotFoundError(f"shipped build input {name} not found at {path}; pass the file explicitly")
    return path


DEFAULT_CATEGORIES = "categories.json"
DEFAULT_ATTACKS = "attack_templates.json"
DEFAULT_PAIRS = "instruction_pairs.jsonl"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def read_objects(path: Path, list_key: str | None = None) -> list[Any]:
    """Objects of a JSON list / JSONL file / JSON object holding the list under ``list_key``."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"input file not found: {path}")
    return read_json_list(path, list_key)


def _text(obj: Any, key: str, where: str, synonyms: tuple[str, ...] = ()) -> str:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for k in (key, *synonyms):
        value = obj.get(k)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise DataError(f"{where}: field {key!r} is missing or empty")


@dataclass(frozen=True)
class Category:
    name: str
    policy: str

    @property
    def slug(self) -> str:
        return slug(self.name)


@dataclass(frozen=True)
class AttackTemplate:
    name: str
    template: str
    category: str | None = None

    @property
    def id(self) -> str:
        return "a:" + slug(self.name)

    def wrap(self, question: str) -> str:
        return self.template.replace(QUESTION_SLOT, question)

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "category": self.category, "template": self.template}


@dataclass(frozen=True)
class InstructionPair:
    instruction: str
    answer: str


def load_categories(path: Path) -> list[Category]:
    cats = []
    for i, obj in enumerate(read_objects(path, "categories")):
        where = f"{path}: category #{i}"
        cats.append(Category(_text(obj, "name", where), _text(obj, "policy", where)))
    if not cats:
        raise DataError(f"{path}: no categories")
    _unique([c.slug for c in cats], path, "category name")
    return cats


def validate_template(template: str, name: str, where: str = "") -> None:
    if QUESTION_SLOT not in template:
        raise DataError(f"{where}attack template {name!r} has no question slot {QUESTION_SLOT}; "
                         f"put {QUESTION_SLOT} where the harmful question goes")


def load_attacks(path: Path) -> list[AttackTemplate]:
    attacks, bad = [], []
    for i, obj in enumerate(read_objects(path, "templates")):
        where = f"{path}: template #{i}"
        name = _text(obj, "name", where)
        template = _text(obj, "template", where, ("prompt",))
        if QUESTION_SLOT not in template:
            bad.append(name)
            continue
        category = obj.get("category")
        attacks.append(AttackTemplate(name, template, category if isinstance(category, str) and category else None))
    if bad:
        raise DataError(f"{path}: attack template(s) without the question slot {QUESTION_SLOT}: "
                         f"{', '.join(repr(b) for b in bad)}; put {QUESTION_SLOT} where the harmful question goes")
    if not attacks:
        raise DataError(f"{path}: no attack templates")
    _unique([a.id for a in attacks], path, "attack template name")
    return attacks


def load_pairs(path: Path) -> list[InstructionPair]:
    pairs = []
    for i, obj in enumerate(read_objects(path, "pairs")):
        where = f"{path}: pair #{i}"
        if isinstance(obj, dict) and "answers" in obj and "question" in obj:  # TriviaQA layout
            answers = obj["answers"]
            if not (isinstance(answers, list) and answers and isinstance(answers[0], str)):
                raise DataError(f"{where}: field 'answers' must be a non-empty list of text")
            question = _text(obj, "question", where).replace('""', '"')
            pairs.append(InstructionPair(question, representative_answer(answers)))
            continue
        pairs.append(InstructionPair(_text(obj, "instruction", where, ("prompt",)),
                                     _text(obj, "answer", where, ("output",))))
    if not pairs:
        raise DataError(f"{path}: no instruction pairs")
    return pairs


def representative_answer(aliases: list[str]) -> str:
    """The alias repeated most often ignoring case, then the one most other aliases contain, then the
    shorter -- TriviaQA alias lists are unordered, so the first one is often odd ('Wilson, Harold')."""
    clean = [a.strip() for a in aliases if isinstance(a, str) and a.strip()]
    lowered = [a.lower() for a in clean]

    def score(i: int) -> tuple[int, int, int, int]:
        return (lowered.count(lowered[i]), sum(lowered[i] in other for other in lowered), -len(clean[i]), -i)

    return clean[max(range(len(clean)), key=score)]


def _unique(keys: list[str], path: Path, what: str) -> None:
    seen, dup = set(), []
    for k in keys:
        if k in seen:
            dup.append(k)
        seen.add(k)
    if dup:
        raise DataError(f"{path}: duplicate {what}(s): {', '.join(sorted(set(dup)))}")
