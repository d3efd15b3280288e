"""Build the prompt list for the judge-label responses (pointers only; texts resolved at run time).

Writes ``data/judge_labels/prompts/attack_specs.jsonl``: harmful questions from the shared
``judge_train`` sources (GPTFuzz question list, Do-Not-Answer) wrapped in the attack templates of
the SafeEdit sample (the instance's adversarial prompt with its question replaced), plus some bare
questions, 350 more bare Do-Not-Answer questions from every risk area, 250 bare PKU-SafeRLHF
questions, some of our benign questions inside a jailbreak template, and (round 2) 160 more
PKU-SafeRLHF / Do-Not-Answer questions inside the attack templates. Each spec row holds pointers,
never SafeEdit or third-party text:

    {"prompt_id", "question_ref": "gptfuzz_q:<index>" | "dna:<id>" | "benign:<nnn>",
     "template_ref": "safeedit_sample.json#<position>:DS" | null}

Usage: python data/judge_labels/tools/make_prompts.py   (deterministic; seed 0)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    import csv

    from safeedit.data import load_safeedit
    from safeedit.judge.data import shared_data_dir

    shared = shared_data_dir()
    rng = random.Random(0)
    sample = load_safeedit(shared / "safeedit" / "safeedit_sample.json")
    # one template per attack name: an instance whose adversarial prompt holds its question once
    templates, seen = [], set()
    for inst in sample:
        if inst.attack_name in seen or inst.adversarial_prompt.count(inst.question) != 1:
            continue
        seen.add(inst.attack_name)
        templates.append(f"{inst.key}:DS")
    gptfuzz = list(range(100))
    with open(shared / "judge" / "raw" / "do_not_answer" / "data_en.csv", newline="") as f:
        dna = [r["id"] for r in csv.DictReader(f)
               if r["risk_area"] in ("Malicious Uses", "Discrimination, Exclusion, Toxicity, Hateful, Offensive")]
    questions = [f"gptfuzz_q:{i}" for i in rng.sample(gptfuzz, 60)] + [f"dna:{i}" for i in rng.sample(dna, 60)]
    benign = [json.loads(l)["prompt_id"] for l in open(HERE / "prompts" / "benign_alarming.jsonl")]
    specs = []
    for n, q in enumerate(questions):
        specs.append({"prompt_id": f"attack:{n:03d}", "question_ref": q, "template_ref": templates[n % len(templates)]})
        if n % 4 == 0:  # a bare version of every fourth question (like DG_onlyQ)
            specs.append({"prompt_id": f"bare:{n:03d}", "question_ref": q, "template_ref": None})
    for n, b in enumerate(rng.sample(benign, 24)):  # a benign question inside a jailbreak template
        specs.append({"prompt_id": f"benign_attack:{n:03d}", "question_ref": b,
                      "template_ref": templates[(n * 7) % len(templates)]})
    # more bare Do-Not-Answer questions from every risk area (cheap short prompts; mostly for training)
    used = {q.split(":", 1)[1] for q in questions if q.startswith("dna:")}
    with open(shared / "judge" / "raw" / "do_not_answer" / "data_en.csv", newline="") as f:
        all_dna = [r["id"] for r in csv.DictReader(f) if r["id"] not in used]
    for n, i in enumerate(rng.sample(all_dna, 200)):
        specs.append({"prompt_id": f"bare_dna:{n:03d}", "question_ref": f"dna:{i}", "template_ref": None})
    with open(shared / "judge" / "raw" / "jailbreakeval" / "Safe-RLHFmini.csv", newline="") as f:
        pku_questions = {}
        for row_no, r in enumerate(csv.DictReader(f)):
            pku_questions.setdefault(r["question"], row_no)  # one row per distinct question
    for n, row_no in enumerate(rng.sample(sorted(pku_questions.values()), 250)):
        specs.append({"prompt_id": f"bare_pku:{n:03d}", "question_ref": f"pku:{row_no}", "template_ref": None})
    rest = [i for i in all_dna if i not in {s["question_ref"][4:] for s in specs if s["question_ref"].startswith("dna:")}]
    for n, i in enumerate(rng.sample(rest, 150)):
        specs.append({"prompt_id": f"bare_dna:{200 + n:03d}", "question_ref": f"dna:{i}", "template_ref": None})
    # round 2: 160 more questions not used above (PKU-SafeRLHF, Do-Not-Answer) inside the sample's
    # attack templates: training rows shaped like the bench's adversarial inputs. Own seed, so every
    # spec above stays as it was
    rng2 = random.Random(1)
    used_refs = {s["question_ref"] for s in specs}
    pool = [f"pku:{r}" for r in sorted(pku_questions.values())] + [f"dna:{i}" for i in all_dna]
    fresh = [q for q in pool if q not in used_refs]
    for n, q in enumerate(rng2.sample(fresh, 160)):
        specs.append({"prompt_id": f"attack:{len(questions) + n:03d}", "question_ref": q,
                      "template_ref": templates[(n * 5 + 3) % len(templates)]})
    specs += round3(shared, specs, templates)
    out = HERE / "prompts" / "attack_specs.jsonl"
    out.write_text("".join(json.dumps(s) + "\n" for s in specs))
    print(f"{len(specs)} specs, {len(templates)} templates -> {out}")


def round3(shared: Path, specs: list[dict], templates: list[str]) -> list[dict]:
    """Round 3 (own seed, so every earlier spec stays as it was): questions of a prompt set no judge
    training row comes from -- the first human turn of Anthropic HH-RLHF harmless-base test
    conversations, harmful and harmless ones alike -- plus fresh PKU-SafeRLHF / Do-Not-Answer
    questions, inside the sample's attack templates and our own six (``configs/build``), and bare."""
    import csv

    from safeedit.judge.labels import _hh_questions

    rng = random.Random(3)
    used = {s["question_ref"] for s in specs}
    hh_texts = {}
    for ref, text in _hh_questions().items():  # one ref per distinct, single-line, short question
        if len(text) <= 300 and "\n" not in text:
            hh_texts.setdefault(text.strip().lower(), ref)
    hh = rng.sample(sorted(hh_texts.values(), key=lambda r: int(r.split(":")[1])), 500)
    with open(shared / "judge" / "raw" / "do_not_answer" / "data_en.csv", newline="") as f:
        dna = [f"dna:{r['id']}" for r in csv.DictReader(f)]
    with open(shared / "judge" / "raw" / "jailbreakeval" / "Safe-RLHFmini.csv", newline="") as f:
        pku_rows = {}
        for row_no, r in enumerate(csv.DictReader(f)):
            pku_rows.setdefault(r["question"], row_no)
    fresh = [q for q in dna + [f"pku:{r}" for r in sorted(pku_rows.values())] if q not in used]
    other = rng.sample(fresh, 250)
    own = [f"build:{t['name']}" for t in json.loads((HERE.parents[1] / "configs" / "build" / "attack_templates.json")
                                                    .read_text())["templates"]]
    every = templates + own
    out = []
    for n, q in enumerate(hh[:300] + other[:150]):
        out.append({"prompt_id": f"r3_attack:{n:03d}", "question_ref": q, "template_ref": every[(n * 7 + 1) % len(every)]})
    for n, q in enumerate(hh[300:] + other[150:]):
        out.append({"prompt_id": f"r3_bare:{n:03d}", "question_ref": q, "template_ref": None})
    return out


if __name__ == "__main__":
    main()
