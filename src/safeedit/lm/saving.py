"""Save a (detoxified) model as a Hugging Face folder that ``from_pretrained`` loads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safeedit.errors import OutputExistsError


def save_model(model, tokenizer, out_dir: str | Path, metadata: dict | None = None) -> Path:
    """Write safetensors weights, config, tokenizer and ``safeedit.json`` (what was done) atomically.

    The folder appears only once complete: a full disk or a kill leaves a ``.tmp-*`` folder
    beside it, never a half-written model under the requested name.
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} exists and is not empty; choose a new --out folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "safeedit.json").write_text(json.dumps(metadata or {}, indent=2, default=str))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
