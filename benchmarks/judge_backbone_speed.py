"""Training-step time of candidate judge backbones on this CPU (same batch, same length).

    python benchmarks/judge_backbone_speed.py [--steps 3] [--batch 16] [--length 128]

Compares all-MiniLM-L6-v2 (the default judge's encoder) with the embedded SmolLM2-135M-Instruct
under a sequence-classification head: median seconds per optimiser step (forward + backward +
AdamW), and what a 96-step recipe (the default's step count) would take. Measured on a shared
machine the absolute numbers are upper bounds; the ratio is what decides.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def step_times(folder: str, steps: int, batch: int, length: int) -> tuple[float, int]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    text = "I'm sorry, but I can't help with that request. " * 40
    enc = tok([text] * batch, truncation=True, max_length=length, padding=True, return_tensors="pt")
    labels = torch.tensor([i % 2 for i in range(batch)])
    times = []
    model.train()
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    args = ap.parse_args()
    from safeedit.judge.train import base_encoder_dir
    from safeedit.lm.loading import cache_dir

    smol = next((p for p in sorted((cache_dir() / "models").glob("SmolLM2-135M*")) if (p / "config.json").is_file()), None)
    rows = [("all-MiniLM-L6-v2", str(base_encoder_dir()))] + ([("SmolLM2-135M-Instruct", str(smol))] if smol else [])
    print(f"| backbone | parameters | s / step (batch {args.batch}, {args.length} tokens) | 96-step recipe, min |")
    print("|---|---:|---:|---:|")
    for name, folder in rows:
        s, n = step_times(folder, args.steps, args.batch, args.length)
        print(f"| {name} | {n / 1e6:.1f} M | {s:.2f} | {96 * s / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()
