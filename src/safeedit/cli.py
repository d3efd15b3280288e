"""The ``safeedit`` command. Sub-commands are thin: each parses arguments and calls the library."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from safeedit.commands import COMMAND_MODULES
from safeedit.commands.common import add_model_args, add_prompt_mode, load_from_args
from safeedit.errors import ConfigError, SafeEditError


def cmd_data_stats(args) -> int:
    from safeedit.data import load_safeedit

    stats = load_safeedit(args.path, split=args.split).stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{stats['records']} records over {len(stats['categories'])} categories "
          f"({stats['distinct_questions']} distinct questions, {len(stats['attack_names'])} attack names)")
    if stats["edit_only_records"]:
        print(f"{stats['edit_only_records']} edit-only records (no generalization test inputs: DS only)")
    for title, key in (("unsafety category", "categories"), ("attack name", "attack_names")):
        width = max(len(title), *(len(k) for k in stats[key]))
        print(f"\n{title:<{width}}  count\n{'-' * width}  -----")
        for name, count in stats[key].items():
            print(f"{name:<{width}}  {count:5d}")
    return 0


def cmd_data_validate(args) -> int:
    from safeedit.data import load_safeedit

    data = load_safeedit(args.path, split=args.split, strict=False)
    for problem in data.problems:
        print(problem)
    if data.problems:
        print(f"INVALID: {len(data.problems)} problem(s); {len(data)} valid records", file=sys.stderr)
        return 1
    print(f"OK: {len(data)} valid records ({data.edit_only_count} edit-only)")
    return 0


def cmd_generate(args) -> int:
    from safeedit.data import load_safeedit
    from safeedit.lm import generate

    if args.prompt is None and args.data is None:
        raise ConfigError("give --prompt TEXT or --data PATH --index I [--input KEY]")
    if args.prompt is not None:
        prompt = args.prompt
    else:
        instance = load_safeedit(args.data).select([args.index], where=args.data)[0]
        inputs = instance.eval_inputs()
        if args.input not in inputs:
            raise ConfigError(f"instance {args.index} has no input {args.input!r} (has: {', '.join(inputs)})")
        prompt = inputs[args.input]
    model, tokenizer = load_from_args(args)
    start = time.perf_counter()
    answer = generate(model, tokenizer, prompt, max_new_tokens=args.max_new_tokens, chat=args.chat,
                      do_sample=args.sample, seed=args.seed)
    print(f"--- prompt ---\n{prompt}\n--- response ({time.perf_counter() - start:.1f}s) ---\n{answer}")
    return 0


def cmd_data_split(args) -> int:
    """Write OUT/train.json and OUT/test.json, every instance of a harmful question on one side."""
    from pathlib import Path

    from safeedit.data import load_safeedit
    from safeedit.data.splits import split_by_question
    from safeedit.errors import OutputExistsError

    data = load_safeedit(args.path, split=args.split)
    train, test = split_by_question(data.instances, args.test_fraction, args.seed)
    empty = [name for name, part in (("train", train), ("test", test)) if not part]
    if empty:
        from safeedit.errors import SelectionError

        # the side of a question is a seeded hash of it: re-splitting one side of an earlier split with
        # the same seed puts every question on the side it had
        raise SelectionError(f"the {empty[0]} side of {args.path} would be empty ({len(data.instances)} instances, "
                             f"{len({i.question for i in data.instances})} questions, seed {args.seed}); "
                             "try another --seed (a side of an earlier split needs a different seed)")
    out = Path(args.out)
    files = {"train": out / "train.json", "test": out / "test.json"}
    existing = [str(f) for f in files.values() if f.exists()]
    if existing and not args.force:
        raise OutputExistsError(f"{existing[0]} exists; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("test", test)):  # written whole, then renamed: never half a file
        tmp = files[name].with_suffix(".tmp")
        tmp.write_text(json.dumps([inst.to_record() for inst in part], ensure_ascii=False, indent=1))
        tmp.replace(files[name])
    n_q = {name: len({inst.question for inst in part}) for name, part in (("train", train), ("test", test))}
    print(f"train: {len(train)} instances ({n_q['train']} questions) -> {files['train']}")
    print(f"test:  {len(test)} instances ({n_q['test']} questions) -> {files['test']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect SafeEdit data").add_subparsers(dest="data_command", required=True)
    stats = data.add_parser("stats", help="counts per unsafety category and attack name")
    stats.add_argument("path", help="SafeEdit .json/.jsonl file, folder of split files, or dataset id")
    stats.add_argument("--split", default=None)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_data_stats)
    validate = data.add_parser("validate", help="exit 0 if every record is valid, else one line per problem")
    validate.add_argument("path")
    validate.add_argument("--split", default=None)
    validate.set_defaults(func=cmd_data_validate)
    split = data.add_parser("split", help="train/test files with every harmful question on one side only")
    split.add_argument("path")
    split.add_argument("--split", default=None, help="split of PATH when it is a folder or dataset id")
    split.add_argument("--by-question", action="store_true", default=True,
                       help="group by harmful question (always on: a shared question leaks the answer)")
    split.add_argument("--test-fraction", type=float, default=0.3)
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out", required=True, help="folder for train.json and test.json")
    split.add_argument("--force", action="store_true", help="overwrite existing train.json/test.json")
    split.set_defaults(func=cmd_data_split)

    gen = sub.add_parser("generate", help="answer one prompt (or one SafeEdit input) with a model")
    add_model_args(gen)
    add_prompt_mode(gen)
    gen.add_argument("--prompt", default=None)
    gen.add_argument("--data", default=None)
    gen.add_argument("--index", type=int, default=0)
    gen.add_argument("--input", default="DS", help="DS, DG_onlyQ, DG_otherA, DG_otherQ or DG_otherAQ")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=cmd_generate)

    for module in COMMAND_MODULES:
        importlib.import_module(f"safeedit.commands.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A :class:`~safeedit.errors.SafeEditError` prints one line and exits with its
    code (2: bad input, 1: the work failed); anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SafeEditError as exc:
        print(f"safeedit: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
