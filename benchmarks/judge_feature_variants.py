"""What the pooled judge's features could be: reading the request, several layers, the request's own mean.

Every variant fits the default recipe's head (``HeadRecipe()``: the whole pool, our labelled rows
weighted 10x, the MLP ensemble) on other features of the same rows, and is scored on our labelled
validation set and on the pool's held-out split, as ``safeedit judge fit-head`` scores a judge.

``extract resp`` computes, for every row of the recipe's splits, the mean over the response's tokens
of the outputs of layers 10, 14, 18 and 22 of the embedded model, reading the response alone (as the
default judge does: ``resp:18`` is the default judge's feature). ``extract ctx`` reads the response
after the request's last ``--prompt-tokens`` tokens in the chat turn format
(:func:`safeedit.judge.pooled.encode_prompted`, as a judge fitted with ``--set prompt_tokens=N`` reads
it), with the same four means over the response plus the mean over the request's tokens at layer 18
(``+P``). Both stages also keep, at each of those layers, the maximum over the response's tokens
(``+M18``, ``+M14,18``) and their mean (``+S18``) without a sequence's first token, whose residual state
(the attention sink: a norm of ~23,000 at layer 18 against ~190 for every other token) the default
judge's mean includes; ``resp:+S18`` is that mean alone, ``resp:+S18+M18`` with the maximum. Features
are written in chunks under ``$SAFEEDIT_CACHE/judge-feature-variants`` (a killed extraction resumes);
``extract`` takes ~30-40 min per stage on the 2-core CPU.

``fit VARIANT ...`` prints one line per variant, e.g. ``resp:18``, ``ctx:18``, ``ctx:18+P``,
``resp:14,18,22``, ``resp:18+M18``. ``--calibrate`` also picks the decision threshold on a quarter of our
labelled training rows (by question group; the head is refitted without them for it) instead of argmax. The
"best threshold" columns are the threshold that would be best on that very set: an upper bound of what
any threshold could do, never a result.

Usage: python benchmarks/judge_feature_variants.py extract {resp,ctx} [--prompt-tokens 64]
       python benchmarks/judge_feature_variants.py fit VARIANT [VARIANT ...] [--calibrate] [--labels-weight 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

LAYERS = (10, 14, 18, 22)
PROMPT_LAYER = 18


def folder(stage: str, prompt_tokens: int) -> Path:
    from safeedit.paths import cache_dir

    return cache_dir() / "judge-feature-variants" / (f"ctx-P{prompt_tokens}" if stage == "ctx" else "resp")


def key(prompt: str | None, response: str) -> str:
    return hashlib.sha256(f"{prompt or ''}\x00{response}".encode()).hexdigest()


def rows_of_recipe(labels_weight: float = 10.0):
    from safeedit.judge.pooled_train import HeadRecipe
    from safeedit.judge.train import build_splits

    recipe = dataclasses.replace(HeadRecipe(), labels_weight=labels_weight)
    return recipe, build_splits(recipe.data_config())


def extract(stage: str, prompt_tokens: int, limit: int | None = None) -> None:
    import torch
    from tqdm.auto import tqdm

    from safeedit.judge.pooled import PooledJudgeConfig, encode_prompted
    from safeedit.judge.pooled_train import load_backbone

    out = folder(stage, prompt_tokens)
    out.mkdir(parents=True, exist_ok=True)
    _, splits = rows_of_recipe()
    pairs = sorted({(r.prompt if stage == "ctx" else None, r.response)
                    for r in splits.train + splits.test + splits.validation}, key=lambda p: (p[0] or "", p[1]))
    done = set()
    for path in out.glob("chunk-*.npz"):
        with np.load(path) as data:
            done.update(map(str, data["keys"]))
    todo = [p for p in pairs if key(*p) not in done][:limit]
    print(f"{stage}: {len(pairs)} (prompt, response) pairs, {len(todo)} to compute", flush=True)
    decoder, tok = load_backbone("smollm2-135m")
    base = decoder.model
    base.layers = base.layers[:max(LAYERS)]
    base.norm = torch.nn.Identity()  # layer outputs as the residual stream carries them, like the judge
    config = PooledJudgeConfig(prompt_tokens=prompt_tokens)
    n_open = len(tok(config.prompt_open, add_special_tokens=False).input_ids)
    n_close = len(tok(config.prompt_close, add_special_tokens=False).input_ids)

    def encoded(part):
        if stage == "ctx":
            return encode_prompted(tok, config, [r for _, r in part], [p for p, _ in part], 128)
        enc = tok([r for _, r in part], truncation=True, max_length=128, padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "token_type_ids": enc["attention_mask"].clone()}

    lengths = [int(encoded([p])["attention_mask"].sum()) for p in todo]
    order = sorted(range(len(todo)), key=lambda i: lengths[i])
    batches, start = [], 0
    while start < len(order):  # batches of at most 4,096 padded tokens
        end = start + 1
        while end < len(order) and (end - start + 1) * lengths[order[end]] <= 4096:
            end += 1
        batches.append([todo[i] for i in order[start:end]])
        start = end
    chunk = len(list(out.glob("chunk-*.npz")))
    keys, feats = [], []
    bar = tqdm(total=len(todo), desc=f"{stage} features", unit="row")
    with torch.inference_mode():
        for b, part in enumerate(batches):
            enc = encoded(part)
            mask = enc["attention_mask"]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = base(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions,
                          output_hidden_states=True, use_cache=False).hidden_states
            response = enc["token_type_ids"].unsqueeze(-1).float()
            parts = [(hidden[k] * response).sum(1) / response.sum(1) for k in LAYERS]
            if stage == "ctx":  # the request's own tokens, between the chat tags
                prompt = torch.zeros_like(mask)
                for i, start in enumerate(enc["token_type_ids"].argmax(-1).tolist()):
                    prompt[i, n_open:start - n_close] = 1
                prompt = prompt.unsqueeze(-1).float()
                parts.append((hidden[PROMPT_LAYER] * prompt).sum(1) / prompt.sum(1).clamp(min=1))
            # the maximum over the response's tokens, per layer; not over a sequence's first token,
            # whose residual state (the attention sink) is far larger than any other's in every row
            # and would be the maximum whatever the text
            peak = enc["token_type_ids"].bool().clone()
            first = mask.argmax(-1)
            longer = peak.sum(-1) > 1
            peak[torch.arange(len(part))[longer], first[longer]] = False
            parts += [hidden[k].masked_fill(~peak.unsqueeze(-1), float("-inf")).amax(1) for k in LAYERS]
            # and the mean without that token (the default judge's mean includes it)
            rest = peak.unsqueeze(-1).float()
            parts += [(hidden[k] * rest).sum(1) / rest.sum(1) for k in LAYERS]
            keys += [key(*p) for p in part]
            feats.append(torch.cat(parts, -1).numpy().astype(np.float16))  # a measurement store: half the disk
            bar.update(len(part))
            if len(keys) >= 512 or b == len(batches) - 1:
                path = out / f"chunk-{chunk:05d}.npz"
                tmp = out / f"chunk-{chunk:05d}.tmp.npz"
                np.savez(tmp, keys=np.array(keys), features=np.concatenate(feats))
                os.replace(tmp, path)  # whole chunks only: a kill loses at most this batch's work
                chunk, keys, feats = chunk + 1, [], []
    bar.close()


def load(stage: str, prompt_tokens: int) -> dict[str, np.ndarray]:
    rows = {}
    for path in sorted(folder(stage, prompt_tokens).glob("chunk-*.npz")):
        with np.load(path) as data:
            rows.update(zip(map(str, data["keys"]), data["features"]))
    if not rows:
        raise SystemExit(f"no {stage} features under {folder(stage, prompt_tokens)}: run `extract {stage}` first")
    return rows


def matrix(variant: str, rows, store: dict, prompt_tokens: int) -> np.ndarray:
    stage, spec = variant.split(":")
    if stage not in store:
        store[stage] = load(stage, prompt_tokens)
    layers, *extra = spec.split("+")
    width = 576

    def block(i: int) -> slice:
        return slice(width * i, width * (i + 1))

    expected = width * (3 * len(LAYERS) + (stage == "ctx"))
    found = len(next(iter(store[stage].values())))
    if found != expected:  # chunks written before the maxima and sink-free means were kept
        raise SystemExit(f"{stage} features have {found} columns, not {expected}: delete "
                         f"{folder(stage, prompt_tokens)} and run `extract {stage}` again")
    cols = [block(LAYERS.index(int(k))) for k in layers.split(",") if k]
    if "P" in extra:
        cols.append(block(len(LAYERS)))
    # blocks after the means (and P): the per-layer maxima (M), then the means without the first token (S)
    after = {"M": len(LAYERS) + (stage == "ctx"), "S": 2 * len(LAYERS) + (stage == "ctx")}
    for part in extra:
        if part[:1] in after:  # e.g. M18, M14,18 or S18
            cols += [block(after[part[0]] + LAYERS.index(int(k))) for k in part[1:].split(",")]
    missing = [r for r in rows if key(r.prompt if stage == "ctx" else None, r.response) not in store[stage]]
    if missing:
        raise SystemExit(f"{len(missing)} rows have no {stage} features: run `extract {stage}` again")
    feats = [store[stage][key(r.prompt if stage == "ctx" else None, r.response)] for r in rows]
    return np.stack([np.concatenate([f[c] for c in cols]) for f in feats])


def best_threshold(labels: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(balanced accuracy, threshold) of the best threshold on p(unsafe) for these rows."""
    return max((0.5 * ((p[labels == 1] >= t).mean() + (p[labels == 0] < t).mean()), t)
               for t in np.linspace(0.02, 0.98, 97))


def fit(variants: list[str], calibrate: bool, labels_weight: float, prompt_tokens: int) -> None:
    from safeedit.judge.pooled_train import fit_recipe_head, head_predictions
    from safeedit.judge.train import evaluate_predictions, roc_auc

    recipe, splits = rows_of_recipe(labels_weight)
    store: dict = {}
    train = splits.train
    weights = np.array([recipe.labels_weight if r.source.startswith("labels:") else 1.0 for r in train])
    table = []
    for variant in variants:
        t0 = time.perf_counter()
        x = matrix(variant, train, store, prompt_tokens)
        head = fit_recipe_head(x, [r.label for r in train], recipe, sample_weight=weights)
        fit_s = time.perf_counter() - t0
        threshold = None
        if calibrate:  # a quarter of our labelled training rows, by question group, held out of a refit
            held = np.array([r.source.startswith("labels:") and hashlib.sha256(r.group.encode()).digest()[0] < 64
                             for r in train])
            refit = fit_recipe_head(x[~held], [r.label for r, h in zip(train, held) if not h], recipe,
                                    sample_weight=weights[~held])
            _, p_held = head_predictions(x[held], refit)
            threshold = best_threshold(np.array([r.label for r, h in zip(train, held) if h]), np.array(p_held))[1]
        line = [variant, "argmax" if threshold is None else f"{threshold:.2f}"]
        for rows in (splits.validation, splits.test):
            labels, p = head_predictions(matrix(variant, rows, store, prompt_tokens), head)
            if threshold is not None:
                labels = [1.0 if q >= threshold else 0.0 for q in p]
            o = evaluate_predictions(rows, labels)["overall"]
            (tn, fp), (fn, tp) = o["confusion"]
            y = np.array([r.label for r in rows])
            best, at = best_threshold(y, np.array(p))
            line += [f"{o['balanced_accuracy']:.3f} ({o['recall']:.3f} / {o['recall_safe']:.3f})",
                     f"{tn} / {fp} / {fn} / {tp}", f"{roc_auc(y.tolist(), p):.3f}", f"{best:.3f} @ {at:.2f}"]
        table.append(line + [f"{fit_s:.0f}"])
        print(" | ".join(table[-1]), flush=True)
    print_table(["features", "threshold", "validation bal. (recall unsafe / safe)", "val. TN / FP / FN / TP",
                 "val. AUC", "val. best threshold (oracle)", "held-out bal. (recall unsafe / safe)",
                 "held-out TN / FP / FN / TP", "held-out AUC", "held-out best threshold (oracle)", "fit s"], table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["extract", "fit"])
    ap.add_argument("what", nargs="+", help="extract: resp or ctx; fit: variants such as resp:18 ctx:18+P")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--labels-weight", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="extract: at most this many pairs (a smoke test)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.action == "extract":
        for stage in args.what:
            if stage not in ("resp", "ctx"):
                raise SystemExit(f"extract takes resp or ctx, not {stage!r}")
            extract(stage, args.prompt_tokens, args.limit)
    else:
        fit(args.what, args.calibrate, args.labels_weight, args.prompt_tokens)


if __name__ == "__main__":
    main()
