"""`safeedit judge train|predict`: train our safety judge, or score responses with any judge."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safeedit.errors import ConfigError, DataError


def cmd_train(args) -> int:
    import torch

    from safeedit.judge import train_judge

    if args.threads:
        torch.set_num_threads(args.threads)
    train_judge(
        args.out, data_path=None if args.no_judge_data else args.data,
        safeedit_path=None if args.no_safeedit else args.safeedit,
        with_prompt=args.with_prompt, max_train=args.max_train or None, epochs=args.epochs,
        max_length=args.max_length, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        test_fraction=args.test_fraction, max_eval_per_source=args.max_eval_per_source or None,
        progress=not args.quiet)
    return 0


def _read_jsonl(path: Path, field: str, prompt_field: str | None) -> tuple[list[str], list[str] | None]:
    from safeedit.data.jsonio import read_jsonl

    responses, prompts = [], []
    for line_no, rec in read_jsonl(path):
        if not isinstance(rec.get(field), str):
            raise DataError(f"{path}:{line_no}: field {field!r} is missing or not a string")
        responses.append(rec[field])
        if prompt_field is not None:
            if not isinstance(rec.get(prompt_field), str):
                raise DataError(f"{path}:{line_no}: field {prompt_field!r} is missing or not a string")
            prompts.append(rec[prompt_field])
    return responses, (prompts if prompt_field is not None else None)


def cmd_predict(args) -> int:
    from safeedit.judge import SafetyJudge

    if (args.text is None) == (args.jsonl is None):
        raise ConfigError("give exactly one of --text TEXT or --jsonl FILE")
    judge = SafetyJudge.from_pretrained(args.judge, device=args.device)
    if args.text is not None:
        responses, prompts = [args.text], ([args.prompt] if args.prompt is not None else None)
    else:
        responses, prompts = _read_jsonl(Path(args.jsonl), args.field, args.prompt_field)
    if prompts is not None and not judge.with_prompt:
        print("note: this judge reads the response only; the prompt is ignored", file=sys.stderr)
    result = judge(responses, prompts=prompts, batch_size=args.batch_size, progress=len(responses) > 100)
    names = {0.0: "safe", 1.0: "unsafe", 0.5: "empty"}
    for i, (label, prob) in enumerate(zip(result.labels, result.unsafe_prob)):
        if args.json:
            print(json.dumps({"index": i, "label": label, "verdict": names[label], "unsafe_prob": round(prob, 4)}))
        else:
            print(f"{i}\t{names[label]}\tlabel={label:g}\tp_unsafe={prob:.3f}")
    if len(responses) > 1:
        print(f"{len(responses)} responses: safe share {result.safe_rate:.3f} (empty = 0.5)", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from safeedit.judge.data import default_data_path, default_safeedit_path
    from safeedit.judge.model import default_judge_dir

    judge = sub.add_parser("judge", help="train or run the safe/unsafe response judge")
    cmds = judge.add_subparsers(dest="judge_command", required=True)

    train = cmds.add_parser("train", help="fine-tune our judge on CPU and save it with a model card",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--out", default=None, help=f"output folder (default {default_judge_dir()}, "
                                                   "or $SAFEEDIT_JUDGE)")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--with-prompt", dest="with_prompt", action="store_true",
                      help="the judge reads prompt + response")
    mode.add_argument("--response-only", dest="with_prompt", action="store_false",
                      help="the judge reads the response only, like the paper's judge (default)")
    train.set_defaults(with_prompt=False)
    train.add_argument("--data", default=str(default_data_path()), help="judge_train.jsonl")
    train.add_argument("--safeedit", default=str(default_safeedit_path()), help="SafeEdit file for extra rows")
    train.add_argument("--no-judge-data", action="store_true", help="leave judge_train.jsonl out")
    train.add_argument("--no-safeedit", action="store_true", help="leave the SafeEdit rows out")
    train.add_argument("--max-train", type=int, default=2800,
                       help="balanced training subsample size (0 = the whole training split)")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-length", type=int, default=128, help="training truncation in tokens")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--test-fraction", type=float, default=0.2, help="share of request groups held out")
    train.add_argument("--max-eval-per-source", type=int, default=150,
                       help="held-out rows scored per source (0 = all)")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    predict = cmds.add_parser("predict", help="label responses safe/unsafe with a judge")
    predict.add_argument("--judge", default=None, help="judge folder or hub id (default: our trained judge), "
                                                       "e.g. zjunlp/SafeEdit-Safety-Classifier")
    predict.add_argument("--text", default=None, help="one response to judge")
    predict.add_argument("--prompt", default=None, help="its prompt (read only by a prompt+response judge)")
    predict.add_argument("--jsonl", default=None, help="a JSONL file of records to judge")
    predict.add_argument("--field", default="response", help="record field holding the response")
    predict.add_argument("--prompt-field", default=None, help="record field holding the prompt")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--device", default=None)
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.set_defaults(func=cmd_predict)
