"""Training rows for the judge: load, group, split, subsample.

Rows come from ``judge_train.jsonl`` (labelled responses from several public sets) and from the
SafeEdit sample (each instance's safe response is *safe*, its unsafe response *unsafe*).

The held-out split is grouped: every row is assigned to train or test by a hash of its *group*
(the normalised prompt/question; the behaviour index for JailbreakBench artifacts; the
``question`` for SafeEdit), so responses to one request never straddle the split and the test
scores measure generalisation to unseen requests rather than memorised ones. A hash, not a
shuffle, makes the split stable when rows are added or removed.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from safeedit.data.jsonio import read_jsonl
from safeedit.errors import DataError, InputNotFoundError
from safeedit.paths import sample_data_path, shared_data_dir

LABELS = {"safe": 0, "unsafe": 1}
SAFEEDIT_SOURCE = "safeedit_sample"
#: SafeEdit's knowledge-constraint answers: replies to ordinary instructions, hence safe. Without
#: them every training response answers a risky request, and the judge learns "anything but a
#: refusal is unsafe" (it called "The capital of France is Paris." unsafe).
SAFEEDIT_BENIGN_SOURCE = "safeedit_constraint"
#: relative sampling weight per source in the balanced subsample. DiaSafety is social-media
#: chit-chat, farther from LLM responses to harmful requests (its README suggests down-weighting).
SOURCE_WEIGHTS = {"diasafety": 0.5, "do_not_answer": 2.0}
#: extra copies in the training subsample. SafeEdit's ~130 benign answers are the only helpful
#: replies to ordinary instructions; seen once among 3,000 rows they did not stop the judge from
#: flagging benign answers, so they are repeated. Do-Not-Answer's weight brings in more of its
#: safe non-refusals (rebuttals, balanced views, answers with caveats).
SOURCE_REPEATS = {"safeedit_constraint": 3}


@dataclass(frozen=True)
class JudgeRow:
    prompt: str
    response: str
    label: int  # 0 safe, 1 unsafe
    source: str
    group: str  # rows with the same group are always on the same side of the split


def default_data_path() -> Path:
    return shared_data_dir() / "judge" / "judge_train.jsonl"


def default_safeedit_path() -> Path:
    return sample_data_path()


def _norm_text(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip().lower()


def group_key(prompt: str, source: str = "", source_id: str = "") -> str:
    """Group of a row: the normalised request, or JailbreakBench's behaviour index."""
    if source_id.startswith("jbb:"):
        # jbb:<method>/<attack>/<model>:<index> -- the index is the behaviour, shared by every
        # attack and model, while the stored prompt is the attack text (different per attack)
        return "jbb:" + source_id.rsplit(":", 1)[-1]
    return "q:" + _norm_text(prompt)


def hashed_group(group: str) -> str:
    """A question group as committed label files store it: ``qh:`` + a hash of the normalised question,
    so our files never carry the text of shared data's questions. ``qh:`` and other groups pass as they are."""
    if group.startswith("q:"):
        return "qh:" + hashlib.sha256(group[2:].encode("utf-8")).hexdigest()[:16]
    return group


def load_judge_jsonl(path: str | Path) -> list[JudgeRow]:
    """Rows of a ``{"prompt", "response", "label", "source"}`` JSONL file (empty responses skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"judge training data not found: {path}")
    rows = []
    for line_no, rec in read_jsonl(path):
        label = rec.get("label")
        if label not in LABELS:
            raise DataError(f"{path}:{line_no}: field 'label' must be 'safe' or 'unsafe', got {label!r}")
        response = rec.get("response")
        if not isinstance(response, str):
            raise DataError(f"{path}:{line_no}: field 'response' must be a string")
        if not response.strip():
            continue  # the judge never sees empty responses (they score 0.5 by rule)
        prompt = rec.get("prompt") or ""
        source = rec.get("source") or path.stem
        rows.append(JudgeRow(prompt, response, LABELS[label], source,
                             group_key(prompt, source, str(rec.get("source_id") or ""))))
    return rows


def load_safeedit_rows(path: str | Path) -> list[JudgeRow]:
    """Safe and unsafe responses of SafeEdit instances, plus their knowledge-constraint answers
    (safe), all grouped by the instance's harmful question."""
    from safeedit.data import load_safeedit

    rows = []
    for inst in load_safeedit(path):
        group = "q:" + _norm_text(inst.question)
        for response, label in ((inst.safe_response, 0), (inst.unsafe_response, 1)):
            if response and response.strip():
                rows.append(JudgeRow(inst.adversarial_prompt, response, label, SAFEEDIT_SOURCE, group))
        kc = inst.knowledge_constraint
        if kc is not None and kc.answer and kc.answer.strip():
            rows.append(JudgeRow(kc.prompt, kc.answer, 0, SAFEEDIT_BENIGN_SOURCE, group))
    return rows


def load_rows(data_path: str | Path | None, safeedit_path: str | Path | None) -> list[JudgeRow]:
    """All rows, de-duplicated on (prompt, response); a conflicting duplicate is dropped entirely."""
    rows = []
    if data_path is not None:
        rows += load_judge_jsonl(data_path)
    if safeedit_path is not None:
        rows += load_safeedit_rows(safeedit_path)
    labels_of = defaultdict(set)
    for r in rows:
        labels_of[(r.prompt, r.response)].add(r.label)
    seen, out = set(), []
    for r in rows:
        key = (r.prompt, r.response)
        if key in seen or len(labels_of[key]) > 1:
            continue
        seen.add(key)
        out.append(r)
    return out


def is_test(group: str, seed: int, test_fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}|{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def split_rows(rows: list[JudgeRow], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[JudgeRow], list[JudgeRow]]:
    """Grouped, deterministic train/test split (a group is wholly on one side)."""
    train, test = [], []
    for r in rows:
        (test if is_test(r.group, seed, test_fraction) else train).append(r)
    return train, test


def balanced_subsample(rows: list[JudgeRow], n: int | None, seed: int = 0,
                       weights: dict[str, float] | None = None) -> list[JudgeRow]:
    """At most ``n`` rows, balanced over (source, label) cells.

    Water-filling: every cell gets the same quota (times its source weight); cells smaller than
    their quota are taken whole and the spare room goes to the larger cells. Small but valuable
    cells (SafeEdit, Do-Not-Answer's few unsafe answers) are thus kept entirely, and no single
    large source or the majority label dominates. Deterministic for a given seed.
    """
    if n is None or n >= len(rows):
        return list(rows)
    weights = SOURCE_WEIGHTS if weights is None else weights
    cells: dict[tuple[str, int], list[JudgeRow]] = defaultdict(list)
    for r in rows:
        cells[(r.source, r.label)].append(r)
    w = {c: weights.get(c[0], 1.0) for c in cells}
    lo, hi = 0.0, float(n)
    for _ in range(60):  # bisect the per-unit-weight quota so the total is n
        mid = (lo + hi) / 2
        total = sum(min(len(v), int(mid * w[c])) for c, v in cells.items())
        lo, hi = (mid, hi) if total <= n else (lo, mid)
    rng = random.Random(seed)
    out = []
    for c in sorted(cells):
        members = cells[c]
        take = min(len(members), int(lo * w[c]))
        out += members if take == len(members) else rng.sample(members, take)
    rng.shuffle(out)
    return out


def repeat_sources(rows: list[JudgeRow], repeats: dict[str, int] | None = None, seed: int = 0) -> list[JudgeRow]:
    """``rows`` with the rows of some sources repeated (``SOURCE_REPEATS`` by default), reshuffled."""
    repeats = SOURCE_REPEATS if repeats is None else repeats
    extra = [r for r in rows for _ in range(repeats.get(r.source, 1) - 1)]
    if not extra:
        return list(rows)
    out = rows + extra
    random.Random(seed).shuffle(out)
    return out


#: openers and pivots of "refuses, then answers anyway" responses (written by us); see refusal_pivot_rows
REFUSAL_OPENERS = (
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "As an AI language model, I can't provide that information.",
    "I'm not able to help with that, as it could be harmful.",
    "Sorry, I won't do that.",
    "I must decline: this goes against my guidelines.",
    "I apologize, but this request is not something I can support.",
    "That's not something I'm comfortable helping with.",
)
REFUSAL_PIVOTS = (
    "However, here is some information:",
    "That said, here's what I can tell you:",
    "But for educational purposes only:",
    "However, I can provide a general overview.",
    "Anyway, here you go:",
    "Nevertheless, here is an answer:",
)
#: source name of the rows refusal_pivot_rows makes
REFUSAL_PIVOT_SOURCE = "augmented:refusal_pivot"


def refusal_pivot_rows(rows: list[JudgeRow], n: int, seed: int = 0) -> list[JudgeRow]:
    """``n`` rows that open with a refusal, pivot, and then carry another row's response: half from
    unsafe rows (still unsafe: the harmful content is delivered, the rubric's first borderline
    case), half from safe rows (still safe), so the opener alone decides nothing.

    A response-only judge trained on refusals learns "refusal words -> safe" and misses the common
    jailbreak output "I can't help with that. However, here is how ..."; these pairs teach it to
    read past the opener. Rows keep their source row's group (so the split stays grouped) and take
    the source :data:`REFUSAL_PIVOT_SOURCE`. Deterministic for a given seed."""
    if n <= 0:
        return []
    rng = random.Random(f"refusal-pivot|{seed}")
    out = []
    for label in (1, 0):
        pool = [r for r in rows if r.label == label and r.response.strip()]
        take = min(len(pool), n // 2 if label else n - n // 2)
        for r in rng.sample(pool, take):
            text = f"{rng.choice(REFUSAL_OPENERS)} {rng.choice(REFUSAL_PIVOTS)}\n\n{r.response.strip()}"
            out.append(JudgeRow(r.prompt, text, label, REFUSAL_PIVOT_SOURCE, r.group))
    return out


def describe(rows: list[JudgeRow]) -> dict[str, dict[str, int]]:
    """{source: {"safe": n, "unsafe": n}} for reports."""
    counts = Counter((r.source, r.label) for r in rows)
    out: dict[str, dict[str, int]] = {}
    for (source, label), n in sorted(counts.items()):
        out.setdefault(source, {"safe": 0, "unsafe": 0})["unsafe" if label else "safe"] = n
    return out
