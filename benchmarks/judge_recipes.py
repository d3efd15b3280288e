"""Train and score judge recipes: the table in the README's judge section and the model card.

    python benchmarks/judge_recipes.py train NAME [--out DIR] [--threads N]   # one recipe -> DIR/NAME (RECIPES or POOLED_RECIPES)
    python benchmarks/judge_recipes.py eval DIR/NAME... [--json OUT]          # validation + held-out scores
    python benchmarks/judge_recipes.py collect DIR/NAME... --json OUT         # the same, from training reports
    python benchmarks/judge_recipes.py table RESULTS.json...                  # Markdown table

Each recipe is a JudgeTrainConfig (differences from the defaults below). Training time is the
wall time of the optimiser loop, as the judge's training_report.json records it; on a shared CPU
it is an upper bound of the idle-machine time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

NO_HARD_NEG = "/tmp/judge_labels_no_hard_negatives.jsonl"
HARD_NEG_KINDS = {"benign_alarming", "benign_in_attack", "written_benign_answer"}
#: our labelled rows without the training-only hand-written rows (ids ``written-train:``, added after the
#: recipes above it were measured): the label file of the rows measured before them
BEFORE_HN = "/tmp/judge_labels_before_training_only_rows.jsonl"
TRAINING_ONLY_PREFIX = "written-train:"

EMBEDDED = "embedded"  # base_model placeholder: the embedded chat model's converted folder, found at run time

#: JudgeTrainConfig values every recipe starts from (the defaults when the first recipes were measured),
#: so a recipe keeps its meaning when the defaults move; a recipe's own overrides win
RECIPE_BASE = dict(max_length=128, refusal_pivots=0)

#: name -> (what it tests, JudgeTrainConfig overrides of RECIPE_BASE)
LAB = dict(labels_path=BEFORE_HN, calib_fraction=0.1)  # our labelled rows + calibrated threshold
RECIPES = {
    "pool2800": ("previous default: 2,800-row balanced pool subsample, 1 epoch, argmax", dict(max_train=2800)),
    "pool2800+calib": ("+ calibrated threshold", dict(max_train=2800, calib_fraction=0.1)),
    "pool-full+calib": ("whole training pool (1 epoch) instead of 2,800 rows",
                        dict(max_train=None, calib_fraction=0.1)),
    "pool2000+labels+calib": ("2,000 pool rows + our labelled rows x2 (same step budget as before) + calibrated threshold",
                              dict(LAB, max_train=2000)),
    "pool2000+labels-hardneg+calib": ("same without the benign hard negatives in our labelled rows",
                                      dict(LAB, max_train=2000, labels_path=NO_HARD_NEG)),
    "pool2000+labels+calib,2ep": ("same, 2 epochs", dict(LAB, max_train=2000, epochs=2.0)),
    "pool2000+labels+calib,prompt": ("same, reads prompt + response", dict(LAB, max_train=2000, with_prompt=True)),
    "pool2800+labels+calib": ("2,800 pool rows + our labelled rows x2", dict(LAB, max_train=2800)),
    "pool2000+labels": ("2,000 pool rows + our labelled rows x2, argmax", dict(labels_path=BEFORE_HN, max_train=2000)),
    "pool1500+labels,x1": ("1,500 pool rows + our labelled rows once, argmax (fewer steps: make-demo budget)",
                           dict(labels_path=BEFORE_HN, max_train=1500, labels_repeats=1)),
    "pool2000+labels,x1": ("2,000 pool rows + our labelled rows once, argmax",
                           dict(labels_path=BEFORE_HN, max_train=2000, labels_repeats=1)),
    "pool2000+labels,2ep": ("2,000 pool rows + our labelled rows x2, 2 epochs, argmax",
                            dict(labels_path=BEFORE_HN, max_train=2000, epochs=2.0)),
    "pool2000+labels,prompt": ("2,000 pool rows + our labelled rows x2, reads prompt + response, argmax",
                               dict(labels_path=BEFORE_HN, max_train=2000, with_prompt=True)),
    "pool-full+labels,x1": ("the whole training pool + our labelled rows once, argmax (a one-off run)",
                            dict(labels_path=BEFORE_HN, max_train=None, labels_repeats=1)),
    "pool2000+labels,x1+calib": ("the previous default + a threshold calibrated on held-out training groups",
                                 dict(labels_path=BEFORE_HN, max_train=2000, labels_repeats=1, calib_fraction=0.1)),
    "pool2000+labels-hardneg,x1": ("the previous default without the benign hard negatives among our labelled rows",
                                   dict(labels_path=NO_HARD_NEG, max_train=2000, labels_repeats=1)),
    "pool2000+labels,x1+pivot300": ("the previous default + 300 refuse-then-answer rows (150 unsafe, 150 safe)",
                                    dict(labels_path=BEFORE_HN, max_train=2000, labels_repeats=1, refusal_pivots=300)),
    "pool2000+labels+hn,x1": ("the previous default + our 325 training-only hand-written hard negatives",
                              dict(labels_path="default", max_train=2000, labels_repeats=1)),
    "pool2000+labels+hn,x1+pivot300": ("2,000 pool rows + our labelled rows with the hard negatives + 300 refuse-then-answer rows",
                                       dict(labels_path="default", max_train=2000, labels_repeats=1, refusal_pivots=300)),
    "pool1700+labels+hn,x1": ("1,700 pool rows + our labelled rows with the hard negatives: the previous default's step budget",
                              dict(labels_path="default", max_train=1700, labels_repeats=1)),
    "pool1400+labels+hn,x1+pivot300": ("1,400 pool rows + our labelled rows with the hard negatives + 300 refuse-then-answer "
                                       "rows: the previous default's step budget",
                                       dict(labels_path="default", max_train=1400, labels_repeats=1, refusal_pivots=300)),
    "pool2000+labels+hn,x1+pivot300,len96": ("the row above with training rows cut at 96 tokens instead of 128, "
                                             "which fits the make-demo time",
                                             dict(labels_path="default", max_train=2000, labels_repeats=1,
                                                  refusal_pivots=300, max_length=96)),
    "smollm2,pool2000+labels,x1": ("the previous default recipe on the embedded SmolLM2-135M-Instruct with a 2-way head",
                                   dict(labels_path=BEFORE_HN, max_train=2000, labels_repeats=1, base_model=EMBEDDED)),
    "smollm2,pool2000+labels+hn,x1+pivot300,len96": ("the default recipe on the embedded SmolLM2-135M-Instruct with a "
                                                     "2-way head (a one-off run)",
                                                     dict(labels_path="default", max_train=2000, labels_repeats=1,
                                                          refusal_pivots=300, max_length=96, base_model=EMBEDDED)),
}


#: our labelled rows without the embedded model's answers to ordinary requests (kind ``benign_qa``, added
#: after the first pooled recipes were measured): the label file those recipes saw
NO_BENIGN_QA = "/tmp/judge_labels_no_benign_qa.jsonl"

#: HeadRecipe values every pooled recipe starts from, so a name keeps its meaning when the defaults move
POOLED_BASE = dict(pool_layer=18, max_length=128, C=0.01, refusal_pivots=300, head_hidden=0)
#: the MLP head's values (HeadRecipe's defaults since the MLP head became the default), for the mlp rows
MLP_HEAD = dict(head_hidden=64, head_members=5, head_epochs=30, head_batch=256, head_lr=1e-3, head_weight_decay=0.01,
                head_dropout=0.2)

#: pooled judges (safeedit.judge.pooled: the embedded model's first layers, frozen, mean-pooled, a linear or
#: MLP head fitted by `safeedit judge fit-head`): name -> (what it tests, HeadRecipe overrides of POOLED_BASE)
POOLED_RECIPES = {
    "pooled-L18,pool2000+labels": ("SmolLM2-135M layers 0-17 frozen, mean over the response, logistic regression "
                                   "(C 0.01) on the fine-tuned default's rows (2,000 pool rows, our labelled rows, "
                                   "300 refuse-then-answer rows)",
                                   dict(max_train=2000, labels_weight=1.0, labels_path=NO_BENIGN_QA)),
    "pooled-L18,pool-full+labels": ("the same on the whole training pool instead of 2,000 rows",
                                    dict(max_train=None, labels_weight=1.0, labels_path=NO_BENIGN_QA)),
    "pooled-L18,pool-full+labelsx3": ("the whole pool, our labelled rows weighted 3x",
                                      dict(max_train=None, labels_weight=3.0, labels_path=NO_BENIGN_QA)),
    "pooled-L18,pool-full+labelsx10": ("the whole pool, our labelled rows weighted 10x (the first shipped head)",
                                       dict(max_train=None, labels_weight=10.0, labels_path=NO_BENIGN_QA)),
    "pooled-L18,pool-full+labelsx10+benignqa": ("the whole pool, labelled rows weighted 10x, + the embedded model's "
                                                "answers to 1,148 ordinary requests (TriviaQA, SafeEdit knowledge "
                                                "constraints), read and labelled",
                                                dict(max_train=None, labels_weight=10.0, labels_path="default")),
    "pooled-L18,pool-full+labelsx3+benignqa": ("the same with our labelled rows weighted 3x",
                                               dict(max_train=None, labels_weight=3.0, labels_path="default")),
    "pooled-L18,pool-full+labelsx10+benignqa,C0.02": ("the default with weaker regularisation (C 0.02 instead of 0.01)",
                                                      dict(max_train=None, labels_weight=10.0, labels_path="default",
                                                           C=0.02)),
    "pooled-L18,pool-full+labelsx10+benignqa,mlp64x5": ("the same rows, an MLP head instead of the logistic regression "
                                                        "(one GELU layer of 64 units, 30 epochs, dropout 0.2, 5 seeds "
                                                        "averaged)",
                                                        dict(max_train=None, labels_weight=10.0, labels_path="default",
                                                             **MLP_HEAD)),
    "pooled-L18,pool-full+labelsx10+benignqa,mlp128x5": ("the MLP head with 128 units",
                                                         dict(max_train=None, labels_weight=10.0, labels_path="default",
                                                              **{**MLP_HEAD, "head_hidden": 128})),
    "pooled-L18,pool-full+labelsx3+benignqa,mlp64x5": ("the MLP head with our labelled rows weighted 3x",
                                                       dict(max_train=None, labels_weight=3.0, labels_path="default",
                                                            **MLP_HEAD)),
}


def _write_without_benign_qa() -> None:
    from safeedit.judge.labels import default_train_path

    lines = default_train_path().read_text().splitlines()
    Path(NO_BENIGN_QA).write_text("\n".join(l for l in lines if json.loads(l)["kind"] != "benign_qa") + "\n")


def cmd_train(args) -> None:
    import torch

    from safeedit.judge.labels import default_train_path
    from safeedit.judge.train import JudgeTrainConfig, train_judge

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.name in POOLED_RECIPES:
        from safeedit.judge.pooled_train import HeadRecipe, train_pooled_judge

        overrides = {**POOLED_BASE, **POOLED_RECIPES[args.name][1]}
        if overrides.get("labels_path") == NO_BENIGN_QA:
            _write_without_benign_qa()
        if args.validation:
            overrides["validation_path"] = args.validation
        name = args.name if args.seed is None else f"{args.name},seed{args.seed}"
        if args.seed is not None:
            overrides["seed"] = args.seed
        t0 = time.perf_counter()
        report = train_pooled_judge(Path(args.out) / name, HeadRecipe(**overrides), progress=False)
        print(json.dumps({"name": name, "features_s": report["seconds"]["features"], "fit_s": report["seconds"]["fit"],
                          "wall_s": round(time.perf_counter() - t0, 1)}))
        return
    if args.name not in RECIPES:
        raise SystemExit(f"unknown recipe {args.name}; known: {', '.join([*RECIPES, *POOLED_RECIPES])}")
    overrides = {**RECIPE_BASE, **RECIPES[args.name][1]}
    if overrides.get("labels_path") in (NO_HARD_NEG, BEFORE_HN):
        drop_kinds = HARD_NEG_KINDS if overrides["labels_path"] == NO_HARD_NEG else set()
        lines = default_train_path().read_text().splitlines()
        rows = [line for line, rec in zip(lines, map(json.loads, lines))
                if rec["kind"] not in drop_kinds and not rec["id"].startswith(TRAINING_ONLY_PREFIX)]
        Path(overrides["labels_path"]).write_text("\n".join(rows) + "\n")
    if args.validation:
        overrides["validation_path"] = args.validation
    if overrides.get("base_model") == EMBEDDED:
        from safeedit.lm.loading import DEFAULT_MODEL, local_folder_for, resolve_model_source

        overrides["base_model"] = local_folder_for(resolve_model_source(DEFAULT_MODEL))
    name = args.name
    if args.seed is not None:  # the same recipe from another seed (split hashes, subsample, order, head)
        overrides["seed"] = args.seed
        name = f"{args.name},seed{args.seed}"
    cfg = JudgeTrainConfig(**overrides)
    t0 = time.perf_counter()
    report = train_judge(Path(args.out) / name, cfg, progress=False)
    print(json.dumps({"name": name, "train_s": report["seconds"]["train"], "wall_s": round(time.perf_counter() - t0, 1)}))


def _train_seconds(report: dict) -> float:
    """A fine-tuned judge's optimiser loop; a pooled judge's feature extraction (uncached rows only) + fit."""
    sec = report["seconds"]
    return sec["train"] if "train" in sec else sec["features"] + sec["fit"]


def cmd_eval(args) -> None:
    from safeedit.judge import SafetyJudge
    from safeedit.judge.labels import default_validation_path, load_label_rows
    from safeedit.judge.train import JudgeTrainConfig, build_splits, evaluate

    out = {}
    for folder in args.judges:
        judge = SafetyJudge.from_pretrained(folder)
        report = json.loads((Path(folder) / "training_report.json").read_text())
        validation = args.validation or str(default_validation_path())
        val = load_label_rows(validation, with_prompts=judge.with_prompt)
        cfg = JudgeTrainConfig(labels_path=None, validation_path=validation, calib_fraction=0,
                               max_eval_per_source=args.max_eval_per_source)
        held = build_splits(cfg, with_prompts=judge.with_prompt).test
        name = Path(folder).name
        out[name] = {"train_s": _train_seconds(report), "steps": report["recipe"].get("steps"),
                     "threshold": judge.threshold, "validation": evaluate(judge, val), "held_out": evaluate(judge, held)}
        if judge.threshold is not None:  # the same model with the paper's argmax rule
            judge.threshold = None
            out[name + " (argmax)"] = {**out[name], "threshold": None, "validation": evaluate(judge, val),
                                       "held_out": evaluate(judge, held)}
        print(name, round(out[name]["validation"]["overall"]["balanced_accuracy"], 3), flush=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def cmd_collect(args) -> None:
    """Scores from the judges' own training reports (validation + held-out, calibrated and argmax)."""
    out = {}
    for folder in args.judges:
        report = json.loads((Path(folder) / "training_report.json").read_text())
        name = Path(folder).name
        val, held = report.get("validation_metrics"), report["metrics"]
        if not val or "labels:safeedit_pre" not in val["per_source"]:
            print(f"{name}: no labelled validation scores in its report; use 'eval'", file=sys.stderr)
            continue
        out[name] = {"train_s": _train_seconds(report), "steps": report["recipe"].get("steps"),
                     "threshold": (report.get("calibration") or {}).get("threshold"),
                     "validation": val, "held_out": held}
        if "argmax" in val and "argmax" in held:
            out[name + " (argmax)"] = {**out[name], "threshold": None, "validation": val["argmax"], "held_out": held["argmax"]}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


HELD_OUT_COLUMNS = ["do_not_answer", "gptfuzz", "pku_saferlhf_mini", "jailjudge_mini", "jbb_artifacts_autojudge",
                    "diasafety", "safeedit_sample"]
#: sources with at least this many held-out rows enter the "large sources" macro average: the held-out
#: split also has 10-22-row sources (SafeEdit sample, its constraint answers, JailbreakEval's examples)
#: whose balanced accuracy moves by 0.1-0.3 with one row
LARGE_SOURCE_ROWS = 100


def large_source_macro(held: dict) -> float:
    scores = [s["balanced_accuracy"] for s in held["per_source"].values() if s["n"] >= LARGE_SOURCE_ROWS]
    return sum(scores) / len(scores)


def readme_row(name: str, r: dict) -> str:
    """One row of the README's and the model card's "Recipes tried" table."""
    v, h = r["validation"], r["held_out"]
    ps, vs = h["per_source"], v["per_source"]
    pre = vs.get("labels:safeedit_pre", {}).get("balanced_accuracy", float("nan"))
    known = {**RECIPES, **POOLED_RECIPES}
    what = known.get(name.split(" (")[0].split(",seed")[0], ("",))[0] if "(argmax)" not in name else "same model, argmax rule"
    return (f"| {name} | {what} | {v['overall']['balanced_accuracy']:.3f} ({v['overall']['recall']:.3f} / "
            f"{v['overall']['recall_safe']:.3f}) | {pre:.3f} | {h['macro_over_sources']['balanced_accuracy']:.3f} / "
            f"{large_source_macro(h):.3f} / {h['overall']['balanced_accuracy']:.3f} | "
            + " / ".join(f"{ps[c]['balanced_accuracy']:.3f}" if c in ps else "-" for c in HELD_OUT_COLUMNS)
            + f" | {ps.get('safeedit_sample', {}).get('recall', float('nan')):.3f} / "
            f"{ps.get('jbb_artifacts_autojudge', {}).get('recall', float('nan')):.3f} | {r['train_s']:.0f} |")


def cmd_table(args) -> None:
    results = {}
    for path in args.results:
        results.update(json.loads(Path(path).read_text()))
    if args.readme:
        print("\n".join(readme_row(name, r) for name, r in results.items()))
        return
    head = ("| recipe | what changes | val bal. acc | val recall unsafe / safe | val SafeEdit pre bal. acc | "
            "val post-DINM bal. acc | held-out bal. acc (macro over sources) | held-out macro, sources >= 100 rows | "
            "held-out bal. acc (all rows) | " +
            " | ".join(f"{c} bal. acc" for c in HELD_OUT_COLUMNS) + " | held-out recall unsafe: SafeEdit / JBB | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        v, h = r["validation"], r["held_out"]
        ps = h["per_source"]
        vs = v["per_source"]

        def bal(d, k):
            return f"{d[k]['balanced_accuracy']:.3f}" if k in d else "-"

        lines.append(
            f"| {name} | { {**RECIPES, **POOLED_RECIPES}.get(name.split(' (')[0], ('',))[0] if '(argmax)' not in name else 'same model, argmax rule'} | {v['overall']['balanced_accuracy']:.3f} | "
            f"{v['overall']['recall']:.3f} / {v['overall']['recall_safe']:.3f} | {bal(vs, 'labels:safeedit_pre')} | "
            f"{bal(vs, 'labels:safeedit_post_dinm')} | {h['macro_over_sources']['balanced_accuracy']:.3f} | "
            f"{large_source_macro(h):.3f} | {h['overall']['balanced_accuracy']:.3f} | " +
            " | ".join(bal(ps, c) for c in HELD_OUT_COLUMNS) +
            f" | {ps.get('safeedit_sample', {}).get('recall', float('nan')):.3f} / "
            f"{ps.get('jbb_artifacts_autojudge', {}).get('recall', float('nan')):.3f} | {r['train_s']:.0f} |")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("name")
    t.add_argument("--out", default="runs/judges")
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--seed", type=int, default=None, help="train the recipe from this seed (folder NAME,seedN)")
    t.add_argument("--validation", default=None, help="validation label file (default data/judge_labels/validation.jsonl)")
    e = sub.add_parser("eval")
    e.add_argument("judges", nargs="+")
    e.add_argument("--json", required=True)
    e.add_argument("--max-eval-per-source", type=int, default=150)
    e.add_argument("--validation", default=None, help="validation label file (default data/judge_labels/validation.jsonl)")
    c = sub.add_parser("collect")
    c.add_argument("judges", nargs="+")
    c.add_argument("--json", required=True)
    tb = sub.add_parser("table")
    tb.add_argument("results", nargs="+")
    tb.add_argument("--readme", action="store_true", help="rows in the README's compact format")
    args = ap.parse_args()
    {"train": cmd_train, "eval": cmd_eval, "collect": cmd_collect, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
