"""Seconds per decode step of the embedded model against the batch (rows) and the cached prompt
length: what a row's generated token costs at each batch size, which is why a bigger prefix-reuse
batch (``--decode-tokens``) is faster and why it costs memory. Median of 10 steps after 2 warm-ups,
one new token per row, a reserved KV cache (``safeedit.lm.kv_cache``), random prompt ids.
``--linear both`` times each shape with plain ``F.linear`` layers and with the threaded small-batch
linears that ``load_model`` installs on a CPU model (``safeedit.lm.threaded_linear``), side by side.
``--query 25 --attention both`` times steps of 25 new tokens per row (the post-edit suffix after a
reused prefix; a prefill chunk) with a padded mask, under transformers' SDPA (which copies the keys
and values once per query head there) and under the grouped-query attention ``load_model`` installs
(``safeedit.lm.cpu_attention``).

Usage: python benchmarks/decode_step.py [--threads 2] [--rows 4,8,16,32,48] [--lengths 100,500]
       [--linear threaded|plain|both] [--query 1] [--attention gqa|sdpa|both]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, print_table  # noqa: E402


def main() -> None:
    import torch
    from torch import nn

    from safeedit.lm.cpu_attention import IMPLEMENTATION
    from safeedit.lm.forward_args import cache_arg
    from safeedit.lm.kv_cache import reserved_cache
    from safeedit.lm.loading import load_model
    from safeedit.lm.threaded_linear import ThreadedLinear

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="4,8,16,32,48")
    ap.add_argument("--lengths", default="100,500", help="cached prompt tokens per row")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--linear", choices=["threaded", "plain", "both"], default="threaded",
                    help="linear layers: load_model's threaded small-batch ones, plain F.linear, or both")
    ap.add_argument("--query", type=int, default=1, help="new tokens per row and step (default 1)")
    ap.add_argument("--attention", choices=["gqa", "sdpa", "both"], default="gqa",
                    help="load_model's CPU grouped-query attention, transformers' SDPA, or both")
    args = ap.parse_args()
    if args.linear == "both" and args.attention == "both":
        ap.error("compare either --linear both or --attention both, not both at once")
    torch.set_num_threads(args.threads)
    model, _tok = load_model(args.model, dtype="float32", device="cpu")
    linears = [m for m in model.modules() if type(m) is ThreadedLinear]
    # the variants compared side by side (the first is the baseline); the other setting stays fixed
    kinds = ["sdpa", "gqa"] if args.attention == "both" else ["plain", "threaded"] if args.linear == "both" else [args.linear]
    attention = {"sdpa": "sdpa", "gqa": IMPLEMENTATION}
    q = args.query

    def step_ms(rows: int, length: int, kind: str) -> float:
        linear = kind if kind in ("plain", "threaded") else args.linear
        for m in linears:
            m.__class__ = ThreadedLinear if linear == "threaded" else nn.Linear
        implementation = attention[kind if kind in attention else args.attention]
        if model.config._attn_implementation != implementation:
            model.set_attn_implementation(implementation)
        steps = 12
        cache = reserved_cache(model, length + steps * q)
        ids = torch.randint(0, 1000, (rows, length), generator=torch.Generator().manual_seed(rows * 7919 + length))
        mask = torch.ones((rows, length + steps * q), dtype=torch.long)
        mask[: rows // 2, : length // 4] = 0  # left padding in half the rows, as a sorted batch has
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask[:, :length], **{cache_arg(model): cache}, use_cache=True,
                  logits_to_keep=1)
            times = []
            for step in range(steps):
                end = length + (step + 1) * q
                start = time.perf_counter()
                model(input_ids=ids[:, :q], attention_mask=mask[:, :end], **{cache_arg(model): cache}, use_cache=True,
                      logits_to_keep=1)
                if step >= 2:
                    times.append(time.perf_counter() - start)
        return median(times) * 1e3

    table = []
    for rows in (int(x) for x in args.rows.split(",")):
        for length in (int(x) for x in args.lengths.split(",")):
            ms = {kind: step_ms(rows, length, kind) for kind in kinds}
            row = [rows, length]
            for kind in kinds:
                row += [f"{ms[kind]:.1f}", f"{ms[kind] / rows:.1f}"]
            if len(kinds) == 2:
                row.append(f"{ms[kinds[0]] / ms[kinds[1]]:.2f}x")
            table.append(row)
    print(f"{args.model} float32, {args.threads} threads: one step of {q} new token(s) per row (median ms)")
    header = ["rows", "cached tokens / row"]
    for kind in kinds:
        header += [f"{kind} ms / step", f"{kind} ms / row-token"]
    print_table(header + ([f"{kinds[1]} speed-up"] if len(kinds) == 2 else []), table)


if __name__ == "__main__":
    main()
