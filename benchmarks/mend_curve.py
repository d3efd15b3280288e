"""MEND meta-training against its control: is the hyper-network learning beyond the normalised gradient?

The control is the same `safeedit mend train` command with ``--set lr=0 --set step_lr=0``: the
running mean/std of the gradient factors still update (they are statistics, not parameters), the
network and the step sizes never move. Same instances in the same order, so the outer losses of the
two runs can be compared iteration by iteration.

    safeedit mend train --config configs/mend/smollm2-135m.yaml --data TRAIN --val-data VAL --val-n 4 --out mend
    safeedit mend train --config configs/mend/smollm2-135m.yaml --set lr=0 --set step_lr=0 \\
        --data TRAIN --val-data VAL --val-n 4 --out mend-control
    python benchmarks/mend_curve.py mend mend-control --png docs/mend_curve_smollm2.png

Prints per-window means of the training outer loss (0.1·NLL + KL) and its parts, and the held-out
checkpoints; draws both curves (moving mean) and the held-out outer loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402


def read(folder: Path, name: str) -> list[dict]:
    path = folder / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="mend train folders (the first is the trained run)")
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--png", default=None)
    ap.add_argument("--edit-weight", type=float, default=0.1, help="the outer loss's NLL weight (the config's)")
    args = ap.parse_args()
    rows, curves = [], {}
    for run in args.runs:
        folder = Path(run)
        losses, val = read(folder, "losses.jsonl"), read(folder, "val.jsonl")
        curves[folder.name] = (losses, val)
        for start in range(0, len(losses), args.window):
            part = losses[start:start + args.window]
            rows.append([folder.name, f"{start}-{start + len(part) - 1}", f"{statistics.mean(r['loss'] for r in part):.4f}",
                         f"{statistics.mean(r['nll_post'] for r in part):.3f}", f"{statistics.mean(r['kl'] for r in part):.4f}",
                         f"{part[-1]['seconds']:.0f}"])
    print_table(["run", "iterations", "mean outer loss", "mean NLL(safe) after edit", "mean KL", "seconds so far"], rows)
    print()
    held = []
    for name, (_, val) in curves.items():
        for v in val:
            held.append([name, v["iteration"], f"{v['nll_pre']:.3f}", f"{v['nll_post']:.3f}", f"{v['kl']:.4f}",
                         f"{args.edit_weight * v['nll_post'] + v['kl']:.4f}", v["n"]])
    print_table(["run", "iteration", "held-out NLL before", "NLL after edit", "KL", "outer loss", "n"], held)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for k, (name, (losses, val)) in enumerate(curves.items()):
            color = f"C{k}"
            xs = [r["iteration"] for r in losses]
            ys = [r["loss"] for r in losses]
            mean = [statistics.mean(ys[max(0, i - args.window + 1):i + 1]) for i in range(len(ys))]
            left.plot(xs, ys, alpha=0.25, color=color)
            left.plot(xs, mean, label=f"{name} (moving mean of {args.window})", color=color)
            right.plot([v["iteration"] for v in val], [args.edit_weight * v["nll_post"] + v["kl"] for v in val],
                       marker="o", label=name, color=color)
        left.set(xlabel="iteration", ylabel="outer loss 0.1·NLL + KL (training instance)", title="MEND meta-training")
        right.set(xlabel="iteration", ylabel="outer loss on held-out instances", title="held-out edits")
        left.legend()
        right.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
        print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
