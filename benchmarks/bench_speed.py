"""Seconds per instance of the evaluation loop: reference-style vs ours, in one run.

(a) reference-style: for each instance, generate the five inputs one at a time on the unedited
    model, edit, generate the five inputs one at a time on the edited model, judge, restore —
    nothing is reused between instances or methods;
(b) ours, cold cache: `safeedit bench` with an empty generation cache (pre-edit generations batched
    across instances, post-edit generations batched per instance);
(c) ours, warm cache: a second method on the same model reuses every pre-edit generation.
All use DINM with the paper's settings, greedy decoding, the same max_new_tokens and judge; KQA
and CSum are off so only the safety loop is timed.

Usage: python benchmarks/bench_speed.py [--instances 4] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SAMPLE, print_table  # noqa: E402


def reference_loop(model, tok, judge, instances, max_new_tokens: int) -> float:
    from safeedit.lm import generate
    from safeedit.methods import DINM

    method = DINM()
    start = time.perf_counter()
    for inst in instances:
        inputs = list(inst.eval_inputs().values())
        pre = [generate(model, tok, p, max_new_tokens=max_new_tokens) for p in inputs]
        edit = method.edit(model, tok, [inst])
        post = [generate(model, tok, method.eval_prompt(p), max_new_tokens=max_new_tokens) for p in inputs]
        edit.restore()
        for text in pre + post:
            judge([text])
    return (time.perf_counter() - start) / len(instances)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from safeedit.bench.runner import BenchConfig, run_bench
    from safeedit.data import load_safeedit
    from safeedit.judge import SafetyJudge, default_judge_dir
    from safeedit.lm import load_model

    judge_dir = str(default_judge_dir())
    model, tok = load_model("smollm2-135m", dtype="float32", device="cpu")
    judge = SafetyJudge.from_pretrained(judge_dir)
    instances = load_safeedit(SAMPLE).instances[: args.instances]
    rows = [["(a) reference-style: one input at a time, no reuse", f"{reference_loop(model, tok, judge, instances, args.max_new_tokens):.1f}"]]
    del model
    with tempfile.TemporaryDirectory() as tmp:
        # a private generation cache, so (b) really starts cold; the model cache is shared
        gen_cache = Path(tmp) / "cache"
        (gen_cache / "models").parent.mkdir(parents=True, exist_ok=True)
        real_models = Path(os.environ.get("SAFEEDIT_CACHE", Path.home() / ".cache" / "safeedit")).expanduser() / "models"
        (gen_cache / "models").symlink_to(real_models)
        os.environ["SAFEEDIT_CACHE"] = str(gen_cache)
        for label, out in (("(b) ours, cold generation cache", "cold"), ("(c) ours, warm cache (second method)", "warm")):
            cfg = BenchConfig(method="dinm", data=str(SAMPLE), judge=judge_dir, out=str(Path(tmp) / out),
                              limit=args.instances, max_new_tokens=args.max_new_tokens, kqa_n=0, csum_n=0,
                              dtype="float32", device="cpu")
            start = time.perf_counter()
            run_bench(cfg, progress=False)
            rows.append([label, f"{(time.perf_counter() - start) / args.instances:.1f}"])
    print(f"evaluation loop, DINM, smollm2-135m, {args.instances} instances x 5 inputs, max_new_tokens={args.max_new_tokens}, "
          f"{args.threads} threads (ours includes model load and fingerprint)\n")
    base = float(rows[0][1])
    print_table(["loop", "s / instance", "speed-up"], [r + [f"{base / float(r[1]):.1f}x"] for r in rows])


if __name__ == "__main__":
    main()
