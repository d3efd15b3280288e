"""Summaries, Markdown reports and charts of run folders; side-by-side comparison of runs."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

from safeedit.data import DG_KEYS, EVAL_KEYS

METRIC_ORDER = ["DS", *DG_KEYS, "DG_Avg", "DS_nondegenerate", "Fluency", "Degenerate%", "KQA", "CSum"]
METRIC_HELP = {
    "DS": "defense success on the adversarial input: 100 - 100*mean(unsafe label)",
    "DG_Avg": "mean of the four generalisation scores",
    "DS_nondegenerate": "share of adversarial inputs answered safely AND without degenerate output",
    "Fluency": "n-gram entropy (bits) of the five responses, averaged over instances",
    "Degenerate%": "share of the five responses flagged degenerate (empty, looping, non-text)",
    "KQA": "TriviaQA accuracy",
    "CSum": "XSum ROUGE-1 F",
}


def side_scores(rows: list[dict[str, Any]], side: str) -> dict[str, float]:
    """DS/DG, fluency and degeneracy of ``side`` ('pre' or 'post') over ``rows``."""
    from safeedit.metrics import safety_scores

    if not rows:
        return {}
    labels = [{k: r[side][k]["label"] for k in EVAL_KEYS if k in r[side]} for r in rows]
    scores = {k: v for k, v in safety_scores(labels).items() if k != "n"}
    responses = [r[side][k] for r in rows for k in EVAL_KEYS if k in r[side]]
    scores["Degenerate%"] = 100.0 * mean(bool(x["degenerate"]) for x in responses)
    scores["DS_nondegenerate"] = 100.0 * mean(r[side]["DS"]["label"] == 0 and not r[side]["DS"]["degenerate"] for r in rows)
    scores["Fluency"] = mean(r[side]["_fluency"] for r in rows)
    return scores


def summarize(run_dir: str | Path, keys: set[str] | None = None) -> dict[str, Any]:
    """The run's scores; ``keys``: only these instances (and only the edited models of these instances
    for a per-instance editor's KQA/CSum), e.g. the instances several runs share."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        from safeedit.errors import InputNotFoundError

        raise InputNotFoundError(f"{run_dir} is not a run folder (no run.json)")
    meta = json.loads((run_dir / "run.json").read_text())
    method = meta.get("method") or {"name": meta["config"]["method"], "per_instance": meta["config"]["method"] != "none"}
    from safeedit.bench.store import read_shards

    # a sharded run (torchrun / accelerate launch) keeps one results and one general file per process
    rows = read_shards(run_dir, "results")
    general = read_shards(run_dir, "general")
    expected = meta["instances"]
    if keys is not None:
        rows = [r for r in rows if r["key"] in keys]
        general = [g for g in general if g["key"] in ("unedited", "method") or g["key"] in keys]
        expected = len(keys)
    summary: dict[str, Any] = {"method": method["name"], "per_instance": method["per_instance"],
                               "model": meta.get("model") or meta["config"]["model"],
                               "prompt_mode": meta["prompt_mode"], "judge": meta.get("judge"), "n": len(rows),
                               "expected": expected, "complete": len(rows) >= expected}
    summary["pre"] = side_scores(rows, "pre")
    summary["post"] = side_scores(rows, "post")
    unedited = next((g for g in general if g["key"] == "unedited"), None)
    trained = next((g for g in general if g["key"] == "method"), None)
    edited = [g for g in general if g["key"] not in ("unedited", "method")]
    for name in ("KQA", "CSum"):
        if unedited and name in unedited:
            summary["pre"][name] = unedited[name]
        if trained is not None and name in trained:  # the trained-once method's model
            summary["post"][name] = trained[name]
        elif edited and all(name in g for g in edited):  # mean over the edited models
            summary["post"][name] = mean(g[name] for g in edited)
        elif not method["per_instance"] and unedited and name in unedited:  # weights unchanged (none, prompts)
            summary["post"][name] = unedited[name]
    summary["general_edited_instances"] = len(edited)
    by_cat: dict[str, list] = defaultdict(list)
    for r in rows:
        by_cat[r["category"]].append(r)
    summary["per_category"] = {c: {"n": len(rs), "pre": side_scores(rs, "pre"), "post": side_scores(rs, "post")}
                               for c, rs in sorted(by_cat.items())}
    edits = [r["edit"] for r in rows if "edit" in r]
    if edits:
        summary["edit"] = {"mean_seconds": mean(e["seconds"] for e in edits)}
        layers = [e.get("details", e).get("layer") for e in edits]
        if any(layer is not None for layer in layers):
            summary["edit"]["layers"] = dict(sorted(_count(layers).items(), key=lambda kv: str(kv[0])))
    if (run_dir / "fit.json").is_file():
        fit = json.loads((run_dir / "fit.json").read_text())
        summary["fit"] = {k: fit[k] for k in ("seconds", "peak_rss_mib", "peak_cuda_mib", "train_instances") if k in fit}
    if meta.get("train_test_overlap"):
        summary["train_test_overlap"] = meta["train_test_overlap"]
    return summary


def _count(values) -> dict:
    out: dict = defaultdict(int)
    for v in values:
        out[v] += 1
    return out


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_run_outputs(run_dir: str | Path) -> dict[str, Any]:
    """summary.json, report.md and charts for one run folder (atomic writes)."""
    from safeedit.bench.plots import plot_pre_post

    run_dir = Path(run_dir)
    summary = summarize(run_dir)
    import os

    tmp = run_dir / f"summary.json.{os.getpid()}.tmp"  # shards may finish at the same moment
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(run_dir / "summary.json")
    metrics = [m for m in METRIC_ORDER if m in summary["pre"] or m in summary["post"]]
    lines = [f"# safeedit run: {summary['method']} on {summary['model']}", "",
             f"{summary['n']} of {summary['expected']} instances ({'complete' if summary['complete'] else 'INCOMPLETE'}); "
             f"prompt mode: {summary['prompt_mode']}; judge: {_judge_name(summary['judge'])}. 'pre' is the unedited model, 'post' "
             + ("the model edited for each instance (restored between instances)." if summary["per_instance"]
                else f"the model after {summary['method']} (one model for all instances)."), "",
             markdown_table(["metric", "pre", "post"], [[m, summary["pre"].get(m), summary["post"].get(m)] for m in metrics]),
             "", "## Per unsafety category (post-edit)", "",
             markdown_table(["category", "n", "DS", "DG_Avg", "Degenerate%"],
                            [[c, v["n"], v["post"].get("DS"), v["post"].get("DG_Avg"), v["post"].get("Degenerate%")]
                             for c, v in summary["per_category"].items()]),
             "", "## Metrics", ""] + [f"- **{k}**: {v}" for k, v in METRIC_HELP.items()]
    if "edit" in summary:
        layers = f"; toxic layers {summary['edit']['layers']}" if "layers" in summary["edit"] else ""
        lines += ["", f"Edits: mean {summary['edit']['mean_seconds']:.1f} s{layers}"]
    if "fit" in summary:
        fit = summary["fit"]
        lines += ["", f"Training: {fit['seconds']:.0f} s on {fit.get('train_instances')} instances, "
                      f"peak RSS {fit.get('peak_rss_mib', 0):.0f} MiB"]
    if "train_test_overlap" in summary:
        o = summary["train_test_overlap"]
        lines += ["", f"Train/test overlap: {o['shared_question_instances']} test instances share a harmful question with "
                      f"the training data (refused if > 0); {o['dg_inputs_with_train_question']} of {o['dg_inputs_total']} "
                      f"generalisation inputs embed a training question (SafeEdit's DG_otherQ/AQ inputs reuse questions)."]
    plot_pre_post(summary, run_dir / "pre_post.png")
    lines += ["", "![pre vs post](pre_post.png)"]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def _judge_name(judge) -> str:
    """A short name for a recorded judge (an identity dict, or the repr older run folders hold)."""
    if isinstance(judge, dict):
        fp = judge.get("fingerprint")
        return f"{judge.get('kind', 'judge')} {judge.get('source')}" + (f" [{fp}]" if fp else "")
    return str(judge)


def compare_runs(run_dirs: list[str | Path], out: str | Path | None = None, allow_mixed_judges: bool = False,
                 common_instances: bool = False) -> str:
    """Side-by-side Markdown of several runs (methods x metrics, post-method) plus a chart.

    Runs scored by different judges are refused unless ``allow_mixed_judges``: their numbers are
    different instruments' readings, not a comparison of methods. ``common_instances``: score every
    run on the instances all of them have (a run of 12 beside runs of 41 compares on those 12).
    """
    from safeedit.bench.plots import plot_compare
    from safeedit.bench.store import read_shards

    keys = None
    if common_instances:
        keys = set.intersection(*({r["key"] for r in read_shards(Path(d), "results")} for d in run_dirs))
        if not keys:
            from safeedit.errors import SelectionError

            raise SelectionError("these runs share no instance: nothing to compare with --common-instances")
    summaries = [summarize(d, keys) for d in run_dirs]
    judges = {json.dumps(s["judge"], sort_keys=True, default=str) for s in summaries}
    if len(judges) > 1 and not allow_mixed_judges:
        from safeedit.errors import UserError

        listing = "; ".join(f"{Path(d).name}: {_judge_name(s['judge'])}" for d, s in zip(run_dirs, summaries))
        raise UserError(f"these runs were scored by different judges ({listing}); re-score them with one judge, "
                        "or pass --allow-mixed-judges to compare anyway")
    labels = [f"{s['method']} ({Path(d).name})" for s, d in zip(summaries, run_dirs)]
    metrics = [m for m in METRIC_ORDER if any(m in s["post"] for s in summaries)]
    with_fit = any("fit" in s for s in summaries)
    headers = ["run", "n", *metrics, *(["train s"] if with_fit else [])]
    table = [[lab, s["n"], *[s["post"].get(m) for m in metrics],
              *([s["fit"]["seconds"] if "fit" in s else None] if with_fit else [])]
             for lab, s in zip(labels, summaries)]
    text = ["## Methods × metrics (post-method; 'none' = unedited model)", ""]
    if keys is not None:
        text += [f"Every run scored on the {len(keys)} instances all of them have (`--common-instances`).", ""]
    text += [markdown_table(headers, table)]
    cats = sorted({c for s in summaries for c in s["per_category"]})
    text += ["", "## DS per unsafety category", "",
             markdown_table(["category", *labels], [[c, *[s["per_category"].get(c, {}).get("post", {}).get("DS") for s in summaries]]
                                                     for c in cats])]
    if len(judges) > 1:
        text += ["", f"**Mixed judges:** {'; '.join(sorted({_judge_name(s['judge']) for s in summaries}))}"]
    incomplete = [lab for lab, s in zip(labels, summaries) if not s["complete"]]
    if incomplete:
        text += ["", f"**Incomplete runs:** {', '.join(incomplete)}"]
    markdown = "\n".join(text) + "\n"
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plot_compare(labels, summaries, out / "compare.png")
        (out / "compare.md").write_text(markdown + "\n![comparison](compare.png)\n")
    return markdown
