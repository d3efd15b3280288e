"""``safeedit build``: construct SafeEdit-style data, one resumable stage at a time.

Stages: questions, attacks, responses, review-export, review-import, assemble; ``all`` runs
questions, attacks, responses and assemble (human review is run by hand in between, see
``safeedit.build.review``). Everything lives in the ``--out`` folder; rerunning a stage resumes it.
"""

from __future__ import annotations

import argparse
import json
import sys


def _ratios(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected three non-negative numbers TRAIN,VAL,TEST, got {text!r}")
    return values  # type: ignore[return-value]


def register(subparsers) -> None:
    from safeedit.build.pipeline import STAGES

    p = subparsers.add_parser("build", help="build SafeEdit-style data from categories and attack templates",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=(*STAGES, "all"))
    p.add_argument("--out", required=True, help="build folder (created; rerun with the same folder to resume)")

    g = p.add_argument_group("inputs (default: the files shipped in configs/build)")
    g.add_argument("--categories", default=None, help="categories file: [{name, policy}]")
    g.add_argument("--attacks", default=None, help="attack templates file: [{name, category, template}] with {question}")
    g.add_argument("--pairs", default=None, help="instruction pairs for knowledge constraints: JSONL {instruction, answer}")
    g.add_argument("--extra-pairs", default=None,
                   help="more knowledge-constraint pairs read at run time, e.g. a TriviaQA JSONL {question, answers}")

    g = p.add_argument_group("generator")
    g.add_argument("--generator", default="smollm2-135m",
                   help="local model (hub id, folder, .gguf, alias) or 'http' for an OpenAI-compatible endpoint")
    g.add_argument("--dtype", default="auto")
    g.add_argument("--device", default=None)
    g.add_argument("--batch-size", type=int, default=8, help="local generation batch size")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=None, help="chat template (default)")
    mode.add_argument("--raw", dest="chat", action="store_false", help="raw text prompts")
    g.add_argument("--base-url", default=None, help="HTTP: API root, e.g. https://api.openai.com/v1")
    g.add_argument("--api-model", default=None, help="HTTP: model name sent to the endpoint")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="HTTP: environment variable holding the key")
    g.add_argument("--timeout", type=float, default=60.0, help="HTTP: seconds per request")
    g.add_argument("--max-retries", type=int, default=5, help="HTTP: retries with exponential backoff")
    g.add_argument("--rpm", type=float, default=None, help="HTTP: at most this many requests per minute")
    g.add_argument("--concurrency", type=int, default=1, help="HTTP: parallel requests")

    g = p.add_argument_group("construction")
    g.add_argument("--questions-per-category", type=int, default=60)
    g.add_argument("--question-max-new-tokens", type=int, default=48)
    g.add_argument("--question-temperature", type=float, default=0.9)
    g.add_argument("--response-max-new-tokens", type=int, default=96)
    g.add_argument("--response-temperature", type=float, default=0.0)
    g.add_argument("--question-attempts", type=int, default=1,
                   help="regenerate a question the gates drop (empty, too short, near-duplicate), up to this many "
                        "tries in all; may be raised on a finished questions stage (before responses are planned)")
    g.add_argument("--response-attempts", type=int, default=1,
                   help="regenerate (sampling) a response the gates drop, up to this many tries in all; "
                        "may be raised on a finished build to retry only the failures")
    g.add_argument("--attacks-per-question", type=int, default=2,
                   help="instances per question (default 2; the paper has 540 questions x 15 = 8,100)")
    g.add_argument("--split-ratios", type=_ratios, default=None,
                   help="TRAIN,VAL,TEST (default 0.5,0.333,0.167 as in the paper; fixed once responses are planned)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chunk-size", type=int, default=8, help="items generated (and flushed) per call")
    g.add_argument("--truncated", choices=("trim", "drop"), default="trim",
                   help="a response cut at max tokens: trim to its last sentence (default) or drop it")
    g.add_argument("--judge", default=None, help="safety judge folder for the refusal gate (else a phrase heuristic)")
    g.add_argument("--review-file", default=None, help="review-export: CSV to write; review-import: CSV to read")
    g.add_argument("--blank-accepts", action="store_true", help="review-import: a blank decision means accept")
    p.set_defaults(func=cmd_build)


def _generator(args, stage: str):
    from safeedit.build.generators import make_generator

    if stage not in ("questions", "responses", "all"):
        return None
    return make_generator(args.generator, base_url=args.base_url, model=args.api_model, api_key_env=args.api_key_env,
                          timeout=args.timeout, max_retries=args.max_retries, requests_per_minute=args.rpm,
                          concurrency=args.concurrency, dtype=args.dtype, device=args.device,
                          batch_size=args.batch_size, chat=args.chat)


def cmd_build(args) -> int:
    from safeedit.build.pipeline import Build, BuildSettings

    settings = BuildSettings(
        questions_per_category=args.questions_per_category, question_max_new_tokens=args.question_max_new_tokens,
        question_temperature=args.question_temperature, question_attempts=args.question_attempts,
        response_max_new_tokens=args.response_max_new_tokens,
        response_temperature=args.response_temperature, response_attempts=args.response_attempts,
        attacks_per_question=args.attacks_per_question,
        split_ratios=args.split_ratios, seed=args.seed, chunk_size=args.chunk_size, truncated=args.truncated,
        blank_accepts=args.blank_accepts,
    )
    build = Build(args.out, settings=settings, categories_path=args.categories, attacks_path=args.attacks,
                  pairs_path=args.pairs, extra_pairs_path=args.extra_pairs, generator=_generator(args, args.stage),
                  judge_dir=args.judge)
    kwargs = {}
    if args.stage == "review-export" and args.review_file:
        kwargs["out_csv"] = args.review_file
    if args.stage == "review-import" and args.review_file:
        kwargs["csv_path"] = args.review_file
    counts = build.run(args.stage, **kwargs)
    print(json.dumps(counts, indent=2))
    if args.stage in ("assemble", "all"):
        entry = build.manifest.stage("assemble") or {}
        leakage = entry.get("leakage", [])
        if leakage:
            print(f"LEAKAGE: {len(leakage)} kind(s) of question/template sharing between splits:")
            for line in leakage:
                print(f"  - {line}")
        else:
            print("no leakage: every question and attack template stays within one split")
        print(f"dataset: {entry.get('output')}  manifest: {build.manifest.path}")
    return 0
