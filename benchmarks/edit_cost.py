"""Seconds per edit and peak memory of the per-instance editors (dinm, ft-l, mend) on one model.

Each method runs in its own process (so peak RSS is its own), on the same instances of the
SafeEdit sample, with its configs/<method>/<model>.yaml values, restoring after every edit.
MEND first meta-trains its hyper-network (its one-off cost, timed separately) unless
``--mend-checkpoint DIR`` names a trained one; edit instances are then taken from outside the
training questions.

Usage: python benchmarks/edit_cost.py [--instances 5] [--mend-iterations 20] [--mend-checkpoint DIR]
       python benchmarks/edit_cost.py --runs runs/dinm runs/ft-l runs/mend [--mend-train DIR]

``--runs`` reads the figures from finished `safeedit bench` run folders instead of measuring again:
each row's edit seconds (DINM: location included; a grouped edit's shared steps are split evenly
over its instances), the process's peak RSS and its RSS after the model load (``resources.json``),
and MEND's one-off training seconds from ``--mend-train`` (its ``safeedit mend train`` folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import REPO, SAMPLE, median, peak_rss_mib, print_table, read_run  # noqa: E402

METHODS = ("dinm", "ft-l", "mend")


def run_method(args) -> None:
    import torch

    from safeedit.data import load_safeedit
    from safeedit.data.splits import split_by_question
    from safeedit.lm import load_model, use_chat_template
    from safeedit.methods import get_method

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, dtype="float32", device="cpu")
    chat = use_chat_template(tok, None)
    model_rss = peak_rss_mib()
    config = REPO / "configs" / args.method / f"{args.model}.yaml"
    train, test = split_by_question(load_safeedit(SAMPLE).instances, test_fraction=0.3, seed=0)
    overrides = {}
    fit_seconds = None
    if args.method == "mend" and args.mend_checkpoint:
        overrides["checkpoint"] = args.mend_checkpoint
    elif args.method == "mend":
        overrides.update(iterations=args.mend_iterations, checkpoint_every=max(1, args.mend_iterations))
    method = get_method(args.method, config if config.is_file() else None, **overrides)
    if args.method == "mend" and not args.mend_checkpoint:
        from safeedit.methods.mend import train_mend

        start = time.perf_counter()
        train_mend(method, model, tok, train, Path(tempfile.mkdtemp()), chat=chat, progress=False)
        fit_seconds = time.perf_counter() - start
    fit_rss = peak_rss_mib()
    seconds = []
    for inst in test[:args.instances]:
        edit = method.edit(model, tok, [inst], chat=chat)
        seconds.append(edit.instances[0].seconds)
        edit.restore()
    print(json.dumps({"seconds": seconds, "fit_seconds": fit_seconds, "peak_rss_mib": peak_rss_mib(),
                      "model_rss_mib": model_rss, "fit_rss_mib": fit_rss}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mend-iterations", type=int, default=20, help="meta-training iterations timed for MEND")
    ap.add_argument("--mend-checkpoint", default=None, help="a trained MEND folder: skip (and do not time) training")
    ap.add_argument("--method", choices=METHODS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--runs", nargs="+", default=None, help="bench run folders to read instead of measuring")
    ap.add_argument("--mend-train", default=None, help="with --runs: the MEND training folder (its seconds)")
    args = ap.parse_args()
    if args.method:
        return run_method(args)
    if args.runs:
        return table_from_runs(args)
    rows = []
    for method in METHODS:
        cmd = [sys.executable, __file__, "--method", method, "--model", args.model, "--instances", str(args.instances),
               "--threads", str(args.threads), "--mend-iterations", str(args.mend_iterations)]
        if args.mend_checkpoint:
            cmd += ["--mend-checkpoint", args.mend_checkpoint]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        s = r["seconds"]
        fit = "-" if r["fit_seconds"] is None else f"{r['fit_seconds']:.0f} s ({args.mend_iterations} it, "  \
            f"{r['fit_seconds'] / max(1, args.mend_iterations):.1f} s/it)"
        rows.append([method, len(s), f"{median(s):.2f}", f"{min(s):.2f}", f"{max(s):.2f}", f"{r['peak_rss_mib']:.0f}",
                     f"{r['model_rss_mib']:.0f}", fit])
    print(f"\nedit cost on {args.model}, fp32 CPU, {args.threads} threads, first {args.instances} test-split instances")
    print_table(["method", "edits", "median s/edit", "min s", "max s", "peak RSS MiB", "RSS after load MiB",
                 "one-off training"], rows)


def table_from_runs(args) -> None:
    rows = []
    for folder in args.runs:
        run = read_run(folder)
        s = [r["edit"]["seconds"] for r in run["rows"]]
        post = [r["times"]["post_generate_s"] for r in run["rows"]]
        fit = "-"
        if run["method"] == "mend" and args.mend_train:
            losses = [json.loads(line) for line in (Path(args.mend_train) / "losses.jsonl").read_text().splitlines()]
            fit = f"{losses[-1]['seconds']:.0f} s ({len(losses)} it, {losses[-1]['seconds'] / len(losses):.1f} s/it)"
        group = max(r["times"].get("group_size", 1) for r in run["rows"])  # the first instances may run alone
        rows.append([run["method"], len(s), group, f"{median(s):.2f}", f"{min(s):.2f}", f"{max(s):.2f}",
                     f"{median(post):.2f}", f"{run['peak_rss_mib']:.0f}", f"{run['rss_after_load_mib']:.0f}", fit])
    print_table(["method", "edits", "group size", "median s/edit", "min s", "max s", "median post-edit generate s",
                 "peak RSS MiB", "RSS after load MiB", "one-off training"], rows)


if __name__ == "__main__":
    main()
