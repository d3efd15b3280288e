"""Which layer of the embedded chat model should the pooled judge read? A linear probe per layer.

    python benchmarks/judge_probe.py [--layers 0,3,...,30] [--C 0.005,0.01,0.02,0.05] [--workdir DIR]

One forward pass of the whole backbone over the training rows of a recipe (the default pooled recipe's
data options; ``--set KEY=VALUE`` changes them), the labelled validation set and the held-out pool;
each selected layer's output is averaged over the response's tokens (what a pooled judge with that
``pool_layer`` reads), and a logistic regression (``safeedit.judge.pooled_train.fit_head``) is fitted per
(layer, C). Prints balanced accuracy on the validation set and on all held-out rows. Features are
saved in ``--workdir`` (one .npz per set), so a second run with other C values costs only the fits.
This is the measurement behind ``HeadRecipe.pool_layer`` and ``HeadRecipe.C``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


def layer_means(decoder, tokenizer, texts: list[str], layers: list[int], max_length: int) -> np.ndarray:
    """[len(texts), len(layers), hidden]: each layer's output (hidden_states[layer]) averaged over real tokens."""
    from tqdm.auto import tqdm

    from safeedit.judge.pooled import masked_mean

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), len(layers), decoder.config.hidden_size), np.float32)
    with torch.inference_mode():
        for s in tqdm(range(0, len(order), 32), desc="probe features", unit="batch"):
            idx = order[s:s + 32]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            mask = enc["attention_mask"]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = decoder.model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions,
                                   output_hidden_states=True).hidden_states
            for j, layer in enumerate(layers):  # what a pooled judge with pool_layer = layer reads
                out[idx, j] = masked_mean(hidden[layer], mask).numpy()
    return out


def main() -> int:
    from safeedit.judge.pooled_train import HeadRecipe, fit_head, head_predictions, load_backbone
    from safeedit.judge.train import build_splits, evaluate_predictions
    from safeedit.methods.options import make_config, parse_set_options

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default=",".join(str(i) for i in range(0, 31, 3)))
    ap.add_argument("--C", default="0.005,0.01,0.02,0.05,0.5")
    ap.add_argument("--workdir", default="runs/judge-probe")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a HeadRecipe data option")
    args = ap.parse_args()
    recipe = make_config(HeadRecipe, parse_set_options(args.set), "--set")
    layers = [int(x) for x in args.layers.split(",")]
    cs = [float(x) for x in args.C.split(",")]
    splits = build_splits(recipe.data_config())
    sets = {"train": splits.train, "validation": splits.validation, "held_out": splits.test}
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    decoder = tokenizer = None
    feats = {}
    for name, rows in sets.items():
        path = work / f"{name}-T{recipe.max_length}.npz"
        if path.is_file():
            data = np.load(path)
            if list(data["layers"]) == layers and len(data["features"]) == len(rows):
                feats[name] = data["features"]
                continue
        if decoder is None:
            decoder, tokenizer = load_backbone(recipe.backbone)
        t0 = time.perf_counter()
        feats[name] = layer_means(decoder, tokenizer, [r.response for r in rows], layers, recipe.max_length)
        np.savez(path, features=feats[name], layers=np.array(layers))
        print(f"{name}: {len(rows)} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    y = [r.label for r in splits.train]
    print(f"| layer | C | validation bal. ({len(splits.validation)} rows) | held-out bal., all rows ({len(splits.test)}) |")
    print("|---:|---:|---:|---:|")
    for j, layer in enumerate(layers):
        for c in cs:
            head = fit_head(feats["train"][:, j], y, c)
            scores = []
            for name in ("validation", "held_out"):
                labels, _ = head_predictions(feats[name][:, j], head)
                scores.append(evaluate_predictions(sets[name], labels)["overall"]["balanced_accuracy"])
            print(f"| {layer} | {c:g} | {scores[0]:.3f} | {scores[1]:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
