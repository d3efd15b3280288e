"""The default judge: a pooled judge (:mod:`safeedit.judge.pooled`) whose head ships with safeedit.

The head (``shipped/head.safetensors``, the ``score`` module's weights, and ``shipped/head.json``,
its recipe, backbone fingerprint and scores) was fitted once by ``safeedit judge fit-head``
(:func:`safeedit.judge.pooled_train.train_pooled_judge`); the backbone is the embedded chat model,
which every install has. :func:`build_default_judge` puts the two together into a judge folder
(no training: ~12 s on a 2-core CPU, most of it reading the backbone), so every machine scores with the same,
measured judge, and ``make demo`` trains nothing. The backbone's weights are checked against the
fingerprint the head was fitted on: a different conversion of the model fails loudly instead of
scoring with a head that does not fit it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

from safeedit.errors import InputNotFoundError
from safeedit.judge.model import CONFIG_KEY, JudgeError, default_judge_dir

SHIPPED_DIR = Path(__file__).resolve().with_name("shipped")
#: ``trained_by`` of a judge folder :func:`build_default_judge` wrote
BUILT_BY = "safeedit judge build (the head shipped with safeedit)"


def shipped_head_sha256() -> str:
    path = SHIPPED_DIR / "head.safetensors"
    if not path.is_file():
        raise InputNotFoundError(f"the shipped judge head is missing ({path}); reinstall safeedit")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def judge_info(folder: str | Path) -> dict | None:
    """The ``safeedit_judge`` block of a judge folder's config.json, or None (no folder / not ours)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get(CONFIG_KEY) or {}
    except json.JSONDecodeError:
        return {}


def is_shipped_default(folder: str | Path) -> bool:
    """True when ``folder`` holds the judge :func:`build_default_judge` makes from this install's head."""
    info = judge_info(folder)
    return bool(info) and info.get("head_sha256") == shipped_head_sha256()


def build_default_judge(out_dir: str | Path | None = None, log=None) -> Path:
    """Write the default judge (embedded backbone + shipped head) to ``out_dir`` (default:
    :func:`default_judge_dir`), whole or not at all; returns the folder."""
    import torch

    from safeedit.judge.pooled import from_decoder
    from safeedit.judge.pooled_train import HeadRecipe, load_backbone, load_head, save_pooled_judge
    from safeedit.judge.train import ID2LABEL
    from safeedit.lm.fingerprint import model_fingerprint

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir).expanduser() if out_dir is not None else default_judge_dir()
    head, report = load_head(SHIPPED_DIR)
    recipe = HeadRecipe.from_dict(report["recipe"])
    decoder, tokenizer = load_backbone(recipe.backbone)
    with torch.no_grad():
        judge = from_decoder(decoder, recipe.pool_layer, head, ID2LABEL, **recipe.prompt_reading())
    del decoder
    fingerprint = model_fingerprint(judge.backbone)
    if fingerprint != report["backbone_fingerprint"]:
        raise JudgeError(f"the shipped judge head was fitted on backbone weights {report['backbone_fingerprint']} "
                         f"but {recipe.backbone}'s first {recipe.pool_layer} layers here are {fingerprint}: a different "
                         f"model file or conversion; fit a head for it (`safeedit judge fit-head`)")
    save_pooled_judge(out, judge, tokenizer, recipe.max_length,
                      report | {"trained_by": BUILT_BY})
    log(f"built the default safety judge at {out} (backbone {recipe.backbone}, layer {recipe.pool_layer}, shipped head)")
    return out


def ensure_default_judge(log=None) -> Path:
    """The default judge folder, built from the shipped head when it holds no judge yet, or when it
    holds a default judge that an older install built from an older shipped head (ours to replace).

    A folder holding another judge (one you trained with ``safeedit judge train`` or ``fit-head``) is
    used as it is, with a warning that says how to switch."""
    folder = default_judge_dir()
    info = judge_info(folder)
    if info is None:
        return build_default_judge(folder, log=log)
    if info.get("head_sha256") != shipped_head_sha256():
        if info.get("trained_by") == BUILT_BY:
            (log or (lambda msg: print(msg, file=sys.stderr, flush=True)))(
                f"the default judge at {folder} was built from an older shipped head; rebuilding it from this install's")
            return build_default_judge(folder, log=log)
        logging.getLogger(__name__).warning(
            "the judge at %s is not this install's default judge (%s); `safeedit judge build --force` replaces it",
            folder, info.get("trained_by", "unknown origin"))
    return folder


__all__ = ["BUILT_BY", "SHIPPED_DIR", "build_default_judge", "ensure_default_judge", "is_shipped_default", "judge_info",
           "shipped_head_sha256"]
