"""Load SafeEdit instances from a JSON/JSONL file, a folder of split files, or a Hugging Face dataset id."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from safeedit.data.jsonio import read_json_list
from safeedit.errors import InputNotFoundError, SelectionError
from safeedit.data.schema import SafeEditInstance
from safeedit.data.validation import RecordProblem, SafeEditValidationError, check_record, to_instance

#: file-name fragments that name a split, in SafeEdit's naming (SafeEdit_train.json, ...)
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "dev"), "test": ("test",)}


@dataclass
class SafeEditData:
    instances: list[SafeEditInstance]
    problems: list[RecordProblem] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> SafeEditInstance:
        return self.instances[index]

    def select(self, indices: Iterable[int] | None = None, limit: int | None = None,
               where: str = "data") -> list[SafeEditInstance]:
        """The instances at ``indices`` (all when None), then the first ``limit`` of them.

        An index outside the data is a :class:`~safeedit.errors.SelectionError` naming ``where``.
        """
        chosen = self.instances
        if indices is not None:
            indices = list(indices)
            bad = [i for i in indices if not 0 <= i < len(self.instances)]
            if bad:
                raise SelectionError(f"index {bad[0]} out of range: {where} has {len(self.instances)} records "
                                     f"(valid 0..{len(self.instances) - 1})")
            chosen = [self.instances[i] for i in indices]
        if limit is not None:
            if limit < 0:
                raise SelectionError(f"limit must be >= 0, got {limit}")
            chosen = chosen[:limit]
        return list(chosen)

    def __iter__(self):
        return iter(self.instances)

    @property
    def edit_only_count(self) -> int:
        return sum(inst.edit_only for inst in self.instances)

    def stats(self) -> dict[str, Any]:
        return {
            "records": len(self.instances),
            "sources": self.sources,
            "categories": dict(sorted(Counter(i.category for i in self.instances).items())),
            "attack_names": dict(sorted(Counter(i.attack_name or "<none>" for i in self.instances).items())),
            "distinct_questions": len({i.question for i in self.instances}),
            "edit_only_records": self.edit_only_count,
            "without_unsafe_response": sum(i.unsafe_response is None for i in self.instances),
        }


def read_records(path: Path) -> list[Any]:
    """Raw records of one .json (a list, or an object with a list under 'data') or .jsonl file."""
    return read_json_list(path, "data")


def build(records: Iterable[Any], source: str) -> tuple[list[SafeEditInstance], list[RecordProblem]]:
    instances, problems = [], []
    for position, record in enumerate(records):
        found = check_record(record, position, source)
        if found:
            problems.extend(found)
        else:
            instances.append(to_instance(record, position, source))
    return instances, problems


def _split_files(folder: Path, split: str | None) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
    if split is None:
        return files
    fragments = SPLIT_ALIASES.get(split, (split,))
    chosen = [p for p in files if any(f in p.stem.lower().replace("-", "_").split("_") for f in fragments)]
    if not chosen:
        raise InputNotFoundError(f"no file for split {split!r} in {folder} (files: {[p.name for p in files]})")
    return chosen


def _hub_records(dataset_id: str, split: str | None) -> list[tuple[str, list[dict]]]:
    """Records through the ``datasets`` library: a hub id, or a local folder laid out like one."""
    import datasets

    loaded = datasets.load_dataset(dataset_id, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        return [(f"{dataset_id}:{name}", list(part)) for name, part in loaded.items()]
    return [(f"{dataset_id}:{split}", list(loaded))]


def load_safeedit(path_or_id: str | Path, split: str | None = None, strict: bool = True) -> SafeEditData:
    """Load SafeEdit instances.

    ``path_or_id`` is a .json/.jsonl file, a folder of split files (``split`` picks one, else all),
    or a Hugging Face dataset id such as ``zjunlp/SafeEdit``. With ``strict`` (default) any invalid
    record raises :class:`SafeEditValidationError` listing every problem; otherwise invalid records
    are skipped and reported in ``.problems``.
    """
    path = Path(path_or_id).expanduser()
    if path.is_file():
        parts = [(path.name, read_records(path))]
    elif path.is_dir():
        parts = [(p.name, read_records(p)) for p in _split_files(path, split)]
    elif str(path_or_id).startswith((".", "/", "~")) or path.suffix in (".json", ".jsonl"):
        raise InputNotFoundError(f"SafeEdit data not found: {path_or_id}")
    else:
        parts = _hub_records(str(path_or_id), split)
    return from_parts(parts, strict=strict)


def from_parts(parts: list[tuple[str, list[Any]]], strict: bool = True) -> SafeEditData:
    data = SafeEditData(instances=[], sources=[name for name, _ in parts])
    for name, records in parts:
        instances, problems = build(records, name)
        data.instances.extend(instances)
        data.problems.extend(problems)
    if strict and data.problems:
        raise SafeEditValidationError(data.problems)
    return data
