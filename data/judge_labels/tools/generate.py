"""Responses of the embedded model to our own prompts (specs + benign questions), unlabelled.

    python data/judge_labels/tools/generate.py OUT.jsonl [--max-new-tokens 64]
    python data/judge_labels/tools/generate.py OUT.jsonl --benign-qa    # ordinary questions (kind benign_qa)

Greedy, chat template, like ``safeedit bench``'s pre-edit generations. Appends one JSON line per
prompt (``prompt_id``, ``prompt_ref``, ``question``, ``response``) and skips ids already in OUT,
so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safeedit.judge.labels import _benign_questions, _specs, spec_prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--only", default=None, help="comma-separated prompt-id prefixes to generate (default all)")
    ap.add_argument("--skip-done-in", nargs="*", default=[], help="other output files whose ids count as done")
    ap.add_argument("--benign-qa", action="store_true",
                    help="instead: ordinary questions (the shared TriviaQA subset, the SafeEdit sample's knowledge-"
                         "constraint instructions), whose answers are benign by construction (kind benign_qa)")
    args = ap.parse_args()
    from safeedit.lm import generate, load_model

    todo = []
    if args.benign_qa:
        todo = benign_qa_prompts()
    else:
        for sid in _specs():
            prompt, question = spec_prompt(sid)
            todo.append({"prompt_id": sid, "prompt_ref": {"spec": sid}, "question": question, "prompt": prompt})
        for bid, q in _benign_questions().items():
            todo.append({"prompt_id": bid, "prompt_ref": {"text": q}, "question": q, "prompt": q})
    out = Path(args.out)
    done = set()
    for path in [out, *map(Path, args.skip_done_in)]:
        if path.exists():
            done |= {json.loads(l)["prompt_id"] for l in path.read_text().splitlines()}
    only = tuple(p + ":" for p in args.only.split(",")) if args.only else None
    todo = sorted((t for t in todo if t["prompt_id"] not in done and (only is None or t["prompt_id"].startswith(only))),
                  key=lambda t: len(t["prompt"]))
    model, tok = load_model("smollm2-135m")
    step = args.batch_size * 2
    for s in range(0, len(todo), step):
        part = todo[s:s + step]
        responses = generate(model, tok, [t["prompt"] for t in part], max_new_tokens=args.max_new_tokens,
                             chat=True, batch_size=args.batch_size)
        with open(out, "a") as f:
            for t, r in zip(part, responses):
                rec = {k: v for k, v in t.items() if k != "prompt"}
                f.write(json.dumps({**rec, "response": r, "max_new_tokens": args.max_new_tokens}) + "\n")
        print(f"{s + len(part)}/{len(todo)}", flush=True)


def benign_qa_prompts() -> list[dict]:
    """Ordinary requests: every question of the shared TriviaQA subset (``triviaqa:<source_line>``) and
    every knowledge-constraint instruction of the SafeEdit sample (``<key>:constraint``)."""
    from safeedit.data import load_safeedit
    from safeedit.data.jsonio import read_jsonl
    from safeedit.judge.data import shared_data_dir

    out = []
    for _, rec in read_jsonl(shared_data_dir() / "general" / "triviaqa_validation_1000.jsonl"):
        ref = f"triviaqa:{rec['source_line']}"
        out.append({"prompt_id": ref, "prompt_ref": {"triviaqa": str(rec["source_line"])}, "question": rec["question"],
                    "prompt": rec["question"]})
    seen = set()
    for inst in load_safeedit(shared_data_dir() / "safeedit" / "safeedit_sample.json"):
        kc = inst.knowledge_constraint
        if kc is None or not kc.prompt.strip() or kc.prompt in seen:
            continue
        seen.add(kc.prompt)
        out.append({"prompt_id": f"constraint:{inst.key}", "prompt_ref": {"safeedit": inst.key, "input": "constraint"},
                    "question": kc.prompt, "prompt": kc.prompt})
    return out


if __name__ == "__main__":
    main()
