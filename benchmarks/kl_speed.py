"""DINM's KL term, forward + backward over [positions x vocabulary]: autograd's textbook formulation
against ``safeedit.methods.losses.kl_to_reference``. Medians of 15 runs after 2 warm-ups.

Usage: python benchmarks/kl_speed.py [--threads 2] [--vocab 49152]
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
    import torch.nn.functional as F

    from safeedit.methods.losses import kl_to_reference

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=49152, help="SmolLM2's vocabulary by default")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    def textbook(z, ref):
        logp = F.log_softmax(z, dim=-1)
        return (logp.exp() * (logp - ref)).sum(-1)

    def seconds(fn, z0, ref, n=15):
        times = []
        for i in range(n + 2):
            z = z0.clone().requires_grad_(True)
            start = time.perf_counter()
            fn(z, ref).mean().backward()
            if i >= 2:
                times.append(time.perf_counter() - start)
        return median(times)

    rows = []
    for positions in (20, 60, 150):
        torch.manual_seed(0)
        z0 = torch.randn(positions, args.vocab)
        ref = F.log_softmax(torch.randn(positions, args.vocab), dim=-1)
        a, b = seconds(textbook, z0, ref), seconds(kl_to_reference, z0, ref)
        rows.append([positions, f"{a * 1e3:.1f}", f"{b * 1e3:.1f}", f"{a / b:.2f}x"])
    print(f"KL forward + backward, vocabulary {args.vocab}, {args.threads} threads (median ms)")
    print_table(["positions", "autograd textbook", "kl_to_reference", "speed-up"], rows)


if __name__ == "__main__":
    main()
