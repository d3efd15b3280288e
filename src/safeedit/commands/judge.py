"""`safeedit judge train|predict`: train our safety judge, or score responses with any judge."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_train(args) -> int:
    import torch

    from safeedit.judge.train import JudgeTrainConfig, train_judge

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = JudgeTrainConfig(
        data_path=None if args.no_judge_data else args.data,
        safeedit_path=None if args.no_safeedit else args.safeedit,
        labels_path=None if args.no_labels else args.labels,
        validation_path=None if args.no_validation else args.validation,
        labels_repeats=args.labels_repeats, with_prompt=args.with_prompt, max_train=args.max_train or None,
        epochs=args.epochs, max_length=args.max_length, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        test_fraction=args.test_fraction, calib_fraction=args.calib_fraction,
        max_eval_per_source=args.max_eval_per_source or None, base_model=args.base_model)
    train_judge(args.out, cfg, progress=not args.quiet)
    return 0


def cmd_eval(args) -> int:
    """Score a judge on the labelled validation set, the pool's held-out split and any label files."""
    import json as _json

    from safeedit.judge import SafetyJudge
    from safeedit.judge.labels import default_validation_path, load_label_rows
    from safeedit.judge.model import CONFIG_KEY
    from safeedit.judge.train import JudgeTrainConfig, build_splits, evaluate, format_scores

    judge = SafetyJudge.from_pretrained(args.judge, device=args.device)
    print(f"judge: {judge!r}")
    info = getattr(judge.model.config, CONFIG_KEY, None) or {}
    sets = []
    validation = None if args.no_validation else args.validation
    if validation is None and not args.no_validation and default_validation_path().is_file():
        validation = str(default_validation_path())
    if validation:
        sets.append((f"labelled validation set ({validation})", load_label_rows(validation, with_prompts=judge.with_prompt)))
    if not args.no_held_out:
        # the same split the judge's training used: seed and test fraction from its config
        cfg = JudgeTrainConfig(data_path=args.data, safeedit_path=args.safeedit, labels_path=None,
                               validation_path=validation, seed=int(info.get("seed", 0)),
                               test_fraction=float(info.get("test_fraction", 0.2)), calib_fraction=0,
                               max_eval_per_source=args.max_eval_per_source or None)
        sets.append(("held-out split of the training pool", build_splits(cfg, with_prompts=judge.with_prompt).test))
    for path in args.files:
        sets.append((f"labelled file {path}", _labelled_file_rows(Path(path), judge.with_prompt)))
    if not sets:
        raise ValueError("nothing to score: drop --no-validation/--no-held-out or give label files")
    out = {"judge": repr(judge), "sets": {}}
    for title, rows in sets:
        metrics = evaluate(judge, rows, batch_size=args.batch_size, progress=len(rows) > 200 and not args.quiet)
        out["sets"][title] = metrics
        print(format_scores(metrics, f"\n== {title}: {len(rows)} rows"))
    if args.json_out:
        Path(args.json_out).write_text(_json.dumps(out, indent=2) + "\n")
        print(f"written: {args.json_out}")
    return 0


def _labelled_file_rows(path: Path, with_prompts: bool):
    """Rows of a label file in our format, or of a judge_train-style {prompt, response, label, source} file."""
    from safeedit.data.jsonio import read_jsonl
    from safeedit.judge.data import load_judge_jsonl
    from safeedit.judge.labels import load_label_rows

    first = next((rec for _, rec in read_jsonl(path)), None)
    if isinstance(first, dict) and "prompt_ref" in first:
        return load_label_rows(path, with_prompts=with_prompts)
    return load_judge_jsonl(path)


def _read_jsonl(path: Path, field: str, prompt_field: str | None) -> tuple[list[str], list[str] | None]:
    from safeedit.data.jsonio import read_jsonl

    responses, prompts = [], []
    for line_no, rec in read_jsonl(path):
        if not isinstance(rec.get(field), str):
            raise ValueError(f"{path}:{line_no}: field {field!r} is missing or not a string")
        responses.append(rec[field])
        if prompt_field is not None:
            if not isinstance(rec.get(prompt_field), str):
                raise ValueError(f"{path}:{line_no}: field {prompt_field!r} is missing or not a string")
            prompts.append(rec[prompt_field])
    return responses, (prompts if prompt_field is not None else None)


def cmd_predict(args) -> int:
    from safeedit.judge import SafetyJudge

    if (args.text is None) == (args.jsonl is None):
        raise ValueError("give exactly one of --text TEXT or --jsonl FILE")
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
    from safeedit.judge.train import JudgeTrainConfig

    judge = sub.add_parser("judge", help="train, evaluate or run the safe/unsafe response judge")
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
    train.add_argument("--labels", default=JudgeTrainConfig.labels_path,
                       help="our labelled training rows: 'default' = data/judge_labels/train.jsonl (off unless given)")
    train.add_argument("--no-labels", action="store_true", help="leave our labelled training rows out")
    train.add_argument("--labels-repeats", type=int, default=JudgeTrainConfig.labels_repeats,
                       help="copies of each labelled training row")
    train.add_argument("--validation", default="default",
                       help="labelled validation set (data/judge_labels/validation.jsonl): its questions are "
                            "kept out of training and it is scored after training")
    train.add_argument("--no-validation", action="store_true", help="no validation set")
    train.add_argument("--calib-fraction", type=float, default=JudgeTrainConfig.calib_fraction,
                       help="share of training groups held out to calibrate the decision threshold (0 = argmax)")
    train.add_argument("--base-model", default=None, help="backbone folder (default all-MiniLM-L6-v2 from PyPI)")
    train.add_argument("--max-train", type=int, default=JudgeTrainConfig.max_train or 0,
                       help="balanced training subsample size (0 = the whole training split)")
    train.add_argument("--epochs", type=float, default=JudgeTrainConfig.epochs)
    train.add_argument("--max-length", type=int, default=JudgeTrainConfig.max_length, help="training truncation in tokens")
    train.add_argument("--batch-size", type=int, default=JudgeTrainConfig.batch_size)
    train.add_argument("--lr", type=float, default=JudgeTrainConfig.lr)
    train.add_argument("--seed", type=int, default=JudgeTrainConfig.seed)
    train.add_argument("--test-fraction", type=float, default=JudgeTrainConfig.test_fraction,
                       help="share of request groups held out")
    train.add_argument("--max-eval-per-source", type=int, default=JudgeTrainConfig.max_eval_per_source or 0,
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

    ev = cmds.add_parser("eval", help="score a judge on the labelled validation set, the held-out split and label files",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ev.add_argument("files", nargs="*", help="more labelled JSONL files (our label format, or judge_train format)")
    ev.add_argument("--judge", default=None, help="judge folder or hub id (default: our trained judge)")
    ev.add_argument("--validation", default=None, help="labelled validation set (default data/judge_labels/validation.jsonl)")
    ev.add_argument("--no-validation", action="store_true", help="do not score the labelled validation set")
    ev.add_argument("--no-held-out", action="store_true", help="do not score the held-out split of the training pool")
    ev.add_argument("--data", default=str(default_data_path()), help="judge_train.jsonl (for the held-out split)")
    ev.add_argument("--safeedit", default=str(default_safeedit_path()), help="SafeEdit file (for the held-out split)")
    ev.add_argument("--max-eval-per-source", type=int, default=150, help="held-out rows scored per source (0 = all)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default=None)
    ev.add_argument("--json-out", default=None, help="also write all scores to this JSON file")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)
