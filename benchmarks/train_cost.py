"""What each baseline costs on the embedded model: seconds to train, seconds per test instance to
evaluate, peak RSS, beside DINM's seconds per instance (edit + evaluate + restore).

The SafeEdit sample is split by harmful question (``split_by_question``, 30 % test, seed 0); every
trained-once method trains with its ``configs/<method>/smollm2-135m.yaml`` values on the training
part, then generates the 5 inputs of ``--instances`` test instances in one batched call. DINM edits
each of those instances, generates its 5 inputs and restores. Each method runs in its own process,
so its peak RSS is its own. Judging is left out: it costs the same for every method.

Usage: python benchmarks/train_cost.py [--instances 4] [--max-new-tokens 48] [--methods sft,dpo,...]
       python benchmarks/train_cost.py --runs runs/sft runs/dpo ... runs/dinm

``--runs`` reads the same figures from finished `safeedit bench` run folders instead of measuring
again: training seconds and peak RSS from ``fit.json``, seconds per test instance from the rows
(trained-once: the batched post-method generation; per-instance editors: edit + generation + judge),
the process's peak RSS from ``resources.json``.
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
from _common import REPO, SAMPLE, peak_rss_mib, print_table, read_run  # noqa: E402

METHODS = ["self-reminder", "sft", "dpo", "rlhf", "ext-sub", "dinm"]


def run_one(args) -> None:
    import torch

    from safeedit.data import load_safeedit
    from safeedit.data.splits import split_by_question
    from safeedit.lm import generate, load_model, use_chat_template
    from safeedit.methods import get_method

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_model(args.model, dtype="float32", device="cpu")
    chat = use_chat_template(tok, None)
    train, test = split_by_question(load_safeedit(SAMPLE).instances, 0.3, 0)
    test = test[: args.instances]
    config = REPO / "configs" / args.method / "smollm2-135m.yaml"
    method = get_method(args.method, config if config.is_file() else None)
    gen = dict(max_new_tokens=args.max_new_tokens, chat=chat, batch_size=8)
    out = {"method": args.method, "train_instances": len(train), "test_instances": len(test)}
    if method.per_instance:
        start = time.perf_counter()
        for inst in test:
            edit = method.edit(model, tok, [inst], chat=chat)
            generate(model, tok, [method.eval_prompt(p) for p in inst.eval_inputs().values()], **gen)
            edit.restore()
        out["train_s"] = None
        out["eval_s_per_instance"] = (time.perf_counter() - start) / len(test)
    else:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            method.fit(model, tok, train, chat=chat, out_dir=Path(tmp))
        out["train_s"] = time.perf_counter() - start if method.requires_training else 0.0
        prompts = [method.eval_prompt(p) for inst in test for p in inst.eval_inputs().values()]
        start = time.perf_counter()
        generate(model, tok, prompts, **gen)
        out["eval_s_per_instance"] = (time.perf_counter() - start) / len(test)
    out["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--runs", nargs="+", default=None, help="bench run folders to read instead of measuring")
    args = ap.parse_args()
    if args.method:
        return run_one(args)
    if args.runs:
        return print_cost_table([from_run(folder) for folder in args.runs])
    rows = []
    for name in args.methods.split(","):
        cmd = [sys.executable, __file__, "--method", name, "--model", args.model, "--instances", str(args.instances),
               "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(line[len("RESULT "):])
        print(f"{name}: {r}", file=sys.stderr)
        rows.append(r)
    print_cost_table(rows)


def from_run(folder) -> dict:
    run = read_run(folder)
    rows = run["rows"]
    key = "total_s" if run["per_instance"] else "post_generate_s"
    fit = run["fit"] or {}
    return {"method": run["method"], "train_instances": fit.get("train_instances", run["train_instances"]),
            # a trained-once method without a fit (a prompt-only defence) trains nothing: 0 s
            "train_s": None if run["per_instance"] else fit.get("seconds", 0.0),
            "train_peak_rss_mib": fit.get("peak_rss_mib"), "test_instances": len(rows),
            "eval_s_per_instance": sum(r["times"][key] for r in rows) / len(rows),
            "peak_rss_mib": run["peak_rss_mib"] or float("nan")}


def print_cost_table(rows: list[dict]) -> None:
    dinm = next((r["eval_s_per_instance"] for r in rows if r["method"] == "dinm"), None)
    table = []
    for r in rows:
        train_s = r["train_s"]
        # instances DINM could edit in the time this method trains
        equiv = f"{train_s / dinm:.1f}" if dinm and train_s else "-"
        table.append([r["method"], r["train_instances"] if train_s is not None else "-",
                      f"{train_s:.1f}" if train_s is not None else "- (per instance)",
                      f"{r['eval_s_per_instance']:.1f}", r.get("test_instances", "-"), f"{r['peak_rss_mib']:.0f}", equiv])
    print_table(["method", "train instances", "train s", "eval s / test instance", "test instances", "peak RSS MiB",
                 "train s in DINM instances"], table)


if __name__ == "__main__":
    main()
