"""How often two judges agree: the 2x2 table, raw agreement and Cohen's kappa.

Items: a run folder's responses (every instance's pre- and, for an edited run, post-edit
response to each evaluation input, with the input as the prompt) or a JSONL file of
``{"prompt": ..., "response": ...}`` records.

Only items both judges label 0 or 1 enter the table. A 0.5 label — an empty response (the
paper's rule) or a generative judge's unparsed reply — is neither safe nor unsafe, so such items
are counted apart (``excluded``) and each judge's unparsed count is reported.

Cohen's kappa = (p_o - p_e) / (1 - p_e), with p_o the share of items on which the two judges
agree and p_e the agreement expected by chance from each judge's own unsafe rate:
p_e = p_A(unsafe) p_B(unsafe) + p_A(safe) p_B(safe). When p_e = 1 (both judges give one and the
same label to every item) kappa is undefined and reported as NaN.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeedit.errors import DataError, InputNotFoundError


@dataclass
class Item:
    id: str  # where the item comes from: "<instance key>/<pre|post>/<input>" or "<file>:<line>"
    prompt: str | None
    response: str


def cohen_kappa(table: list[list[int]]) -> float:
    """Kappa from a 2x2 table ``table[a][b]`` = items judge A labelled ``a`` and judge B ``b`` (0 safe, 1 unsafe)."""
    n = sum(sum(row) for row in table)
    if n == 0:
        return float("nan")
    p_o = (table[0][0] + table[1][1]) / n
    a_unsafe = (table[1][0] + table[1][1]) / n
    b_unsafe = (table[0][1] + table[1][1]) / n
    p_e = a_unsafe * b_unsafe + (1 - a_unsafe) * (1 - b_unsafe)
    if math.isclose(p_e, 1.0):
        return float("nan")
    return (p_o - p_e) / (1 - p_e)


def agreement(labels_a: list[float], labels_b: list[float]) -> dict[str, Any]:
    """Table, rates, agreement and kappa over the items both judges labelled 0 or 1."""
    if len(labels_a) != len(labels_b):
        raise ValueError(f"got {len(labels_a)} labels from judge A and {len(labels_b)} from judge B")
    table = [[0, 0], [0, 0]]
    excluded = 0
    for a, b in zip(labels_a, labels_b):
        if a not in (0.0, 1.0) or b not in (0.0, 1.0):
            excluded += 1
            continue
        table[int(a)][int(b)] += 1
    n = sum(map(sum, table))
    return {
        "n": n, "excluded": excluded, "table": table,
        "unsafe_rate_a": (table[1][0] + table[1][1]) / n if n else float("nan"),
        "unsafe_rate_b": (table[0][1] + table[1][1]) / n if n else float("nan"),
        "agreement": (table[0][0] + table[1][1]) / n if n else float("nan"),
        "kappa": cohen_kappa(table),
    }


# --------------------------------------------------------------------------- items to judge
def items_from_jsonl(path: Path, field: str = "response", prompt_field: str = "prompt") -> list[Item]:
    from safeedit.data.jsonio import read_jsonl

    items = []
    for line_no, rec in read_jsonl(path):
        if not isinstance(rec.get(field), str):
            raise DataError(f"{path}:{line_no}: field {field!r} is missing or not a string")
        prompt = rec.get(prompt_field)
        if prompt is not None and not isinstance(prompt, str):
            raise DataError(f"{path}:{line_no}: field {prompt_field!r} is not a string")
        items.append(Item(f"{path.name}:{line_no}", prompt, rec[field]))
    return items


def items_from_run(folder: Path, need_prompts: bool, data_path: str | None = None) -> list[Item]:
    """Every judged response of a bench run folder; prompts from the SafeEdit data its run.json names.

    results.jsonl stores the responses; the prompts (the evaluation inputs) are the instances'
    ``eval_inputs()``, recovered by instance key from ``run.json``'s ``config.data`` (or
    ``data_path``). A run of method ``none`` has post = pre, so its responses count once.
    """
    from safeedit.data.jsonio import read_jsonl

    results = folder / "results.jsonl"
    if not results.is_file():
        raise InputNotFoundError(f"{folder} has no results.jsonl: not a bench run folder")
    run = {}
    if (folder / "run.json").is_file():
        run = json.loads((folder / "run.json").read_text())
    inputs_by_key: dict[str, dict[str, str]] = {}
    if need_prompts:
        source = data_path or (run.get("config") or {}).get("data")
        if not source:
            raise DataError(f"{folder}/run.json names no SafeEdit data: pass --safeedit PATH for the prompts")
        from safeedit.data import load_safeedit

        try:
            data = load_safeedit(source)
        except (FileNotFoundError, OSError) as exc:
            raise InputNotFoundError(f"the SafeEdit data of run {folder} ({source}) cannot be read: {exc}; "
                                    f"pass --safeedit PATH") from exc
        inputs_by_key = {inst.key: inst.eval_inputs() for inst in data}
    items = []
    for line_no, row in read_jsonl(results):
        key = row.get("key")
        if not isinstance(key, str):
            raise DataError(f"{results}:{line_no}: no instance key")
        if need_prompts and key not in inputs_by_key:
            raise DataError(f"{results}:{line_no}: instance {key} is not in the run's SafeEdit data "
                             f"({data_path or run.get('config', {}).get('data')})")
        stages = ["pre"] if row.get("method") == "none" else ["pre", "post"]
        for stage in stages:
            block = row.get(stage) or {}
            for name, cell in block.items():
                if name.startswith("_") or not isinstance(cell, dict):
                    continue
                if not isinstance(cell.get("response"), str):
                    raise DataError(f"{results}:{line_no}: {stage}.{name} has no response text")
                prompt = inputs_by_key[key].get(name) if need_prompts else None
                if need_prompts and prompt is None:
                    raise DataError(f"{results}:{line_no}: instance {key} has no input {name}")
                items.append(Item(f"{key}/{stage}/{name}", prompt, cell["response"]))
    if not items:
        raise DataError(f"{results} holds no responses")
    return items


def load_items(data: str, need_prompts: bool, data_path: str | None = None, field: str = "response",
               prompt_field: str = "prompt") -> list[Item]:
    path = Path(data)
    if path.is_dir():
        return items_from_run(path, need_prompts, data_path)
    if not path.is_file():
        raise InputNotFoundError(f"{data}: neither a run folder nor a JSONL file")
    items = items_from_jsonl(path, field, prompt_field)
    if need_prompts:
        missing = [it.id for it in items if it.prompt is None]
        if missing:
            raise DataError(f"{missing[0]}: field {prompt_field!r} is missing, and a generative judge reads "
                             f"the prompt ({len(missing)} records lack it)")
    return items


def format_report(name_a: str, name_b: str, stats: dict[str, Any], unparsed_a: int, unparsed_b: int,
                  total: int) -> str:
    t = stats["table"]
    width = max(len(name_a), len(name_b), 10)
    lines = [
        f"items: {total} ({stats['n']} labelled safe/unsafe by both; {stats['excluded']} excluded: an empty "
        f"response or an unparsed reply, labelled 0.5)",
        f"unparsed replies: A {unparsed_a}, B {unparsed_b}",
        f"A = {name_a}: unsafe rate {stats['unsafe_rate_a']:.3f}",
        f"B = {name_b}: unsafe rate {stats['unsafe_rate_b']:.3f}",
        f"agreement {stats['agreement']:.3f}   Cohen's kappa {stats['kappa']:.3f}",
        "",
        f"{'':<{width}}  B safe  B unsafe",
        f"{'A safe':<{width}}  {t[0][0]:6d}  {t[0][1]:8d}",
        f"{'A unsafe':<{width}}  {t[1][0]:6d}  {t[1][1]:8d}",
    ]
    return "\n".join(lines)
