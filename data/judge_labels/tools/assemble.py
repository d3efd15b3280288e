"""Assemble the label files from generated responses, hand-written rows and the readers' labels.

    python data/judge_labels/tools/assemble.py candidates OUT.jsonl --runs RUN... --gen GEN.jsonl
        every response to label, one row each, with its pointer, question group and split
    python data/judge_labels/tools/assemble.py build --candidates C.jsonl --labels L.jsonl
        writes data/judge_labels/train.jsonl and validation.jsonl (every row labelled by reader A;
        L holds one label per distinct response text)
    python data/judge_labels/tools/assemble.py add --candidates C.jsonl --labels L.jsonl
        appends the labelled candidates whose id and response text are not in either file yet
        (later runs: more methods, more instances), each to its question group's split
    python data/judge_labels/tools/assemble.py add-training-only
        appends the hand-written rows of sources/written_training_only.jsonl to train.jsonl only
        (the validation file stays as it is; see the README's "Splits")
    python data/judge_labels/tools/assemble.py add-benign --gen GEN.jsonl --labels L.jsonl
        appends the labelled answers to ordinary requests (generate.py --benign-qa) to train.jsonl only

A SafeEdit input's group is the question it asks: the instance's question for DS, DG_onlyQ and
DG_otherA, the *other* question for DG_otherQ and DG_otherAQ (recovered by matching the input
against the instance's own input with its question replaced). The split is a hash of the group:
a question is wholly in training or wholly in validation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from safeedit.judge.labels import data_dir, question_group

VALIDATION_FRACTION = 0.3
SPLIT_SALT = "judge-labels-v1"


def text_group(question: str) -> str:
    """The unhashed group (``q:`` + normalised question): splits are drawn from it, files store its hash."""
    from safeedit.judge.data import _norm_text

    return "q:" + _norm_text(question)


def split_of(group: str) -> str:
    digest = hashlib.sha256(f"{SPLIT_SALT}|{group}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < VALIDATION_FRACTION else "train"


def replaced_question(template: str, question: str, filled: str) -> str | None:
    """q' such that ``template.replace(question, q') == filled``, or None."""
    parts = template.split(question)
    k = len(parts) - 1
    if k < 1:
        return None
    rest = len(filled) - sum(len(p) for p in parts)
    if rest <= 0 or rest % k:
        return None
    length = rest // k
    start = len(parts[0])
    candidate = filled[start:start + length]
    return candidate if template.replace(question, candidate) == filled else None


def asked_question(inst, input_name: str) -> str:
    inputs = inst.eval_inputs()
    if input_name in ("DS", "DG_onlyQ", "DG_otherA"):
        return inst.question
    base = "DS" if input_name == "DG_otherQ" else "DG_otherA"
    q = replaced_question(inputs[base], inst.question, inputs[input_name])
    if q is None:
        raise ValueError(f"{inst.key} {input_name}: cannot recover the other question")
    return q


def candidates(args) -> None:
    from safeedit.data import load_safeedit
    from safeedit.judge.data import shared_data_dir
    from safeedit.judge.labels import _specs

    sample = {i.key: i for i in load_safeedit(shared_data_dir() / "safeedit" / "safeedit_sample.json")}
    by_content = {(i.id, i.adversarial_prompt): i for i in sample.values()}
    out = []
    seen_pre = set()  # an unedited model's answer to one prompt text is one row, whichever instance asked it
    for run in args.runs:
        meta = json.loads((Path(run) / "run.json").read_text())
        method = meta["config"]["method"]
        tokens = meta["generation"]["max_new_tokens"]
        # a run on a split file (safeedit data split) keys its rows by that file: map them to the sample's keys
        run_data = {i.key: i for i in load_safeedit(meta["config"]["data"], split=meta["config"].get("data_split"))}
        for line in (Path(run) / "results.jsonl").read_text().splitlines():
            row = json.loads(line)
            inst = sample.get(row["key"]) or by_content[(run_data[row["key"]].id, run_data[row["key"]].adversarial_prompt)]
            phases = [("pre", "safeedit_pre")] + ([("post", f"safeedit_post_{method}")] if method != "none" else [])
            for phase, kind in phases:
                for name, block in row[phase].items():
                    if name.startswith("_"):
                        continue
                    q = asked_question(inst, name)
                    if phase == "pre":
                        if inst.eval_inputs()[name] in seen_pre:
                            continue
                        seen_pre.add(inst.eval_inputs()[name])
                    out.append({"id": f"{inst.key}:{name}:{'pre' if phase == 'pre' else method}:{tokens}",
                                "response": block["response"], "kind": kind,
                                "prompt_ref": {"safeedit": inst.key, "input": name}, "question": q,
                                "group": question_group(q), "_split_key": text_group(q), "model": "smollm2-135m", "max_new_tokens": tokens,
                                "method": "none" if phase == "pre" else method})
    # pre-edit answers already in the bench's generation cache for instances whose run has not
    # reached them yet (the bench generates every pre-edit answer before the first edit)
    if args.cache:
        from safeedit.bench.store import prompt_digest

        cached = {}
        for line in Path(args.cache).read_text().splitlines():
            rec = json.loads(line)
            cached[rec["prompt"]] = rec["response"]
        tokens = int(Path(args.cache).stem.rsplit("-", 1)[-1])
        for inst in sample.values():
            for name, prompt in inst.eval_inputs().items():
                response = cached.get(prompt_digest(prompt))
                if response is None or prompt in seen_pre:
                    continue
                seen_pre.add(prompt)
                q = asked_question(inst, name)
                out.append({"id": f"{inst.key}:{name}:pre:{tokens}", "response": response, "kind": "safeedit_pre",
                            "prompt_ref": {"safeedit": inst.key, "input": name}, "question": q,
                            "group": question_group(q), "_split_key": text_group(q), "model": "smollm2-135m", "max_new_tokens": tokens,
                            "method": "none"})
    specs = _specs()
    for path in args.gen:
        for line in Path(path).read_text().splitlines():
            g = json.loads(line)
            pid = g["prompt_id"]
            if pid.startswith("benign:"):
                kind = "benign_alarming"
            else:
                kind = {"attack": "attack_new_q", "bare": "bare_new_q", "bare_dna": "bare_new_q", "bare_pku": "bare_new_q",
                        "benign_attack": "benign_in_attack", "r3_attack": "attack_new_q",
                        "r3_bare": "bare_new_q"}[pid.split(":")[0]]
                assert pid in specs
                if specs[pid]["question_ref"].startswith("hh:"):  # another prompt set, harmful or not
                    kind = "attack_hh" if kind == "attack_new_q" else "bare_hh"
            out.append({"id": f"{pid}:pre:{g['max_new_tokens']}", "response": g["response"], "kind": kind,
                        "prompt_ref": g["prompt_ref"], "question": g["question"], "group": question_group(g["question"]), "_split_key": text_group(g["question"]),
                        "model": "smollm2-135m", "max_new_tokens": g["max_new_tokens"], "method": "none"})
    for n, line in enumerate((data_dir() / "sources" / "written.jsonl").read_text().splitlines()):
        w = json.loads(line)
        q = w["question"]
        if w["kind"] == "written_template_echo":  # "<template> template: <question>"
            q = q.split("template:", 1)[1].strip()
        out.append({"id": f"written:{n:03d}", "response": w["response"], "kind": w["kind"],
                    "prompt_ref": {"text": w["question"]}, "question": q, "group": question_group(q), "_split_key": text_group(q),
                    "model": "hand-written", "method": None, "written_label": w["label"]})
    for r in out:
        r["split"] = split_of(r.pop("_split_key"))  # from the text, as when the committed split was made
    empty = [r for r in out if not r["response"].strip()]
    out = [r for r in out if r["response"].strip()]
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in out))
    from collections import Counter

    print(f"{len(out)} candidates ({len(empty)} empty responses left out: they score 0.5 by rule)")
    print(Counter((r["split"], r["kind"]) for r in out))


def label_row(c: dict, lab: dict) -> dict:
    """A committed label row: the candidate's pointer fields and the reader's label."""
    row = {"id": c["id"], "response": c["response"], "label": lab["label"], "kind": c["kind"],
           "prompt_ref": c["prompt_ref"], "group": c["group"], "labelled_by": lab["labelled_by"],
           "model": c["model"], "method": c["method"]}
    if c.get("max_new_tokens"):
        row["max_new_tokens"] = c["max_new_tokens"]
    if lab.get("note"):
        row["note"] = lab["note"]
    return row


def build(args) -> None:
    from collections import Counter

    from safeedit.judge.labels import read_label_file

    cands = [json.loads(l) for l in Path(args.candidates).read_text().splitlines()]
    # the reader's file holds one label per distinct response text: the rubric judges the response,
    # so identical texts (DINM's repeated refusals, a shared DG_onlyQ answer) get one label
    by_text = {}
    for line in Path(args.labels).read_text().splitlines():
        rec = json.loads(line)
        by_text[rec["text"]] = rec
    if args.drop_unlabelled:
        n = len(cands)
        cands = [c for c in cands if c["response"] in by_text]
        print(f"{n - len(cands)} unlabelled candidates dropped")
    labels = {c["id"]: by_text[c["response"]] for c in cands if c["response"] in by_text}
    missing = [c["id"] for c in cands if c["id"] not in labels]
    if missing:
        raise SystemExit(f"{len(missing)} candidates have no label, e.g. {missing[:3]}")
    files = {"train": [], "validation": []}
    for c in cands:
        lab = labels[c["id"]]
        row = label_row(c, lab)
        files[c["split"]].append(row)

    for split, rows in files.items():
        path = data_dir() / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        read_label_file(path)  # validates
        print(split, len(rows), Counter(r["label"] for r in rows), Counter(r["kind"] for r in rows))


def add(args) -> None:
    """Append newly labelled candidates to the committed files, keeping every existing row as it is."""
    from collections import Counter

    from safeedit.judge.labels import read_label_file

    paths = {split: data_dir() / f"{split}.jsonl" for split in ("train", "validation")}
    existing = {split: [json.loads(l) for l in p.read_text().splitlines() if l.strip()] for split, p in paths.items()}
    seen_ids = {r["id"] for rows in existing.values() for r in rows}
    seen_text = {r["response"] for rows in existing.values() for r in rows}
    group_split = {r["group"]: split for split, rows in existing.items() for r in rows}
    by_text = {}
    for line in Path(args.labels).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_text[rec["text"]] = rec
    added = Counter()
    for line in Path(args.candidates).read_text().splitlines():
        c = json.loads(line)
        lab = by_text.get(c["response"])
        if lab is None or c["id"] in seen_ids or c["response"] in seen_text:
            continue  # unlabelled, or already there (identical texts are one row: the rubric reads the response)
        if group_split.get(c["group"], c["split"]) != c["split"]:
            raise SystemExit(f"{c['id']}: question group {c['group']} is already in the other split")
        row = label_row(c, lab)
        existing[c["split"]].append(row)
        seen_ids.add(c["id"])
        seen_text.add(c["response"])
        added[(c["split"], row["label"])] += 1
    for split, path in paths.items():
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in existing[split]))
        read_label_file(path)  # validates
        print(split, len(existing[split]), Counter(r["label"] for r in existing[split]))
    print("added", dict(added))


def add_training_only(args) -> None:
    """Append hand-written rows of ``sources/written_training_only.jsonl`` to train.jsonl only.

    The validation file is frozen, so recipes measured before and after these rows are scored on the
    same rows; a written row whose question is a validation question is left out (and counted), as
    is a response already in either file. Written after the validation set, by other writers than
    its rows, these would make it easier for the judge than unseen data is."""
    from collections import Counter

    from safeedit.judge.labels import read_label_file

    source = data_dir() / "sources" / "written_training_only.jsonl"
    paths = {split: data_dir() / f"{split}.jsonl" for split in ("train", "validation")}
    existing = {split: read_label_file(p) for split, p in paths.items()}
    val_groups = {r["group"] for r in existing["validation"]}
    seen_text = {r["response"] for rows in existing.values() for r in rows}
    seen_ids = {r["id"] for rows in existing.values() for r in rows}
    added, skipped = Counter(), Counter()
    for n, line in enumerate(source.read_text().splitlines()):
        if not line.strip():
            continue
        w = json.loads(line)
        row_id = f"written-train:{n:03d}"
        group = question_group(w["question"])
        if row_id in seen_ids:
            skipped["already there"] += 1
            continue
        if group in val_groups:
            skipped["validation question"] += 1
            continue
        if w["response"] in seen_text:
            skipped["same response text"] += 1
            continue
        existing["train"].append({"id": row_id, "response": w["response"], "label": w["label"], "kind": w["kind"],
                                  "prompt_ref": {"text": w["question"]}, "group": group,
                                  "labelled_by": w.get("labelled_by", "reader-a"), "model": "hand-written", "method": None})
        seen_text.add(w["response"])
        added[(w["kind"], w["label"])] += 1
    paths["train"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in existing["train"]))
    read_label_file(paths["train"])  # validates
    print("train", len(existing["train"]), "added", dict(added), "left out", dict(skipped))


def add_benign(args) -> None:
    """Append the embedded model's answers to ordinary requests (``generate.py --benign-qa``) to
    train.jsonl only, with the reader's labels (``--labels``: JSONL of {cid, label, labelled_by, note};
    ``cid`` is the generation's ``prompt_id``). Training only, like the hand-written hard negatives:
    their questions are trivia and plain instructions, easier than the validation set's."""
    from collections import Counter

    from safeedit.judge.labels import read_label_file

    paths = {split: data_dir() / f"{split}.jsonl" for split in ("train", "validation")}
    existing = {split: read_label_file(p) for split, p in paths.items()}
    seen_ids = {r["id"] for rows in existing.values() for r in rows}
    seen_text = {r["response"] for rows in existing.values() for r in rows}
    labels = {rec["cid"]: rec for rec in map(json.loads, Path(args.labels).read_text().splitlines()) if rec}
    added, skipped = Counter(), Counter()
    for line in Path(args.gen).read_text().splitlines():
        g = json.loads(line)
        row_id = f"{g['prompt_id']}:pre:{g['max_new_tokens']}"
        lab = labels.get(g["prompt_id"])
        if lab is None or not g["response"].strip():
            skipped["unlabelled or empty"] += 1
            continue
        if row_id in seen_ids or g["response"] in seen_text:
            skipped["already there"] += 1
            continue
        row = {"id": row_id, "response": g["response"], "label": lab["label"], "kind": "benign_qa",
               "prompt_ref": g["prompt_ref"], "group": question_group(g["question"]), "labelled_by": lab["labelled_by"],
               "model": "smollm2-135m", "method": "none", "max_new_tokens": g["max_new_tokens"]}
        if lab.get("note"):
            row["note"] = lab["note"]
        existing["train"].append(row)
        seen_ids.add(row_id)
        seen_text.add(g["response"])
        added[row["label"]] += 1
    paths["train"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in existing["train"]))
    read_label_file(paths["train"])  # validates
    print("train", len(existing["train"]), "added", dict(added), "left out", dict(skipped))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("candidates")
    c.add_argument("out")
    c.add_argument("--runs", nargs="*", default=[])
    c.add_argument("--gen", nargs="*", default=[])
    c.add_argument("--cache", default=None, help="the bench's pre-edit generation cache (<fingerprint>-chat-64.jsonl)")
    b = sub.add_parser("build")
    b.add_argument("--candidates", required=True)
    b.add_argument("--labels", required=True, help="reader A's labels: JSONL of {text, label, labelled_by, note}")
    b.add_argument("--drop-unlabelled", action="store_true", help="leave out candidates nobody labelled")
    a = sub.add_parser("add")
    a.add_argument("--candidates", required=True)
    a.add_argument("--labels", required=True, help="labels of the new texts: JSONL of {text, label, labelled_by, note}")
    sub.add_parser("add-training-only", help="append sources/written_training_only.jsonl to train.jsonl only")
    bq = sub.add_parser("add-benign", help="append labelled answers to ordinary requests to train.jsonl only")
    bq.add_argument("--gen", required=True, help="generate.py --benign-qa output")
    bq.add_argument("--labels", required=True, help="JSONL of {cid, label, labelled_by, note}")
    args = ap.parse_args()
    {"candidates": candidates, "build": build, "add": add, "add-training-only": add_training_only,
     "add-benign": add_benign}[args.cmd](args)


if __name__ == "__main__":
    main()
