import json
import os
import signal
import subprocess
import sys
import time

import pytest

from safeedit.bench.store import GenerationCache, ResultsStore
from tests.conftest import REPO, tiny_instance, tiny_model, tiny_tokenizer


def make_tiny_judge(folder):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128, num_labels=2,
                        id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture()
def tiny_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEEDIT_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "data.json"
    data.write_text(json.dumps([tiny_instance(s, s).to_record() for s in range(12)]))
    return {"model": str(model_dir), "data": str(data), "judge": str(make_tiny_judge(tmp_path / "judge")), "tmp": tmp_path}


def bench_args(setup, out, method="dinm", extra=()):
    return ["bench", "--method", method, "--model", setup["model"], "--data", setup["data"], "--judge", setup["judge"],
            "--out", str(out), "--raw", "--max-new-tokens", "6", "--kqa-n", "2", "--csum-n", "1",
            "--general-instances", "1", *(["--set", "steps=2", "--set", "suffix=null"] if method == "dinm" else []), *extra]


def kill_after_lines(proc, path, lines: int, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``path`` holds ``lines`` complete lines (fails if it finished first)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= lines:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_store_drops_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "results.jsonl"
    store = ResultsStore(path)
    store.append({"key": "a#0"})
    store.append({"key": "a#1"})
    with open(path, "a") as fh:
        fh.write('{"key": "a#2", "pre": {"DS"')  # killed mid-write
    again = ResultsStore(path)
    assert again.done_keys() == {"a#0", "a#1"}
    again.append({"key": "a#2"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a#0", "a#1", "a#2"]


def test_generation_cache_is_keyed_by_prompt_text(tmp_path):
    cache = GenerationCache(tmp_path / "g.jsonl")
    cache.add("hello", "world")
    cache.add("hello", "ignored: first answer wins")
    assert GenerationCache(tmp_path / "g.jsonl").lookup(["hello", "other"]) == ["world", None]


def test_bench_run_folder_is_complete_and_restores_the_model(tiny_setup, capsys):
    from safeedit.cli import main

    out = tiny_setup["tmp"] / "run"
    assert main(bench_args(tiny_setup, out, extra=["--limit", "3"])) == 0
    for name in ("run.json", "results.jsonl", "general.jsonl", "summary.json", "report.md", "pre_post.png"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert set(row["pre"]) >= {"DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"}
        assert row["edit"]["details"]["layer"] in (0, 1, 2) and len(row["edit"]["losses"]) == 3
        assert all(row["post"][k]["label"] in (0.0, 0.5, 1.0) for k in ("DS", "DG_onlyQ"))
    meta = json.loads((out / "run.json").read_text())
    assert meta["prompt_mode"] == "raw" and meta["model_fingerprint"] and meta["versions"]["torch"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["complete"] and "KQA" in summary["post"] and "DG_Avg" in summary["post"]
    # the vanilla run reuses every pre-edit generation from the cache
    out_none = tiny_setup["tmp"] / "run_none"
    assert main(bench_args(tiny_setup, out_none, method="none", extra=["--limit", "3"])) == 0
    none_rows = [json.loads(line) for line in (out_none / "results.jsonl").read_text().splitlines()]
    assert [r["pre"]["DS"]["response"] for r in none_rows] == [r["pre"]["DS"]["response"] for r in rows]
    assert main(["report", str(out), str(out_none), "--out", str(tiny_setup["tmp"] / "cmp")]) == 0
    assert "DS per unsafety category" in capsys.readouterr().out
    assert (tiny_setup["tmp"] / "cmp" / "compare.png").is_file()


def test_resume_refuses_different_settings(tiny_setup):
    from safeedit.cli import main

    out = tiny_setup["tmp"] / "run"
    fast = ["--limit", "1", "--kqa-n", "0", "--csum-n", "0"]
    assert main(bench_args(tiny_setup, out, extra=fast)) == 0
    assert main(bench_args(tiny_setup, out, extra=[*fast, "--seed", "3"])) == 2


def test_kill_9_then_resume_loses_and_duplicates_nothing(tiny_setup):
    out = tiny_setup["tmp"] / "killed"
    no_general = ["--kqa-n", "0", "--csum-n", "0"]  # later options win; general metrics are tested above
    cmd = [sys.executable, "-m", "safeedit.cli", *bench_args(tiny_setup, out, extra=no_general)]
    env = dict(os.environ, SAFEEDIT_CACHE=str(tiny_setup["tmp"] / "cache"))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    kill_after_lines(proc, results, 2)
    before = [json.loads(line)["key"] for line in results.read_text().splitlines() if line.strip().endswith("}")]
    assert 2 <= len(before) < 12
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = [json.loads(line)["key"] for line in results.read_text().splitlines()]
    assert len(after) == 12 and len(set(after)) == 12
    assert after[: len(before)] == before


def test_summary_arithmetic_matches_hand_computed_rows(tmp_path):
    """Three hand-made instances; every number below is computed by hand from the labels."""
    from safeedit.bench.report import summarize

    def side(labels, degenerate, fluency):
        keys = ["DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"]
        block = {k: {"response": "r", "label": lab, "unsafe_prob": lab, "degenerate": deg}
                 for k, lab, deg in zip(keys, labels, degenerate)}
        return block | {"_fluency": fluency}

    rows = [  # post labels per input (0 safe, 1 unsafe, 0.5 empty) and degenerate flags
        {"post": side([0, 0, 1, 0, 0.5], [None, "repetition", None, None, "empty"], 4.0)},
        {"post": side([0, 1, 1, 0, 0], [None] * 5, 5.0)},
        {"post": side([1, 0, 0, 0, 0], [None, None, None, "repetition", None], 6.0)},
    ]
    for i, row in enumerate(rows):
        row.update(key=f"t#{i}", category="c" if i < 2 else "d", pre=row["post"])
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "run.json").write_text(json.dumps({"config": {"method": "none", "model": "m"}, "prompt_mode": "raw",
                                                   "instances": 3}))
    post = summarize(tmp_path)["post"]
    assert post["DS"] == pytest.approx(100 - 100 * 1 / 3)          # labels 0, 0, 1
    assert post["DG_onlyQ"] == pytest.approx(100 - 100 * 1 / 3)    # 0, 1, 0
    assert post["DG_otherA"] == pytest.approx(100 - 100 * 2 / 3)   # 1, 1, 0
    assert post["DG_otherQ"] == pytest.approx(100.0)               # 0, 0, 0
    assert post["DG_otherAQ"] == pytest.approx(100 - 100 * 0.5 / 3)  # 0.5, 0, 0
    assert post["DG_Avg"] == pytest.approx((200 / 3 + 100 / 3 + 100 + 250 / 3) / 4)
    assert post["Degenerate%"] == pytest.approx(100 * 3 / 15)      # 3 of 15 responses flagged
    assert post["DS_nondegenerate"] == pytest.approx(100 * 2 / 3)  # safe and not degenerate: rows 0, 1
    assert post["Fluency"] == pytest.approx(5.0)
    assert summarize(tmp_path)["per_category"]["d"]["post"]["DS"] == pytest.approx(0.0)


def test_leaking_train_split_is_refused_before_anything_loads(tiny_setup, capsys):
    from safeedit.cli import main

    out = tiny_setup["tmp"] / "leak"
    args = bench_args(tiny_setup, out, method="none", extra=["--limit", "2", "--train-data", tiny_setup["data"]])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "share their harmful question with the training data" in err and "data.json#0" in err
    assert not out.exists()  # nothing half-written


def test_trained_once_path_with_a_disjoint_train_split(tiny_setup):
    from safeedit.cli import main

    records = json.loads(open(tiny_setup["data"]).read())
    train = tiny_setup["tmp"] / "train.json"
    train.write_text(json.dumps(records[6:]))
    test = tiny_setup["tmp"] / "test.json"
    test.write_text(json.dumps(records[:3]))
    out = tiny_setup["tmp"] / "trained"
    args = bench_args(tiny_setup, out, method="none", extra=["--train-data", str(train), "--kqa-n", "0", "--csum-n", "0"])
    args[args.index("--data") + 1] = str(test)
    assert main(args) == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["method"] == {"name": "none", "per_instance": False, "config": {}}
    assert meta["train_instances"] == 6 and meta["train_test_overlap"]["shared_question_instances"] == 0
    fit = json.loads((out / "fit.json").read_text())
    assert fit["train_instances"] == 6 and (out / "artifact").is_dir()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["post"] == r["pre"] for r in rows)  # the unedited model: post is pre
    assert main(args) == 0  # a finished run resumes to the same folder without retraining
    assert json.loads((out / "fit.json").read_text()) == fit


def test_report_refuses_runs_scored_by_different_judges(tmp_path):
    from safeedit.bench.report import compare_runs
    from safeedit.errors import UserError

    row = {"key": "t#0", "category": "c"}
    row["pre"] = row["post"] = {k: {"response": "r", "label": 0, "unsafe_prob": 0.1, "degenerate": None}
                                for k in ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ")} | {"_fluency": 3.0}
    runs = []
    for name, source in (("a", "/judges/ours"), ("b", "zjunlp/SafeEdit-Safety-Classifier")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.jsonl").write_text(json.dumps(row) + "\n")
        (folder / "run.json").write_text(json.dumps({"config": {"method": "none", "model": "m"}, "prompt_mode": "raw",
                                                     "instances": 1, "judge": {"kind": "classifier", "source": source}}))
        runs.append(folder)
    with pytest.raises(UserError, match="scored by different judges"):
        compare_runs(runs)
    assert "Mixed judges" in compare_runs(runs, allow_mixed_judges=True)
    assert "Mixed judges" not in compare_runs([runs[0], runs[0]])


def test_report_on_common_instances_scores_every_run_on_the_shared_keys(tmp_path):
    from safeedit.bench.report import compare_runs, summarize

    def row(key, label):
        block = {k: {"response": "r", "label": label, "unsafe_prob": 0.1, "degenerate": None}
                 for k in ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ")} | {"_fluency": 3.0}
        return {"key": key, "category": "c", "pre": block, "post": block}

    big, small = tmp_path / "big", tmp_path / "small"
    for folder, rows in ((big, [row("t#0", 0), row("t#1", 1), row("t#2", 1)]), (small, [row("t#0", 0)])):
        folder.mkdir()
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "run.json").write_text(json.dumps({"config": {"method": "none", "model": "m"}, "prompt_mode": "raw",
                                                     "instances": len(rows), "judge": {"kind": "classifier"}}))
    assert summarize(big)["post"]["DS"] == pytest.approx(100 / 3)  # label 0 = safe
    table = compare_runs([big, small], common_instances=True)
    assert "on the 1 instances all of them have" in table
    assert summarize(big, {"t#0"})["post"]["DS"] == 100.0 and summarize(big, {"t#0"})["complete"]


def test_a_response_is_judged_once_per_run_with_the_same_verdict(tmp_path):
    """The bench memoises verdicts by the text the judge reads: a repeated response costs no second
    judge call and gets the verdict a fresh call gives."""
    from safeedit.bench.runner import BenchConfig, BenchRun
    from safeedit.judge import SafetyJudge

    judge = SafetyJudge.from_pretrained(make_tiny_judge(tmp_path / "judge"))
    seen = []
    call = judge.__call__

    class Counting:
        with_prompt = False

        def __call__(self, responses, prompts=None):
            seen.extend(responses)
            return call(responses, prompts=prompts)

    run = BenchRun(BenchConfig(data="unused", out=str(tmp_path / "run")), progress=False)
    a = run._judge_block(Counting(), {"x": "p", "y": "q"}, {"x": "w1 w2 w3", "y": "w4 w5"})
    b = run._judge_block(Counting(), {"x": "p", "z": "r"}, {"x": "w4 w5", "z": "w1 w2 w3"})
    assert sorted(seen) == ["w1 w2 w3", "w4 w5"]  # two distinct texts, judged once each
    fresh = judge(["w1 w2 w3", "w4 w5"])
    assert b["z"]["unsafe_prob"] == a["x"]["unsafe_prob"] == fresh.unsafe_prob[0]
    assert b["x"]["label"] == a["y"]["label"] == fresh.labels[1]
