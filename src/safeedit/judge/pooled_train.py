"""Fit the head of a pooled judge (:mod:`safeedit.judge.pooled`) on frozen backbone features.

The backbone never trains, so a recipe is: compute each training row's pooled hidden state once
(the expensive part: one forward pass of ``pool_layer`` layers per row, cached on disk and resumed
after a kill), then fit the head on them: a small MLP ensemble (one GELU hidden layer, ``head_members``
seeds averaged; ~30 s) or, with ``head_hidden=0``, an L2-regularised logistic regression (seconds).
The fitted head folds the feature standardisation (and an ensemble's averaging) into its weights, so
the judge is plain ``score(mean hidden state)``.

    from safeedit.judge.pooled_train import HeadRecipe, train_pooled_judge
    report = train_pooled_judge("judge-folder", HeadRecipe())

Rows, splits and the validation set are the fine-tuned judge's (:func:`safeedit.judge.train.build_splits`):
the same grouped held-out split of the pool, the same labelled validation questions kept out.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from safeedit.errors import ConfigError, DataError
from safeedit.judge.data import JudgeRow, describe
from safeedit.judge.pooled import CHATML_CLOSE, CHATML_OPEN

#: what the pooled state is computed over, per recipe (the feature cache is keyed by it)
FEATURE_FORMAT = 1


@dataclass
class HeadRecipe:
    """Everything that decides a pooled judge's head (one field, one meaning). Defaults: the shipped
    default judge's recipe (:mod:`safeedit.judge.shipped`)."""

    #: the backbone: a model alias, local folder or hub id (``safeedit.lm.load_model``); the embedded
    #: chat model by default, which every safeedit install has
    backbone: str = "smollm2-135m"
    #: decoder layers run; the pooled state is the last one's output. Source: measured, layers 15-24
    #: of SmolLM2-135M scored within 0.02 of each other, 18 best on our validation set, 0-9 and 30 lower
    pool_layer: int = 18
    #: tokens of a response read, in training and at inference (the judge stores it)
    max_length: int = 128
    #: the prompt's last tokens read before the response (0: the response alone, like the paper's
    #: judge); a judge with them needs the prompt whenever it scores (``safeedit.judge.pooled``)
    prompt_tokens: int = 0
    #: text before the prompt and between prompt and response (the default backbone's chat turns)
    prompt_open: str = CHATML_OPEN
    prompt_close: str = CHATML_CLOSE
    #: units of the head's hidden layer; 0 = a linear head (logistic regression, ``C``). Source:
    #: measured on cached layer-18 features (5 seeds each): 64 units kept the validation score of
    #: the logistic regression (0.819 vs 0.818) and raised the held-out pool's all-rows score from
    #: 0.796 to 0.832 and its per-source macro from 0.755 to 0.801; 32 / 128 units within noise on
    #: the pool, 128 lower on validation (0.785); README "Recipes tried"
    head_hidden: int = 64
    #: MLP heads fitted from seeds 0..n-1 and averaged (their logits; folded into one wider layer).
    #: Source: measured, one seed's validation score spreads +-0.02 (94 unsafe rows); the average of 5
    #: sits at the mean
    head_members: int = 5
    #: passes over the training rows per MLP member (AdamW, batches of ``head_batch``). Source:
    #: measured, 15 epochs 0.803 / 0.832 against 30 epochs' 0.809 / 0.834 (validation / held-out)
    head_epochs: int = 30
    head_batch: int = 256
    head_lr: float = 1e-3
    #: AdamW weight decay of the MLP. Source: measured, 0.1 within noise of 0.01
    head_weight_decay: float = 0.01
    #: dropout on the features and on the hidden layer while fitting. Source: measured, 0.5 lowered
    #: the held-out pool's score (0.820 vs 0.834) for no gain on validation
    head_dropout: float = 0.2
    #: inverse L2 strength of the logistic regression (``head_hidden=0``) on standardised features.
    #: Source: measured, 0.01-0.02 best of 0.005-0.5 on our validation set and the held-out pool
    #: (benchmarks/judge_probe.py)
    C: float = 0.01
    #: judge_train.jsonl; "default" = the shared file, None = leave out
    data_path: str | None = "default"
    #: SafeEdit file whose safe/unsafe/constraint responses are added; "default" = the shared sample
    safeedit_path: str | None = "default"
    #: our labelled training rows ("default": data/judge_labels/train.jsonl), a path, or None
    labels_path: str | None = "default"
    #: our labelled validation set (never trained on; its questions are kept out of training)
    validation_path: str | None = "default"
    #: pool rows used: a (source, label)-balanced subsample of this many, or None for the whole split.
    #: Source: measured, the whole split (16,417 rows) scores higher on the held-out pool than 2,000 and,
    #: with ``labels_weight``, as high on our validation set (README "Recipes tried")
    max_train: int | None = None
    #: weight of each labelled row relative to a pool row in the regression. Source: measured, 10 of
    #: 1 / 3 / 10 / 20: with the whole pool and weight 1 our 1,918 rows are 10 % of the data and the
    #: validation score drops by 0.04
    labels_weight: float = 10.0
    #: refuse-then-answer rows made from pool rows (``safeedit.judge.data.refusal_pivot_rows``)
    refusal_pivots: int = 300
    #: share of request groups held out of the pool as the test split
    test_fraction: float = 0.2
    #: held-out rows scored per source, label ratio kept; None = all
    max_eval_per_source: int | None = 150
    #: seed of the split hashes and the subsample
    seed: int = 0

    def prompt_reading(self) -> dict:
        """The judge config's prompt fields (``from_decoder``'s keyword arguments)."""
        if self.prompt_tokens < 0:
            raise ConfigError(f"prompt_tokens must be >= 0 (0: the response alone), got {self.prompt_tokens}")
        return {"prompt_tokens": self.prompt_tokens, "prompt_open": self.prompt_open, "prompt_close": self.prompt_close}

    def data_config(self):
        """The fine-tuned judge's config carrying this recipe's data options (for ``build_splits``)."""
        from safeedit.judge.train import JudgeTrainConfig

        return JudgeTrainConfig(data_path=self.data_path, safeedit_path=self.safeedit_path,
                                labels_path=self.labels_path, validation_path=self.validation_path,
                                max_train=self.max_train, refusal_pivots=self.refusal_pivots,
                                test_fraction=self.test_fraction, max_eval_per_source=self.max_eval_per_source,
                                seed=self.seed, labels_repeats=1)

    @classmethod
    def from_dict(cls, values: dict) -> "HeadRecipe":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class FeatureCache:
    """Pooled features on disk, keyed by the text's SHA-256, in one folder per (backbone weights,
    layer, token limit). Chunks are written whole (temporary file, then rename), so a killed
    extraction keeps every finished chunk and never a half-written one."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._rows: dict[str, np.ndarray] = {}
        self._chunks = 0
        if self.folder.is_dir():
            for path in sorted(self.folder.glob("chunk-*.npz")):
                with np.load(path) as data:
                    for key, row in zip(data["keys"], data["features"]):
                        self._rows[str(key)] = row
                self._chunks += 1

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get(self, text: str) -> np.ndarray | None:
        return self._rows.get(self.key(text))

    def add(self, texts: list[str], features: np.ndarray) -> None:
        if not texts:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = np.array([self.key(t) for t in texts])
        path = self.folder / f"chunk-{self._chunks:05d}-{os.getpid()}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, features=features.astype(np.float32))
        os.replace(tmp, path)
        self._chunks += 1
        for k, row in zip(keys, features):
            self._rows[str(k)] = row


def feature_cache_dir(backbone_fingerprint: str, pool_layer: int, max_length: int, prompt_tokens: int = 0) -> Path:
    """The cache folder of one feature kind; a prompt-reading judge's (``prompt_tokens`` > 0) is its own."""
    from safeedit.paths import cache_dir

    reads = f"-P{prompt_tokens}" if prompt_tokens else ""
    return cache_dir() / "judge-features" / f"v{FEATURE_FORMAT}-{backbone_fingerprint}-L{pool_layer}-T{max_length}{reads}"


def feature_text(response: str, prompt: str | None) -> str:
    """What a feature is cached under: the response, or prompt and response for a prompt-reading judge."""
    return response if prompt is None else f"{prompt}\x00{response}"


def pooled_features(judge, tokenizer, texts: list[str], max_length: int, cache: FeatureCache | None = None,
                    batch_tokens: int = 4096, chunk_rows: int = 256, progress: bool = False,
                    prompts: list[str] | None = None) -> np.ndarray:
    """[len(texts), hidden] pooled states of ``judge`` (a :class:`PooledJudgeForSequenceClassification`) for the
    responses ``texts``, from ``cache`` where it has them; the rest computed in batches of similar length
    and added to it. A prompt-reading judge (``judge.config.prompt_tokens`` > 0) needs ``prompts``, aligned."""
    from safeedit.judge.pooled import encode_prompted

    reads_prompt = bool(judge.config.prompt_tokens)
    if reads_prompt and (prompts is None or len(prompts) != len(texts)):
        raise DataError(f"this pooled judge reads the prompt: pass {len(texts)} prompts aligned with the responses")
    pairs = list(zip(prompts if reads_prompt else [None] * len(texts), texts))

    def encoded(part: list[tuple[str | None, str]]) -> dict[str, torch.Tensor]:
        responses = [r for _, r in part]
        if reads_prompt:
            return encode_prompted(tokenizer, judge.config, responses, [p for p, _ in part], max_length)
        return tokenizer(responses, truncation=True, max_length=max_length, padding=True, return_tensors="pt")

    todo = sorted({pair for pair in pairs if cache is None or cache.get(feature_text(pair[1], pair[0])) is None},
                  key=lambda pair: (len(pair[0] or "") + len(pair[1]), pair[0] or "", pair[1]))
    computed: dict[str, np.ndarray] = {}
    if todo:
        lengths = [int(m.sum()) or 1 for pair in todo for m in encoded([pair])["attention_mask"]]
        order = sorted(range(len(todo)), key=lambda i: lengths[i])
        todo, lengths = [todo[i] for i in order], [lengths[i] for i in order]
        batches, start = [], 0
        while start < len(todo):  # batches of at most batch_tokens padded tokens
            end = start + 1
            while end < len(todo) and (end - start + 1) * max(lengths[start:end + 1]) <= batch_tokens:
                end += 1
            batches.append((start, end))
            start = end
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="judge features", unit="row")
        pending_texts, pending_rows = [], []
        device = next(judge.parameters()).device
        with torch.inference_mode():
            for lo, hi in batches:
                part = todo[lo:hi]
                enc = {k: v.to(device) for k, v in encoded(part).items()}
                rows = judge.pooled(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids") if reads_prompt
                                    else None).float().cpu().numpy()
                keys = [feature_text(r, p) for p, r in part]
                for t, row in zip(keys, rows):
                    computed[t] = row
                pending_texts += keys
                pending_rows.append(rows)
                if cache is not None and len(pending_texts) >= chunk_rows:
                    cache.add(pending_texts, np.concatenate(pending_rows))
                    pending_texts, pending_rows = [], []
                if bar is not None:
                    bar.update(len(part))
        if cache is not None:
            cache.add(pending_texts, np.concatenate(pending_rows) if pending_rows else np.zeros((0, 1)))
        if bar is not None:
            bar.close()
    keys = [feature_text(r, p) for p, r in pairs]
    out = [computed[t] if t in computed else cache.get(t) for t in keys]
    return np.stack(out) if out else np.zeros((0, judge.config.backbone["hidden_size"]), np.float32)


def fit_head(features: np.ndarray, labels: list[int], C: float, sample_weight: np.ndarray | None = None,
             ) -> dict[str, torch.Tensor]:
    """A linear two-logit head (``score.weight`` [2, hidden], ``score.bias`` [2]): a class-balanced,
    L2-regularised logistic regression on standardised features, with the standardisation folded into
    the weights (logit_unsafe - logit_safe = w . (x - mean) / std + b)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        raise DataError("the head needs both safe and unsafe training rows")
    x = features.astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=5000)
    clf.fit((x - mean) / std, y, sample_weight=sample_weight)
    w = clf.coef_[0] / std
    b = float(clf.intercept_[0] - (clf.coef_[0] * mean / std).sum())
    if not np.isfinite(w).all() or not np.isfinite(b):
        raise DataError("the fitted head has non-finite weights; nothing saved")
    weight = torch.zeros((2, x.shape[1]), dtype=torch.float32)
    weight[1] = torch.from_numpy(w.astype(np.float32))
    bias = torch.tensor([0.0, b], dtype=torch.float32)
    return {"score.weight": weight, "score.bias": bias}


def balanced_weights(labels: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """``sample_weight`` (default 1) rescaled so that each class carries half of the total weight."""
    y = np.asarray(labels)
    w = np.ones(len(y), np.float64) if sample_weight is None else np.asarray(sample_weight, np.float64).copy()
    total = w.sum()
    for c in (0, 1):
        w[y == c] *= 0.5 * total / w[y == c].sum()
    return w


def fit_mlp_head(features: np.ndarray, labels: list[int], hidden: int, members: int = 5,
                 sample_weight: np.ndarray | None = None, epochs: int = 30, batch: int = 256, lr: float = 1e-3,
                 weight_decay: float = 0.01, dropout: float = 0.2, seed: int = 0) -> dict[str, torch.Tensor]:
    """An MLP head (``Linear(d, hidden) -> GELU -> Linear(hidden, 2)``): ``members`` networks fitted
    from seeds ``seed..seed+members-1`` on standardised features with a class-balanced, weighted
    cross-entropy (AdamW, dropout), merged into one network of ``members * hidden`` units whose
    logits are the members' mean (exact: the second layer is linear), the standardisation folded
    into the first layer. Deterministic for given inputs and thread count; the global RNG is left
    as it was."""
    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        raise DataError("the head needs both safe and unsafe training rows")
    if hidden < 1 or members < 1:
        raise DataError(f"an MLP head needs hidden >= 1 and members >= 1 (got {hidden}, {members})")
    x = features.astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = torch.tensor((x - mean) / std, dtype=torch.float32)
    ys = torch.tensor(y, dtype=torch.long)
    ws = torch.tensor(balanced_weights(y, sample_weight), dtype=torch.float32)
    firsts, seconds = [], []
    for member in range(members):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + member)
            net = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(),
                                      torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 2))
            opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
            order = torch.Generator().manual_seed(seed + member)
            net.train()
            for _ in range(epochs):
                perm = torch.randperm(len(ys), generator=order)
                for lo in range(0, len(ys), batch):
                    b = perm[lo:lo + batch]
                    loss = (torch.nn.functional.cross_entropy(net(xs[b]), ys[b], reduction="none") * ws[b]).sum() / ws[b].sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        if not torch.isfinite(loss):
            raise DataError(f"the MLP head's loss became {float(loss)} (member {member}); nothing saved")
        firsts.append(net[1])
        seconds.append(net[4])
    with torch.no_grad():
        mean_t, std_t = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        w1 = torch.cat([m.weight.double() for m in firsts]) / std_t  # (x - mean) / std folded in
        b1 = torch.cat([m.bias.double() for m in firsts]) - w1 @ mean_t
        w2 = torch.cat([m.weight.double() for m in seconds], dim=1) / members
        b2 = torch.stack([m.bias.double() for m in seconds]).mean(0)
    head = {"score.0.weight": w1.float(), "score.0.bias": b1.float(), "score.2.weight": w2.float(), "score.2.bias": b2.float()}
    if not all(torch.isfinite(t).all() for t in head.values()):
        raise DataError("the fitted head has non-finite weights; nothing saved")
    return head


def fit_recipe_head(features: np.ndarray, labels: list[int], recipe: "HeadRecipe",
                    sample_weight: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """The head ``recipe`` asks for: the MLP ensemble, or the logistic regression when ``head_hidden`` is 0."""
    if recipe.head_hidden == 0:
        return fit_head(features, labels, recipe.C, sample_weight=sample_weight)
    return fit_mlp_head(features, labels, recipe.head_hidden, recipe.head_members, sample_weight=sample_weight,
                        epochs=recipe.head_epochs, batch=recipe.head_batch, lr=recipe.head_lr,
                        weight_decay=recipe.head_weight_decay, dropout=recipe.head_dropout, seed=recipe.seed)


def head_logits(head: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """[rows, 2] logits of a head state dict on pooled ``features``, as the judge's ``score`` gives them."""
    from safeedit.judge.pooled import head_hidden_of, make_head

    first = head["score.weight" if "score.weight" in head else "score.0.weight"]
    module = make_head(first.shape[1], head_hidden_of(head), 2)
    module.load_state_dict({k[len("score."):]: v for k, v in head.items()})
    with torch.no_grad():
        return module(features.to(torch.float32))


def head_predictions(features: np.ndarray, head: dict[str, torch.Tensor]) -> tuple[list[float], list[float]]:
    """(labels, p_unsafe) the head gives pooled ``features``, as :class:`SafetyJudge` would (argmax)."""
    logits = head_logits(head, torch.from_numpy(features.astype(np.float32)))
    p = logits.softmax(-1)[:, 1]
    return (logits.argmax(-1) == 1).float().tolist(), p.tolist()


def load_backbone(name: str):
    """(decoder in float32 on the CPU, tokenizer) of a backbone name (alias, folder or hub id)."""
    from safeedit.lm import load_model

    model, tokenizer = load_model(name, dtype="float32", device="cpu")
    return model.eval(), tokenizer


def train_pooled_judge(out_dir: str | Path, recipe: HeadRecipe | None = None, progress: bool = True,
                       score: bool = True, log=None) -> dict:
    """Fit a pooled judge by ``recipe`` and save it to ``out_dir`` (a judge folder ``SafetyJudge``
    loads) with its head files (``head.safetensors``, ``head.json``) and a model card.

    Features are cached under ``$SAFEEDIT_CACHE/judge-features``, so a killed run resumes where its
    last chunk ended and a second recipe on the same rows costs only the fit. Returns the report."""
    from safeedit.judge.pooled import from_decoder
    from safeedit.judge.train import ID2LABEL, build_splits, evaluate_predictions, format_scores, roc_auc
    from safeedit.lm.fingerprint import model_fingerprint

    recipe = recipe or HeadRecipe()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    start = time.perf_counter()
    splits = build_splits(recipe.data_config())
    if not splits.train or len({r.label for r in splits.train}) < 2:
        raise DataError(f"the training split needs both safe and unsafe rows (got {len(splits.train)} rows)")
    decoder, tokenizer = load_backbone(recipe.backbone)
    from safeedit.judge.pooled import set_head

    blank = {"score.weight": torch.zeros(2, decoder.config.hidden_size), "score.bias": torch.zeros(2)}
    judge = from_decoder(decoder, recipe.pool_layer, blank, ID2LABEL, **recipe.prompt_reading())  # head: after the fit
    del decoder
    fingerprint = model_fingerprint(judge.backbone)
    cache = FeatureCache(feature_cache_dir(fingerprint, recipe.pool_layer, recipe.max_length, recipe.prompt_tokens))

    def features(rows: list[JudgeRow]) -> np.ndarray:
        return pooled_features(judge, tokenizer, [r.response for r in rows], recipe.max_length, cache, progress=progress,
                               prompts=[r.prompt for r in rows] if recipe.prompt_tokens else None)

    train = splits.train
    reads = f", the prompt's last {recipe.prompt_tokens} tokens" if recipe.prompt_tokens else ""
    log(f"pooled judge: {len(train)} training rows, {len(splits.test)} held-out, {len(splits.validation)} validation; "
        f"backbone {recipe.backbone} layer {recipe.pool_layer}, {recipe.max_length} response tokens{reads}")
    t0 = time.perf_counter()
    x_train = features(train)
    feature_s = time.perf_counter() - t0
    weights = np.array([recipe.labels_weight if r.source.startswith("labels:") else 1.0 for r in train])
    t1 = time.perf_counter()
    head = fit_recipe_head(x_train, [r.label for r in train], recipe, sample_weight=weights)
    fit_s = time.perf_counter() - t1
    set_head(judge, head)

    def scored(rows: list[JudgeRow]) -> dict | None:
        if not rows:
            return None
        labels, p = head_predictions(features(rows), head)
        metrics = evaluate_predictions(rows, labels)
        auc = roc_auc([r.label for r in rows], p)
        metrics["overall"]["roc_auc"] = None if auc != auc else auc
        return metrics

    t2 = time.perf_counter()
    metrics = scored(splits.test) if score else None
    val_metrics = scored(splits.validation) if score else None
    eval_s = time.perf_counter() - t2
    if metrics:
        log(format_scores(metrics, "held-out split of the training pool:"))
    if val_metrics:
        log(format_scores(val_metrics, "labelled validation set:"))
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": "pooled", "with_prompt": bool(recipe.prompt_tokens), "recipe": asdict(recipe), "backbone_fingerprint": fingerprint,
        "counts": splits.counts | {"train_used": describe(train)},
        "metrics": metrics, "validation_metrics": val_metrics,
        "seconds": {"features": round(feature_s, 1), "fit": round(fit_s, 1), "eval": round(eval_s, 1),
                    "total": round(time.perf_counter() - start, 1)},
    }
    save_pooled_judge(out_dir, judge, tokenizer, recipe.max_length, report)
    log(f"saved pooled judge to {out_dir} ({report['seconds']['total']:.0f}s: features {feature_s:.0f}s, fit {fit_s:.1f}s)")
    return report | {"out_dir": str(out_dir)}


def judge_head(judge) -> dict[str, torch.Tensor]:
    """The ``score`` state dict of a pooled judge (what ``head.safetensors`` stores)."""
    return {f"score.{k}": v.detach().clone() for k, v in judge.score.state_dict().items()}


def save_head(folder: Path, head: dict[str, torch.Tensor], report: dict) -> None:
    """``head.safetensors`` (the ``score`` state dict) and ``head.json`` (the report) in ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.items()}, str(folder / "head.safetensors"))
    (folder / "head.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


def load_head(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(head state dict, report) of a head saved by :func:`save_head`."""
    from safetensors.torch import load_file

    from safeedit.errors import InputNotFoundError

    folder = Path(folder)
    for name in ("head.safetensors", "head.json"):
        if not (folder / name).is_file():
            raise InputNotFoundError(f"{folder} has no {name}: not a pooled judge head")
    tensors = load_file(str(folder / "head.safetensors"))
    report = json.loads((folder / "head.json").read_text())
    return tensors, report


def save_pooled_judge(out_dir: str | Path, judge, tokenizer, max_length: int, report: dict) -> None:
    """The judge folder, written whole or not at all: model + tokenizer (reading ``max_length``
    tokens), head files, ``training_report.json`` and the model card."""
    from safeedit.judge.model import CONFIG_KEY
    from safeedit.judge.train import _atomic_write

    out_dir = Path(out_dir).expanduser()
    info = {"with_prompt": bool(judge.config.prompt_tokens), "kind": "pooled", "backbone": report["recipe"]["backbone"],
            "pool_layer": report["recipe"]["pool_layer"], "head_hidden": judge.config.head_hidden,
            "train_max_length": max_length,
            "backbone_fingerprint": report["backbone_fingerprint"], "trained_by": report.get("trained_by", "safeedit judge fit-head"),
            "head_sha256": None}
    tokenizer = _judge_tokenizer(tokenizer, max_length)

    def write(folder: Path) -> None:
        save_head(folder, judge_head(judge), report)
        info["head_sha256"] = hashlib.sha256((folder / "head.safetensors").read_bytes()).hexdigest()
        judge.config.update({CONFIG_KEY: info})
        judge.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / "training_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (folder / "README.md").write_text(pooled_model_card(report, info))

    _atomic_write(out_dir, write)


def _judge_tokenizer(tokenizer, max_length: int):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = max_length  # SafetyJudge reads at most this many tokens, as in training
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _head_words(rec: dict) -> str:
    if not rec.get("head_hidden"):
        return "a linear head (a logistic regression on those features, standardisation folded in)"
    return (f"a head of one GELU hidden layer: {rec['head_members']} networks of {rec['head_hidden']} units "
            f"fitted from different seeds and averaged (merged into one layer of "
            f"{rec['head_members'] * rec['head_hidden']} units, standardisation folded in)")


def pooled_model_card(report: dict, info: dict) -> str:
    from safeedit.judge.train import DEFAULT_RECIPE, RECIPES_TRIED, _score_table

    rec = report["recipe"]
    default = asdict(HeadRecipe())
    which = (f"the default judge's recipe, **{DEFAULT_RECIPE}** in \"Recipes tried\" below"
             if all(rec.get(k) == v for k, v in default.items()) else "a recipe other than the default judge's")
    recipe_lines = "\n".join(f"  - `{k}` = {v!r}" for k, v in rec.items())
    val = report.get("validation_metrics")
    held = report.get("metrics")
    counts = report["counts"]["train_used"]
    count_lines = "\n".join(f"| {s} | {v['safe']} | {v['unsafe']} |" for s, v in counts.items())
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [safety, safeedit, judge]
---
# safeedit safety judge (pooled hidden states)

A safe/unsafe classifier for LLM responses, a stand-in for the SafeEdit paper's judge
(`zjunlp/SafeEdit-Safety-Classifier`). Labels: `0 = safe`, `1 = unsafe`; safeedit scores an empty
response 0.5.

- **Input:** the response text only (like the paper's judge), at most {info['train_max_length']} tokens.
- **Model:** the first {rec['pool_layer']} decoder layers of `{rec['backbone']}` (frozen; weights fingerprint
  `{report['backbone_fingerprint']}`), the mean of layer {rec['pool_layer']}'s output over the response's
  tokens, and {_head_words(rec)}. Decision: argmax.
- **Loading:** `model_type = "safeedit-pooled-judge"`; import `safeedit.judge` (which registers it with
  transformers' Auto classes), then `SafetyJudge.from_pretrained(folder)` or
  `AutoModelForSequenceClassification.from_pretrained(folder)`.
- **Made:** {report['created']} by {info['trained_by']}; features {report['seconds']['features']:.0f} s (rows not already in the feature cache), fit
  {report['seconds']['fit']:.1f} s on CPU. Head SHA-256 `{info['head_sha256']}`. Recipe: {which}
  (`HeadRecipe`):
{recipe_lines}

## Training rows

| source | safe | unsafe |
|---|---:|---:|
{count_lines}

## Scores on our labelled validation set (embedded-model responses to unseen questions, read by people)

{_score_table(val) if val else "(not scored)"}

## Held-out scores (pool split)

{_score_table(held) if held else "(not scored)"}

## Recipes tried

{RECIPES_TRIED}

## Limitations

A 135M-parameter backbone read frozen, and noisy crowd labels in part of the pool (GPTFuzz,
PKU-SafeRLHF): expect it to be less accurate than the paper's RoBERTa-large judge; use that one
where the hub is reachable. English only.
"""


__all__ = ["FeatureCache", "HeadRecipe", "balanced_weights", "feature_cache_dir", "fit_head", "fit_mlp_head", "fit_recipe_head",
           "head_logits", "head_predictions", "judge_head", "load_backbone", "load_head", "pooled_features", "save_head",
           "save_pooled_judge", "train_pooled_judge"]
