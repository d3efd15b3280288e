"""New tokens/s: the reference's one-prompt-at-a-time loop vs batched generation.

Same prompts (SafeEdit sample adversarial inputs), same max_new_tokens, greedy; medians of
--repeats runs. Usage: python benchmarks/generation.py [--prompts 32] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import SAMPLE, median, print_table, timed  # noqa: E402

from safeedit.data import load_safeedit
from safeedit.lm import generate, load_model
from safeedit.lm.generation import GenerationStats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    load_s = []
    for _ in range(2):
        seconds, (model, tok) = timed(load_model, args.model, dtype="float32", device="cpu")
        load_s.append(seconds)
    print(f"load_model({args.model!r}): first {load_s[0]:.2f}s, second {load_s[1]:.2f}s (cached safetensors)\n")

    prompts = [inst.adversarial_prompt for inst in load_safeedit(SAMPLE).instances[: args.prompts]]
    rows = []
    for label, batch in (("sequential (reference loop)", 1), ("batched", 8), ("batched", 32)):
        rates, secs = [], []
        for _ in range(args.repeats):
            stats = GenerationStats()
            if batch == 1:
                seconds, _ = timed(lambda: [generate(model, tok, [p], max_new_tokens=args.max_new_tokens, stats=stats) for p in prompts])
            else:
                seconds, _ = timed(generate, model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=batch, stats=stats)
            rates.append(stats.new_tokens / seconds)
            secs.append(seconds)
        rows.append([label, min(batch, len(prompts)), len(prompts), args.max_new_tokens, f"{median(secs):.1f}", f"{median(rates):.1f}"])
    base = float(rows[0][-1])
    for r in rows:
        r.append(f"{float(r[-1]) / base:.1f}x")
    print_table(["loop", "batch", "prompts", "max_new_tokens", "median s", "median new tok/s", "speed-up"], rows)


if __name__ == "__main__":
    main()
