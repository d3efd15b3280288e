"""``safeedit bench``, ``safeedit report`` and ``safeedit demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from safeedit.commands.common import add_model_args, add_prompt_mode, parse_indices


def cmd_bench(args) -> int:
    from safeedit.bench.report import compare_runs
    from safeedit.bench.runner import BenchConfig, run_bench
    from safeedit.methods.options import parse_set_options

    config = BenchConfig(
        method=args.method, model=args.model, data=args.data, data_split=args.split, train_data=args.train_data,
        train_split=args.train_split, judge=args.judge, judge_format=args.judge_format,
        judge_base_url=args.judge_base_url, out=args.out, limit=args.limit,
        indices=parse_indices(args.index) if args.index else None, max_new_tokens=args.max_new_tokens,
        chat=args.chat, batch_size=args.batch_size, seed=args.seed, method_config=args.config,
        method_options=parse_set_options(args.set), dtype=args.dtype, device=args.device,
        trust_remote_code=args.trust_remote_code, kqa_n=args.kqa_n, csum_n=args.csum_n,
        general_instances=args.general_instances, group_size=args.group_size, device_map=args.device_map,
        **({} if args.prefix_reuse is None else {"prefix_reuse": args.prefix_reuse}),
        **({} if args.decode_tokens is None else {"decode_tokens": args.decode_tokens}),
    )
    run_bench(config)
    print(compare_runs([args.out]))
    print(f"run folder: {args.out} (report.md, summary.json, results.jsonl, pre_post.png)")
    return 0


def cmd_report(args) -> int:
    from safeedit.bench.report import compare_runs

    out = args.out or (Path(args.runs[0]).parent / "compare")
    print(compare_runs(args.runs, out=out, allow_mixed_judges=args.allow_mixed_judges,
                       common_instances=args.common_instances))
    print(f"written: {Path(out) / 'compare.md'}, {Path(out) / 'compare.png'}")
    return 0


def cmd_demo(args) -> int:
    """Build the default judge if none is cached, then vanilla vs DINM on a few instances, then the table."""
    from safeedit.bench.report import compare_runs
    from safeedit.bench.runner import BenchConfig, run_bench
    from safeedit.judge.shipped import ensure_default_judge
    from safeedit.paths import sample_data_path

    ensure_default_judge()  # the embedded model's first layers + the shipped head: built, not trained
    runs = {}
    # DINM first: its grouped pass answers the pre-edit prompts together with the post-edit ones,
    # sharing their prefill (prefix reuse), and the vanilla run then finds every answer in the
    # generation cache; the other order makes the vanilla run prefill them alone (~20 s more here)
    for method in ("dinm", "none"):
        out = str(Path(args.out) / method)
        run_bench(BenchConfig(method=method, model=args.model, data=str(sample_data_path()), out=out, limit=args.limit,
                              max_new_tokens=args.max_new_tokens, kqa_n=args.kqa_n, csum_n=args.csum_n,
                              general_instances=1))
        runs[method] = out
    print(compare_runs([runs["none"], runs["dinm"]], out=Path(args.out) / "compare"))
    print(f"reports: {args.out}/none/report.md, {args.out}/dinm/report.md, {args.out}/compare/compare.md")
    return 0


def register(sub) -> None:
    from safeedit.methods import METHODS

    b = sub.add_parser("bench", help="evaluate a method on SafeEdit (per-instance edit/restore, or train once)")
    add_model_args(b, default=None)
    add_prompt_mode(b)
    b.add_argument("--method", default="dinm", choices=sorted(METHODS),
                   help="; ".join(f"{name}: {cls.summary}" for name, cls in sorted(METHODS.items())))
    b.add_argument("--data", required=True, help="SafeEdit test data: file, folder of split files, or dataset id")
    b.add_argument("--split", default=None, help="split of --data when it is a folder or dataset id (e.g. test)")
    b.add_argument("--train-data", default=None, help="training split for methods that train once (sft, dpo, ...)")
    b.add_argument("--train-split", default=None, help="split of --train-data (e.g. train)")
    b.add_argument("--judge", default=None, help="safety judge: classifier folder or hub id (default: the cached "
                   "judge), a generative judge folder / hub id, or http:MODEL (see `safeedit judge predict -h`)")
    b.add_argument("--judge-format", default=None, help="prompt format of a generative judge (llama-guard, harmbench, rubric)")
    b.add_argument("--judge-base-url", default=None, help="API root for --judge http:MODEL (key from $OPENAI_API_KEY)")
    b.add_argument("--out", required=True, help="run folder (resumes if it exists with the same settings)")
    b.add_argument("--limit", type=int, default=None, help="first N instances")
    b.add_argument("--index", default=None, help="instances to use, e.g. 0-9,20")
    b.add_argument("--max-new-tokens", type=int, default=128)
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--config", default=None, help="YAML of method options (configs/<method>/*.yaml)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a method option, e.g. --set lr=1e-5")
    b.add_argument("--kqa-n", type=int, default=100, help="TriviaQA items per general evaluation (0: skip)")
    b.add_argument("--csum-n", type=int, default=20, help="XSum items per general evaluation (0: skip)")
    b.add_argument("--general-instances", type=int, default=3,
                   help="per-instance editors: edited models that also get KQA/CSum")
    b.add_argument("--group-size", type=int, default=8,
                   help="per-instance editors that support it (dinm): edit and evaluate this many instances with "
                        "the same toxic layer at once (1: one at a time; results equal up to float rounding)")
    b.add_argument("--prefix-reuse", action=argparse.BooleanOptionalAction, default=None,
                   help="grouped editors: answer each group's pre-edit prompts in its pass and reuse that unedited "
                        "prefill below the edited layer for the post-edit prompts (default: on for a CPU, off for a "
                        "GPU; results equal up to float rounding)")
    b.add_argument("--decode-tokens", type=int, default=None,
                   help="prefix reuse: padded tokens of one batch (rows x (longest prompt + new tokens)), which "
                        "bounds its KV cache; lower it on a memory-tight machine (default 11264, ~495 MiB for "
                        "SmolLM2-135M in float32; raise it on a GPU with room)")
    b.add_argument("--device-map", default=None,
                   help="'auto': spread a model too large for one GPU over all visible GPUs (accelerate)")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("report", help="side-by-side comparison of run folders")
    r.add_argument("runs", nargs="+")
    r.add_argument("--out", default=None, help="folder for compare.md and compare.png")
    r.add_argument("--allow-mixed-judges", action="store_true", help="compare runs scored by different judges")
    r.add_argument("--common-instances", action="store_true",
                   help="score every run on the instances all runs have (runs of different sizes)")
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="the quick-start job: judge (if needed), vanilla vs DINM, table")
    d.add_argument("--model", default="smollm2-135m")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--limit", type=int, default=4)
    d.add_argument("--max-new-tokens", type=int, default=48)
    d.add_argument("--kqa-n", type=int, default=20)
    d.add_argument("--csum-n", type=int, default=2)
    d.set_defaults(func=cmd_demo)
