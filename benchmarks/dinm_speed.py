"""Seconds per DINM edit and peak memory: the reference's naive loop vs our fast path.

(a) naive: every step runs the full model and computes logits at every position, as the
reference implementation does; (b) fast: the hidden states entering the toxic layer are cached,
each step runs only the layers from the toxic layer up, logits only where the loss reads them.
Both edit the same instances with the same hyper-parameters (and give the same weights, see
tests/test_dinm.py). Each mode runs in its own process so peak RSS is its own.

Usage: python benchmarks/dinm_speed.py [--instances 5] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SAMPLE, peak_rss_mib, print_table  # noqa: E402


def run_mode(args) -> None:
    import torch

    from safeedit.data import load_safeedit
    from safeedit.lm import load_model
    from safeedit.methods import DINM

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, dtype="float32", device="cpu")
    base_rss = peak_rss_mib()
    data = load_safeedit(SAMPLE)
    method = DINM(fast=args.mode == "fast")
    rows = []
    for i in range(args.instances):
        edit = method.edit(model, tok, [data[i]])
        rec = edit.instances[0]
        rows.append({"index": i, "layer": rec.details["layer"], "seconds": rec.seconds, "nll_after": rec.details["nll_after"]})
        edit.restore()
    print(json.dumps({"rows": rows, "peak_rss_mib": peak_rss_mib(), "model_rss_mib": base_rss}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["naive", "fast"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return run_mode(args)
    import statistics

    results = {}
    for mode in ("naive", "fast"):
        cmd = [sys.executable, __file__, "--mode", mode, "--model", args.model,
               "--instances", str(args.instances), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    table = []
    for mode, label in (("naive", "(a) naive full-model loop (reference)"), ("fast", "(b) ours: cached prefix, target logits")):
        secs = [r["seconds"] for r in results[mode]["rows"]]
        table.append([label, len(secs), f"{statistics.median(secs):.2f}", f"{min(secs):.2f}", f"{max(secs):.2f}",
                      f"{results[mode]['peak_rss_mib']:.0f}"])
    print(f"DINM, {args.model}, {args.instances} SafeEdit sample instances, 10 steps each, {args.threads} threads\n")
    print_table(["mode", "edits", "median s/edit", "min s", "max s", "peak RSS MiB"], table)
    ratio = float(table[0][2]) / float(table[1][2])
    layers = [r["layer"] for r in results["fast"]["rows"]]
    same = [abs(a["nll_after"] - b["nll_after"]) < 1e-4 for a, b in zip(results["naive"]["rows"], results["fast"]["rows"])]
    print(f"\nspeed-up (median naive / median ours): {ratio:.1f}x; toxic layers {layers}; "
          f"same final NLL in {sum(same)}/{len(same)} edits")


if __name__ == "__main__":
    main()
