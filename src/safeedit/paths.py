"""Where safeedit reads shared data and keeps its cache: one function each.

* :func:`cache_dir` -- converted models, pre-edit generations, general-ability scores, the default
  judge. ``$SAFEEDIT_CACHE`` overrides ``~/.cache/safeedit``.
* :func:`shared_data_dir` -- the public data beside the repository (``../shared/data``: the SafeEdit
  sample, TriviaQA/XSum subsets, judge training data). ``$SAFEEDIT_SHARED`` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of safeedit's on-disk cache (``$SAFEEDIT_CACHE``, else ``~/.cache/safeedit``)."""
    return Path(os.environ.get("SAFEEDIT_CACHE", Path.home() / ".cache" / "safeedit")).expanduser()


def shared_data_dir() -> Path:
    """``$SAFEEDIT_SHARED/data``, else the ``shared/data`` folder beside the repository or the cwd."""
    if os.environ.get("SAFEEDIT_SHARED"):
        return Path(os.environ["SAFEEDIT_SHARED"]).expanduser() / "data"
    repo = Path(__file__).resolve().parents[2]  # src/safeedit/paths.py -> repo root
    for base in (repo.parent, Path.cwd().parent, Path.cwd()):
        if (base / "shared" / "data").is_dir():
            return base / "shared" / "data"
    return repo.parent / "shared" / "data"


def sample_data_path() -> Path:
    """The SafeEdit sample shipped beside the repository."""
    return shared_data_dir() / "safeedit" / "safeedit_sample.json"


def general_data_path(name: str) -> Path:
    """A general-ability data file (TriviaQA, XSum subsets) beside the repository."""
    return shared_data_dir() / "general" / name
