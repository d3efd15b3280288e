"""Our hand-labelled judge data (``data/judge_labels/``): read, validate, resolve prompts.

A label file is JSONL, one response per line (the format is documented in
``data/judge_labels/README.md``)::

    {"id": "...", "response": "...", "label": "safe" | "unsafe", "kind": "...",
     "prompt_ref": {...}, "group": "q:<normalised question>", "labelled_by": "...", ...}

Rows never copy SafeEdit or third-party prompt text: ``prompt_ref`` points at it
(``{"safeedit": "safeedit_sample.json#12", "input": "DG_otherQ"}``, ``{"spec": "attack:003"}`` for
a prompt we built from pointers in ``prompts/attack_specs.jsonl``, or ``{"text": "..."}`` for a
prompt we wrote ourselves). :func:`resolve_prompts` turns the pointers back into text from the
shared data at run time (needed only by a judge that reads the prompt).

``group`` is the harmful (or benign) question the input asks, normalised like
:func:`safeedit.judge.data.group_key`, so a labelled row and a training-pool row about the same
question share a group: the validation set's groups are kept out of judge training.
"""

from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path

from safeedit.errors import DataError, InputNotFoundError
from safeedit.judge.data import LABELS, JudgeRow, _norm_text, hashed_group, shared_data_dir

#: fields every label row must have, with their types
REQUIRED = {"id": str, "response": str, "label": str, "kind": str, "prompt_ref": dict, "group": str,
            "labelled_by": str}
#: the kinds of rows (``kind`` field); see the README for what each holds
KINDS = {
    "safeedit_pre": "embedded model, unedited, on a SafeEdit sample input",
    "safeedit_post_dinm": "embedded model after a DINM edit of that instance, on its inputs",
    "safeedit_post_ft-l": "embedded model after an FT-L edit of that instance, on its inputs",
    "safeedit_post_mend": "embedded model after a MEND edit of that instance, on its inputs",
    "safeedit_post_self-reminder": "embedded model with the Self-Reminder prompt, on a SafeEdit input",
    "safeedit_post_sft": "embedded model after SFT on the training split, on a SafeEdit test input",
    "safeedit_post_dpo": "embedded model after DPO on the training split, on a SafeEdit test input",
    "safeedit_post_rlhf": "embedded model after RLHF (RLOO) on the training split, on a SafeEdit test input",
    "safeedit_post_ext-sub": "embedded model after Ext-Sub on the training split, on a SafeEdit test input",
    "attack_new_q": "embedded model on a sample attack template around a harmful question of another set",
    "bare_new_q": "embedded model on such a harmful question alone",
    "attack_hh": "embedded model on an HH-RLHF red-team opener (harmful or not) inside an attack template",
    "bare_hh": "embedded model on such an HH-RLHF red-team opener alone",
    "benign_alarming": "embedded model on a benign question with alarming words (written by us)",
    "benign_qa": "embedded model on an ordinary request (TriviaQA question, SafeEdit knowledge-constraint instruction)",
    "benign_in_attack": "embedded model on one of our benign questions inside a jailbreak template",
    "written_refusal_quote": "hand-written refusal that quotes the harmful request",
    "written_fiction": "hand-written fiction / role-play that stays harmless",
    "written_curt": "hand-written curt, unhelpful but harmless answer",
    "written_template_echo": "hand-written echo of a jailbreak template's format with no harmful content",
    "written_benign_answer": "hand-written helpful answer to a benign question with alarming words",
}
#: source name a row gets in per-source scores: ``labels:<kind>``
SOURCE_PREFIX = "labels:"


class LabelFileError(DataError):
    """A label file row is malformed; the message names file, line and field."""


def data_dir() -> Path:
    """``data/judge_labels`` of this repository."""
    return Path(__file__).resolve().parents[3] / "data" / "judge_labels"


def default_validation_path() -> Path:
    return data_dir() / "validation.jsonl"


def default_train_path() -> Path:
    return data_dir() / "train.jsonl"


def question_group(question: str) -> str:
    """The group of a row asking ``question``: the pool's group (``q:`` + normalised text), hashed
    (:func:`safeedit.judge.data.hashed_group`) so label files do not copy shared questions."""
    return hashed_group("q:" + _norm_text(question))


def validate_row(rec, path: Path | str, line_no: int) -> None:
    """Raise :class:`LabelFileError` naming ``path:line`` and the field if ``rec`` is malformed."""
    where = f"{path}:{line_no}"
    if not isinstance(rec, dict):
        raise LabelFileError(f"{where}: a row must be a JSON object, got {type(rec).__name__}")
    for field, typ in REQUIRED.items():
        if field not in rec:
            raise LabelFileError(f"{where}: field {field!r} is missing")
        if not isinstance(rec[field], typ):
            raise LabelFileError(f"{where}: field {field!r} must be {typ.__name__}, got {type(rec[field]).__name__}")
    if rec["label"] not in LABELS:
        raise LabelFileError(f"{where}: field 'label' must be 'safe' or 'unsafe', got {rec['label']!r}")
    if rec["kind"] not in KINDS:
        raise LabelFileError(f"{where}: field 'kind' must be one of {sorted(KINDS)}, got {rec['kind']!r}")
    if not rec["response"].strip():
        raise LabelFileError(f"{where}: field 'response' is empty (empty responses score 0.5 by rule, never labelled)")
    if not rec["group"].startswith(("qh:", "q:")) or len(rec["group"]) < 4:
        raise LabelFileError(f"{where}: field 'group' must be 'qh:<hash of the normalised question>' "
                             f"(or 'q:<normalised question>' for text we wrote), got {rec['group']!r}")
    ref = rec["prompt_ref"]
    if not (("safeedit" in ref and isinstance(ref.get("input"), str)) or "spec" in ref or isinstance(ref.get("text"), str)
            or isinstance(ref.get("triviaqa"), str)):
        raise LabelFileError(f"{where}: field 'prompt_ref' must hold {{'safeedit', 'input'}}, {{'spec'}}, {{'triviaqa'}} "
                             f"or {{'text'}}, got {ref!r}")


def read_label_file(path: str | Path) -> list[dict]:
    """All rows of a label file, validated; the first bad row raises with file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"label file not found: {path}")
    rows, ids = [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise LabelFileError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            validate_row(rec, path, line_no)
            if rec["id"] in ids:
                raise LabelFileError(f"{path}:{line_no}: field 'id' repeats {rec['id']!r} (first on line {ids[rec['id']]})")
            ids[rec["id"]] = line_no
            rows.append(rec)
    return rows


def to_judge_rows(records: list[dict], prompts: list[str] | None = None) -> list[JudgeRow]:
    """Label records as :class:`JudgeRow` (source ``labels:<kind>``); prompts resolved or empty."""
    prompts = prompts if prompts is not None else [""] * len(records)
    return [JudgeRow(p, r["response"], LABELS[r["label"]], SOURCE_PREFIX + r["kind"], hashed_group(r["group"]))
            for r, p in zip(records, prompts)]


def load_label_rows(path: str | Path, with_prompts: bool = False) -> list[JudgeRow]:
    """A label file as judge rows (prompts resolved from the shared data if ``with_prompts``)."""
    records = read_label_file(path)
    return to_judge_rows(records, resolve_prompts(records) if with_prompts else None)


# ---------------------------------------------------------------- prompt pointers -> text
@lru_cache(maxsize=4)
def _safeedit(name: str):
    from safeedit.data import load_safeedit

    return {inst.key: inst for inst in load_safeedit(shared_data_dir() / "safeedit" / name)}


def safeedit_input(ref: str, input_name: str) -> str:
    """Text of input ``input_name`` (DS, DG_onlyQ, ..., or ``constraint``: its knowledge-constraint
    instruction) of the SafeEdit instance with key ``ref``."""
    name = ref.split("#", 1)[0]
    inst = _safeedit(name).get(ref)
    if inst is None:
        raise KeyError(f"no SafeEdit instance {ref} in {shared_data_dir() / 'safeedit' / name}")
    if input_name == "constraint":
        return inst.knowledge_constraint.prompt
    return inst.eval_inputs()[input_name]


@lru_cache(maxsize=1)
def _triviaqa_questions() -> dict[str, str]:
    """The shared TriviaQA subset: ``source_line`` (as text) -> question."""
    from safeedit.data.jsonio import read_jsonl

    path = shared_data_dir() / "general" / "triviaqa_validation_1000.jsonl"
    return {str(rec["source_line"]): rec["question"] for _, rec in read_jsonl(path)}


@lru_cache(maxsize=1)
def _gptfuzz_questions() -> dict[str, str]:
    with open(shared_data_dir() / "judge" / "raw" / "gptfuzz" / "question_list.csv", newline="", encoding="utf-8") as f:
        return {r["index"]: r["text"] for r in csv.DictReader(f)}


@lru_cache(maxsize=1)
def _dna_questions() -> dict[str, str]:
    with open(shared_data_dir() / "judge" / "raw" / "do_not_answer" / "data_en.csv", newline="", encoding="utf-8") as f:
        return {r["id"]: r["question"] for r in csv.DictReader(f)}


@lru_cache(maxsize=1)
def _pku_questions() -> dict[str, str]:
    """PKU-SafeRLHF mini (via JailbreakEval): 0-based data row -> question."""
    with open(shared_data_dir() / "judge" / "raw" / "jailbreakeval" / "Safe-RLHFmini.csv", newline="", encoding="utf-8") as f:
        return {str(i): r["question"] for i, r in enumerate(csv.DictReader(f))}


@lru_cache(maxsize=1)
def _hh_questions() -> dict[str, str]:
    """Anthropic HH-RLHF harmless-base test: ``hh:<0-based line>`` -> the conversation's first human turn."""
    import gzip
    import re

    path = shared_data_dir() / "judge" / "raw" / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"
    out = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            m = re.match(r"\s*Human: (.*?)\n\nAssistant:", json.loads(line)["chosen"], re.S)
            if m:
                out[f"hh:{i}"] = m.group(1).strip()
    return out


@lru_cache(maxsize=1)
def _build_templates() -> dict[str, str]:
    """Our own attack templates (``configs/build/attack_templates.json``): name -> template with ``{question}``."""
    path = Path(__file__).resolve().parents[3] / "configs" / "build" / "attack_templates.json"
    return {t["name"]: t["template"] for t in json.loads(path.read_text())["templates"]}


@lru_cache(maxsize=1)
def _benign_questions() -> dict[str, str]:
    path = data_dir() / "prompts" / "benign_alarming.jsonl"
    return {rec["prompt_id"]: rec["question"] for rec in map(json.loads, path.read_text().splitlines()) if rec}


def question_text(ref: str) -> str:
    """``gptfuzz_q:<index>``, ``dna:<id>``, ``pku:<row>``, ``hh:<line>`` or ``benign:<nnn>`` -> the question text."""
    kind, _, key = ref.partition(":")
    table = {"gptfuzz_q": _gptfuzz_questions, "dna": _dna_questions, "pku": _pku_questions,
             "hh": _hh_questions, "benign": _benign_questions}.get(kind)
    if table is None:
        raise KeyError(f"unknown question reference {ref!r}")
    return table()[ref if kind in ("benign", "hh") else key]


def wrap_in_template(template_ref: str, question: str) -> str:
    """A SafeEdit instance's input with its own question replaced by ``question`` (``<file>#<position>:<input>``),
    or one of our own attack templates filled with it (``build:<name>``)."""
    if template_ref.startswith("build:"):
        return _build_templates()[template_ref[len("build:"):]].replace("{question}", question)
    key, _, input_name = template_ref.rpartition(":")
    inst = _safeedit(key.split("#", 1)[0])[key]
    text = inst.eval_inputs()[input_name]
    if text.count(inst.question) != 1:
        raise DataError(f"{template_ref}: its question does not occur exactly once in the input")
    return text.replace(inst.question, question)


@lru_cache(maxsize=1)
def _specs() -> dict[str, dict]:
    path = data_dir() / "prompts" / "attack_specs.jsonl"
    return {rec["prompt_id"]: rec for rec in map(json.loads, path.read_text().splitlines()) if rec}


def spec_prompt(spec_id: str) -> tuple[str, str]:
    """(prompt text, question text) of a prompt spec in ``prompts/attack_specs.jsonl``."""
    spec = _specs()[spec_id]
    question = question_text(spec["question_ref"])
    prompt = wrap_in_template(spec["template_ref"], question) if spec["template_ref"] else question
    return prompt, question


def resolve_prompt(ref: dict) -> str:
    if "text" in ref:
        return ref["text"]
    if "triviaqa" in ref:
        return _triviaqa_questions()[ref["triviaqa"]]
    if "spec" in ref:
        return spec_prompt(ref["spec"])[0]
    return safeedit_input(ref["safeedit"], ref["input"])


def resolve_prompts(records: list[dict]) -> list[str]:
    return [resolve_prompt(r["prompt_ref"]) for r in records]
