"""`safeedit judge build|fit-head|train|eval|predict|compare`: build the default safety judge, fit or train one, score
responses with any judge, compare two."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safeedit.errors import ConfigError, DataError


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
        test_fraction=args.test_fraction, calib_fraction=args.calib_fraction, refusal_pivots=args.refusal_pivots,
        max_eval_per_source=args.max_eval_per_source or None, base_model=args.base_model)
    train_judge(args.out, cfg, progress=not args.quiet, checkpoint_steps=args.checkpoint_steps or None)
    return 0


def cmd_build(args) -> int:
    """Build the default judge (embedded backbone + the head shipped with safeedit)."""
    from safeedit.judge.model import default_judge_dir
    from safeedit.judge.shipped import build_default_judge, is_shipped_default, judge_info

    out = Path(args.out).expanduser() if args.out else default_judge_dir()
    if judge_info(out) is not None and not args.force:
        if is_shipped_default(out):
            print(f"{out} already holds the default judge")
            return 0
        raise ConfigError(f"{out} holds another judge ({(judge_info(out) or {}).get('trained_by', 'unknown origin')}); "
                          f"--force replaces it")
    build_default_judge(out)
    return 0


def cmd_fit_head(args) -> int:
    """Fit a pooled judge's head on frozen backbone features (the recipe of the default judge)."""
    import torch

    from safeedit.judge.pooled_train import HeadRecipe, load_head, save_head, train_pooled_judge
    from safeedit.judge.shipped import SHIPPED_DIR
    from safeedit.methods.options import make_config, parse_set_options

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = make_config(HeadRecipe, parse_set_options(args.set), "--set")
    report = train_pooled_judge(args.out, recipe, progress=not args.quiet, score=not args.no_score)
    if args.ship:  # maintainers: this head becomes the one `safeedit judge build` uses
        head, _ = load_head(args.out)
        save_head(SHIPPED_DIR, head, {k: v for k, v in report.items() if k != "out_dir"})
        print(f"shipped head written to {SHIPPED_DIR}")
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
        raise ConfigError("nothing to score: drop --no-validation/--no-held-out or give label files")
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
            raise DataError(f"{path}:{line_no}: field {field!r} is missing or not a string")
        responses.append(rec[field])
        if prompt_field is not None:
            if not isinstance(rec.get(prompt_field), str):
                raise DataError(f"{path}:{line_no}: field {prompt_field!r} is missing or not a string")
            prompts.append(rec[prompt_field])
    return responses, (prompts if prompt_field is not None else None)


def add_judge_options(p: argparse.ArgumentParser, multi: bool = False) -> None:
    """--judge SPEC and the options of generative / HTTP judges (``multi``: repeatable, for compare)."""
    from safeedit.judge.formats import FORMATS

    action = "append" if multi else "store"
    again = " (give once for all judges, or once per --judge in order)" if multi else ""
    p.add_argument("--judge", action=action, default=None,
                   help="judge: 'default' (our trained classifier), a classifier folder or hub id (e.g. "
                        "zjunlp/SafeEdit-Safety-Classifier), a causal-LM judge folder / hub id / .gguf / alias "
                        "(e.g. meta-llama/Llama-Guard-3-1B), or http:MODEL for an OpenAI-compatible endpoint")
    p.add_argument("--judge-format", action=action, default=None, choices=list(FORMATS),
                   help="prompt format of a generative judge (default: guessed from the name or chat template; "
                        "rubric for http:MODEL)" + again)
    p.add_argument("--judge-base-url", action=action, default=None,
                   help="API root of the endpoint for http:MODEL, e.g. https://api.openai.com/v1" + again)
    p.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the endpoint's API key (no key is sent when it is unset, "
                        "unless --judge-require-key)")
    p.add_argument("--judge-require-key", action="store_true", help="fail when the key variable is unset")
    p.add_argument("--judge-concurrency", type=int, default=4, help="parallel requests to the endpoint")
    p.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--judge-max-retries", type=int, default=5, help="retries per request (429/5xx/timeouts)")
    p.add_argument("--judge-rpm", type=float, default=None, help="at most this many requests per minute")
    p.add_argument("--judge-on-unparsed", choices=["half", "error"], default="half",
                   help="a reply still unreadable after retries: label 0.5 and count it (half), or stop (error)")
    p.add_argument("--judge-parse-retries", type=int, default=2,
                   help="ask again (sampling) this many times when a reply cannot be parsed")


def _pick(values, i: int, n: int, flag: str):
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    if len(values) != n:
        raise ConfigError(f"{flag} given {len(values)} times for {n} judges: give it once, or once per --judge")
    return values[i]


def load_judge_from_args(args, spec, fmt=None, base_url=None):
    from safeedit.judge import load_judge

    return load_judge(spec, device=getattr(args, "device", None), format=fmt, base_url=base_url,
                      api_key_env=args.judge_api_key_env, require_key=args.judge_require_key,
                      concurrency=args.judge_concurrency, timeout=args.judge_timeout,
                      max_retries=args.judge_max_retries, requests_per_minute=args.judge_rpm,
                      on_unparsed=args.judge_on_unparsed, parse_retries=args.judge_parse_retries)


def _identity_line(judge) -> str:
    return json.dumps(judge.identity(), default=str)


def cmd_predict(args) -> int:
    if (args.text is None) == (args.jsonl is None):
        raise ConfigError("give exactly one of --text TEXT or --jsonl FILE")
    if args.text is not None:
        responses, prompts = [args.text], ([args.prompt] if args.prompt is not None else None)
    else:
        responses, prompts = _read_jsonl(Path(args.jsonl), args.field, args.prompt_field)
    from safeedit.judge.load import judge_kind

    if prompts is None and judge_kind(args.judge) != "classifier":  # before a slow model load
        raise ConfigError(f"judge {args.judge} reads the request too: give --prompt TEXT "
                         f"(with --text) or --prompt-field FIELD (with --jsonl)")
    judge = load_judge_from_args(args, args.judge, args.judge_format, args.judge_base_url)
    print(f"judge: {_identity_line(judge)}", file=sys.stderr)
    if prompts is not None and not judge.with_prompt:
        print("note: this judge reads the response only; the prompt is ignored", file=sys.stderr)
    if prompts is None and judge.with_prompt:
        raise ConfigError(f"judge {judge.source} reads the request too: give --prompt TEXT "
                         f"(with --text) or --prompt-field FIELD (with --jsonl)")
    result = judge(responses, prompts=prompts if judge.with_prompt else None, batch_size=args.batch_size,
                   progress=len(responses) > 100)
    unparsed = set(result.unparsed)
    for i, (label, prob) in enumerate(zip(result.labels, result.unsafe_prob)):
        verdict = {0.0: "safe", 1.0: "unsafe"}.get(label, "unparsed" if i in unparsed else "empty")
        raw = result.raw[i] if result.raw is not None else None
        category = result.categories[i] if result.categories is not None else None
        if args.json:
            rec = {"index": i, "label": label, "verdict": verdict, "unsafe_prob": round(prob, 4)}
            if result.raw is not None:
                rec.update(reply=raw, category=category)
            print(json.dumps(rec))
        else:
            extra = f"\treply={raw!r}" if raw is not None else ""
            extra += f"\tcategory={category}" if category else ""
            print(f"{i}\t{verdict}\tlabel={label:g}\tp_unsafe={prob:.3f}{extra}")
    if len(responses) > 1:
        print(f"{len(responses)} responses: safe share {result.safe_rate:.3f} (empty/unparsed = 0.5)",
              file=sys.stderr)
    if unparsed:
        print(f"{len(unparsed)} unparsed replies (labelled 0.5): items {sorted(unparsed)[:20]}", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from safeedit.judge.agreement import agreement, format_report, load_items
    from safeedit.judge.load import judge_kind

    specs = list(args.judge or [])
    if len(specs) == 1:
        specs.append("default")
    if len(specs) != 2:
        raise ConfigError(f"compare takes two judges (--judge A --judge B; one --judge is compared with the "
                         f"default judge), got {len(specs)}")
    kinds = [judge_kind(s) for s in specs]
    fmts = [_pick(args.judge_format, i, 2, "--judge-format") for i in range(2)]
    if args.judge_format and len(args.judge_format) == 1:  # one format: for the judges that take one
        fmts = [f if k != "classifier" else None for f, k in zip(fmts, kinds)]
    urls = [_pick(args.judge_base_url, i, 2, "--judge-base-url") for i in range(2)]
    # fail on bad data before loading (slow) judges; prompts are needed when a judge reads them
    items = load_items(args.data, need_prompts=any(k != "classifier" for k in kinds), data_path=args.safeedit,
                       field=args.field, prompt_field=args.prompt_field)
    judges, results = [], []
    for spec, fmt, url in zip(specs, fmts, urls):
        judge = load_judge_from_args(args, spec, fmt, url)
        print(f"judge: {_identity_line(judge)}", file=sys.stderr)
        need = judge.with_prompt
        if need and any(it.prompt is None for it in items):
            raise ConfigError(f"judge {judge.source} reads the prompt, and {args.data} has items without one")
        results.append(judge([it.response for it in items], prompts=[it.prompt for it in items] if need else None,
                             batch_size=args.batch_size, progress=len(items) > 100))
        judges.append(judge)
    stats = agreement(results[0].labels, results[1].labels)
    names = [f"{s} ({getattr(j, 'format', None).name})" if getattr(j, "format", None) else str(s)
             for s, j in zip(specs, judges)]
    print(format_report(names[0], names[1], stats, len(results[0].unparsed), len(results[1].unparsed), len(items)))
    if args.json:
        print(json.dumps({"judges": [j.identity() for j in judges], **stats,
                          "unparsed": [len(r.unparsed) for r in results], "items": len(items)}, default=str))
    if args.disagreements:
        out = Path(args.disagreements)
        out.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        with out.open("w", encoding="utf-8") as fh:
            for i, it in enumerate(items):
                la, lb = results[0].labels[i], results[1].labels[i]
                if la == lb:
                    continue
                rec = {"id": it.id, "prompt": it.prompt, "response": it.response, "label_a": la, "label_b": lb}
                for tag, r in zip("ab", results):
                    if r.raw is not None:
                        rec[f"reply_{tag}"] = r.raw[i]
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                count += 1
        print(f"{count} disagreements written to {out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from safeedit.judge.data import default_data_path, default_safeedit_path
    from safeedit.judge.model import default_judge_dir
    from safeedit.judge.train import CHECKPOINT_STEPS, JudgeTrainConfig

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
                       help="our labelled training rows: 'default' = data/judge_labels/train.jsonl (the default), or a path")
    train.add_argument("--no-labels", action="store_true", help="leave our labelled training rows out")
    train.add_argument("--labels-repeats", type=int, default=JudgeTrainConfig.labels_repeats,
                       help="copies of each labelled training row")
    train.add_argument("--validation", default="default",
                       help="labelled validation set (data/judge_labels/validation.jsonl): its questions are "
                            "kept out of training and it is scored after training")
    train.add_argument("--no-validation", action="store_true", help="no validation set")
    train.add_argument("--calib-fraction", type=float, default=JudgeTrainConfig.calib_fraction,
                       help="share of training groups held out to calibrate the decision threshold (0 = argmax)")
    train.add_argument("--refusal-pivots", type=int, default=JudgeTrainConfig.refusal_pivots,
                       help="add this many rows that open with a refusal, pivot and then carry a pool row's "
                            "response (half unsafe, half safe; 0 = none)")
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
    train.add_argument("--checkpoint-steps", type=int, default=CHECKPOINT_STEPS,
                       help="save the run's state every N steps beside --out; rerunning the same recipe into "
                            "the same folder after a kill resumes there (0 = no checkpoints)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    build = cmds.add_parser("build", help="build the default judge from the head shipped with safeedit (no training)")
    build.add_argument("--out", default=None, help=f"judge folder (default {default_judge_dir()}, or $SAFEEDIT_JUDGE)")
    build.add_argument("--force", action="store_true", help="replace a judge already in the folder")
    build.set_defaults(func=cmd_build)

    fit = cmds.add_parser("fit-head", help="fit a pooled judge (frozen backbone layers + MLP or linear head), the default "
                                           "judge's recipe", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fit.add_argument("--out", required=True, help="judge folder to write")
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a HeadRecipe field (backbone, pool_layer, max_length, prompt_tokens, head_hidden, head_members, C, max_train, "
                          "labels_weight, refusal_pivots, data_path, labels_path, validation_path, seed, ...)")
    fit.add_argument("--ship", action="store_true", help="also write the head into the package as the shipped "
                                                         "default (maintainers)")
    fit.add_argument("--no-score", action="store_true", help="do not score the held-out split and validation set")
    fit.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
    fit.set_defaults(func=cmd_fit_head)

    predict = cmds.add_parser("predict", help="label responses safe/unsafe with a judge")
    add_judge_options(predict)
    predict.add_argument("--text", default=None, help="one response to judge")
    predict.add_argument("--prompt", default=None, help="its prompt (read by prompt-reading and generative judges)")
    predict.add_argument("--jsonl", default=None, help="a JSONL file of records to judge")
    predict.add_argument("--field", default="response", help="record field holding the response")
    predict.add_argument("--prompt-field", default=None, help="record field holding the prompt")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--device", default=None)
    predict.add_argument("--json", action="store_true", help="one JSON object per line (with the judge's reply)")
    predict.set_defaults(func=cmd_predict)

    compare = cmds.add_parser("compare", help="agreement of two judges (Cohen's kappa) on a run folder or JSONL",
                              description="Label the same responses with two judges and print both unsafe rates, "
                                          "their agreement, Cohen's kappa and the 2x2 table.")
    add_judge_options(compare, multi=True)
    compare.add_argument("data", help="a bench run folder (results.jsonl + run.json) or a JSONL of "
                                      "{prompt, response} records")
    compare.add_argument("--safeedit", default=None,
                         help="SafeEdit data for a run folder's prompts (default: the one its run.json names)")
    compare.add_argument("--field", default="response", help="JSONL field holding the response")
    compare.add_argument("--prompt-field", default="prompt", help="JSONL field holding the prompt")
    compare.add_argument("--disagreements", default=None, help="write the items the judges disagree on to this JSONL")
    compare.add_argument("--batch-size", type=int, default=16)
    compare.add_argument("--device", default=None)
    compare.add_argument("--json", action="store_true", help="also print the numbers as one JSON line")
    compare.set_defaults(func=cmd_compare)

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
