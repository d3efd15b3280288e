"""Human review through a spreadsheet: export a CSV, a person fills ``decision``, import it back.

Columns: ``row_id, kind, category, attack, question, text, auto_check, decision, edited_text``.
One row per question, attack template and response that passed the automatic gates and has no
decision yet (so a review can be done in rounds: questions and templates before the responses
stage, responses after it). Only ``decision`` and ``edited_text`` are read back:

* ``accept`` (also ``a``, ``yes``, ``y``, ``keep``) keeps the item as shown;
* ``reject`` (also ``r``, ``no``, ``n``, ``drop``) removes it (a rejected question or template
  removes its instances; a rejected response removes its instance -- nothing is regenerated);
* ``edit`` (also ``e``) replaces the text with ``edited_text`` (required; an edited attack
  template must keep the ``{question}`` slot). Edited questions are used by later stages; responses
  already generated for a question keep their text.

Each export writes a new file (``review.csv``, then ``review-2.csv``, ...; an explicit
``--review-file`` must not exist yet), so a filled-in file is never overwritten; ``review-import``
reads the latest export unless given ``--review-file``. Decisions are case-insensitive. A **blank decision is an error** that lists the blank rows, unless
``--blank-accepts`` is given, in which case blanks mean accept. The file must match the last export
exactly: every exported row once, no unknown ``row_id``; otherwise nothing is imported and every
offending row is named.
"""

from __future__ import annotations

import csv
from pathlib import Path

from safeedit.errors import DataError, InputNotFoundError
from safeedit.build.inputs import QUESTION_SLOT

COLUMNS = ("row_id", "kind", "category", "attack", "question", "text", "auto_check", "decision", "edited_text")
DECISIONS = {"accept": "accept", "a": "accept", "yes": "accept", "y": "accept", "keep": "accept",
             "reject": "reject", "r": "reject", "no": "reject", "n": "reject", "drop": "reject",
             "edit": "edit", "e": "edit"}


class ReviewFileError(DataError):
    pass


def export_rows(build) -> list[dict]:
    """Rows for every gated item without a decision yet: questions, attack templates, responses."""
    decided = build.review()
    rows = []
    questions, _ = build.gated_questions()
    qtext = {q["id"]: q for q in questions}
    for q in questions:
        if q["id"] not in decided:
            rows.append({"row_id": q["id"], "kind": "question", "category": q["category"], "attack": "",
                         "question": "", "text": q["question"], "auto_check": "passed dedup/length gates"})
    attack_names = {}
    if build.manifest.done("attacks"):
        attacks, _ = build.reviewed_attacks()
        for a in attacks:
            attack_names[a.id] = a.name
            if a.id not in decided:
                rows.append({"row_id": a.id, "kind": "attack", "category": a.category or "", "attack": a.name,
                             "question": "", "text": a.template, "auto_check": f"has {QUESTION_SLOT} slot"})
    if build.path("responses.jsonl").exists():
        responses, _ = build.gated_responses()
        method = build.checker().method
        for rid, r in sorted(responses.items()):
            if rid in decided or r["question_id"] not in qtext:
                continue
            if build.judge_dir:
                check = f"judged {'safe' if r['kind'] == 'safe' else 'unsafe'} ({method})"
            else:
                check = f"{'refuses' if r['kind'] == 'safe' else 'complies'} ({method})"
            rows.append({"row_id": rid, "kind": f"{r['kind']} response", "category": qtext[r["question_id"]]["category"],
                         "attack": attack_names.get(r["attack_id"], r["attack_id"]),
                         "question": qtext[r["question_id"]]["question"], "text": r["text"], "auto_check": check})
    for row in rows:
        row["decision"] = ""
        row["edited_text"] = ""
    return rows


def write_review_csv(path: Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _listing(items: list[str], limit: int = 20) -> str:
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def read_review_csv(path: Path, exported: dict[str, str], blank_accepts: bool = False) -> dict[str, dict]:
    """Decisions ``{row_id: {"decision": accept|reject|edit, "text": str | None}}``; raises
    :class:`ReviewFileError` naming every bad row when the file does not match the export."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"review file not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing_cols = [c for c in ("row_id", "decision", "edited_text") if c not in header]
        if missing_cols:
            raise ReviewFileError(f"{path}: missing column(s) {', '.join(missing_cols)} (header: {header})")
        rows = [(reader.line_num, row) for row in reader]
    problems: list[str] = []
    seen: dict[str, int] = {}
    unknown, duplicate, bad_value, blank, no_edit, no_slot = [], [], [], [], [], []
    decisions: dict[str, dict] = {}
    for line, row in rows:
        rid = (row.get("row_id") or "").strip()
        where = f"line {line} ({rid or 'no row_id'})"
        if rid not in exported:
            unknown.append(where)
            continue
        if rid in seen:
            duplicate.append(f"{where}, first at line {seen[rid]}")
            continue
        seen[rid] = line
        raw = (row.get("decision") or "").strip().lower()
        if not raw:
            if blank_accepts:
                decisions[rid] = {"decision": "accept", "text": None}
            else:
                blank.append(where)
            continue
        decision = DECISIONS.get(raw)
        if decision is None:
            bad_value.append(f"{where}: {row.get('decision')!r}")
            continue
        text = None
        if decision == "edit":
            text = (row.get("edited_text") or "").strip()
            if not text:
                no_edit.append(where)
                continue
            if exported[rid] == "attack" and QUESTION_SLOT not in text:
                no_slot.append(where)
                continue
        decisions[rid] = {"decision": decision, "text": text}
    missing = [rid for rid in exported if rid not in seen]
    for label, items in (("row_id not in the export", unknown), ("duplicate row_id", duplicate),
                         ("missing rows (exported but not in the file)", missing),
                         ("unknown decision (use accept, reject or edit)", bad_value),
                         ("blank decision (fill it in, or pass --blank-accepts to accept blanks)", blank),
                         ("decision 'edit' without edited_text", no_edit),
                         (f"edited attack template without the {QUESTION_SLOT} slot", no_slot)):
        if items:
            problems.append(f"{label}: {_listing(items)}")
    if problems:
        raise ReviewFileError(f"{path} does not match the review export; nothing imported:\n  " + "\n  ".join(problems))
    return decisions
