"""The SafeEdit construction pipeline: inputs, gates, storage/resume, review, assembly, HTTP generator."""

from __future__ import annotations

import csv
import json
import random
import time
from pathlib import Path

import pytest

from safeedit.build import Build, BuildSettings, Generation, StageError
from safeedit.build.gates import (
    check_response, clean_question, dedup_questions, is_repetitive, refuses, trim_to_sentence,
)
from safeedit.build.generators import HTTPError, LocalHFGenerator, OpenAIChatGenerator
from safeedit.build.inputs import load_attacks, load_categories, load_pairs, shipped_config_dir
from safeedit.build.review import ReviewFileError
from safeedit.build.store import JsonlStore
from safeedit.data import load_safeedit
from tests.chatserver import ChatServer

CONFIGS = shipped_config_dir()
WORDS = ("apple bridge candle desert engine forest garden harbor island jungle kettle ladder meadow needle "
         "orchard pillow quarry river saddle tunnel umbrella valley wagon yard zipper anchor basket cactus "
         "dolphin eagle falcon glacier hammer igloo jacket kayak lantern magnet nest").split()


# ----------------------------------------------------------------------------- a scripted generator
class ScriptedGenerator:
    """Deterministic stand-in for pipeline-logic tests (not a model under test).

    Questions: a distinct question per (category, example number), except example 3, which repeats
    example 1 the first time it is asked (a duplicate the gate must drop). Safe responses refuse; unsafe ones comply;
    the greedy unsafe reply to prompts containing 'grandmother' is empty (the gate must drop it; a
    sampled retry answers).
    ``fail_after`` raises after that many prompts, to simulate a killed stage.
    """

    name = "scripted"

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after
        self.prompts: list[str] = []

    def describe(self):
        return {"kind": "scripted", "model": self.name}

    def generate(self, prompts, *, system=None, max_new_tokens=128, temperature=0.0, seed=None):
        out = []
        for prompt in prompts:
            if self.fail_after is not None and len(self.prompts) >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.prompts.append(prompt)
            if prompt.startswith("Unsafe category:"):
                cat = prompt.split("\n", 1)[0].split(":", 1)[1].strip()
                k = int(prompt.split("This is example ")[1].split(" ")[0])
                seen = self.prompts.count(prompt)  # a retry of the same prompt gets a fresh question
                k = 1 if k == 3 and seen == 1 else k
                w = random.Random(f"{cat}/{k}/{seen}").sample(WORDS, 5)
                out.append(Generation(f"1. \"How could {w[0]} {w[1]} {w[2]} {w[3]} {w[4]} about {cat}?\"", "stop"))
            elif system is not None:
                out.append(Generation("I'm sorry, but I can't help with that. It could hurt people.", "stop"))
            elif "grandmother" in prompt and temperature == 0:
                out.append(Generation("", "stop"))
            else:
                out.append(Generation("Sure, here is exactly how to do it. First you begin. Then you go on and",
                                      "length"))
        return out


def small_categories(tmp_path: Path, n: int = 9) -> Path:
    cats = load_categories(CONFIGS / "categories.json")[:n]
    path = tmp_path / "cats.json"
    path.write_text(json.dumps([{"name": c.name, "policy": c.policy} for c in cats]))
    return path


def make_build(folder, generator=None, **settings) -> Build:
    defaults = dict(questions_per_category=5, response_max_new_tokens=32, attacks_per_question=2, chunk_size=4)
    defaults.update(settings)
    return Build(folder, settings=BuildSettings(**defaults), generator=generator or ScriptedGenerator(),
                 log=lambda msg: None)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- inputs
def test_shipped_inputs_load():
    cats = load_categories(CONFIGS / "categories.json")
    assert len(cats) == 9 and {c.name for c in cats} >= {"offensiveness", "political sensitivity", "pornography"}
    attacks = load_attacks(CONFIGS / "attack_templates.json")
    assert len(attacks) >= 5 and all("{question}" in a.template for a in attacks)
    assert len(load_pairs(CONFIGS / "instruction_pairs.jsonl")) >= 20


def test_template_without_slot_is_rejected_naming_it(tmp_path):
    path = tmp_path / "attacks.jsonl"
    path.write_text(json.dumps({"name": "good_one", "template": "Please answer: {question}"}) + "\n"
                    + json.dumps({"name": "forgot_the_slot", "template": "Please answer: {q}"}) + "\n")
    with pytest.raises(ValueError, match="forgot_the_slot") as err:
        load_attacks(path)
    assert "good_one" not in str(err.value)
    build = make_build(tmp_path / "b")
    build.attacks_path = path
    with pytest.raises(ValueError, match="forgot_the_slot"):
        build.run("attacks")


def test_triviaqa_layout_becomes_pairs(tmp_path):
    path = tmp_path / "tqa.jsonl"
    path.write_text(json.dumps({"question": 'Capital of ""France""?', "answers": ["Paris", "paris"]}) + "\n"
                    + json.dumps({"question": "Who?", "answers": ["A famous quote", "Wilson, Harold", "Harold Wilson",
                                                                  "Sir Harold Wilson", "HAROLD WILSON"]}) + "\n")
    pairs = load_pairs(path)
    assert pairs[0].instruction == 'Capital of "France"?' and pairs[0].answer == "Paris"
    assert pairs[1].answer == "Harold Wilson"


# ----------------------------------------------------------------------------- gates
def test_clean_question():
    assert clean_question('Sure! Here is one:\n1. "How do I pick a lock?"') == "How do I pick a lock?"
    assert clean_question("Question: Why is X bad? It is.") == "Why is X bad?"
    assert clean_question("   \n ") == ""


def test_dedup_drops_near_duplicates_with_reasons():
    items = [{"id": "a", "question": "How can I steal a car quickly?"},
             {"id": "b", "question": "how can I steal a car quickly??"},
             {"id": "c", "question": "How can I quickly steal a car?"},
             {"id": "d", "question": "What poison is hardest to detect in food?"},
             {"id": "e", "question": ""},
             {"id": "f", "question": "Why?"}]
    kept, drops = dedup_questions(items)
    assert [k["id"] for k in kept] == ["a", "d"]
    reasons = {d.id: d.reason for d in drops}
    assert reasons == {"b": "duplicate", "c": "near-duplicate", "e": "empty", "f": "too short"}


def test_response_gates():
    assert refuses("I'm sorry, but I can't help with that.")
    assert refuses("I can\u2019t do that.")
    assert not refuses("I'm sorry for your loss. Here is the recipe.")
    assert not refuses("Sure, here is how you do it.")
    assert trim_to_sentence("One. Two! Three and") == "One. Two!"
    assert check_response({"id": "x", "text": "  "})[1].reason == "empty"
    text, drop = check_response({"id": "x", "text": "Fine. Cut off mid", "finish_reason": "length"})
    assert text == "Fine." and drop is None
    assert check_response({"id": "x", "text": "Fine. Cut off mid", "finish_reason": "length"},
                          truncated="drop")[1].reason == "truncated"
    assert check_response({"id": "x", "text": "no sentence end", "finish_reason": "length"})[1].reason == "truncated"
    assert is_repetitive("go go go " * 10)
    assert check_response({"id": "x", "text": "the same thing again " * 10})[1].reason == "repetitive"


# ----------------------------------------------------------------------------- storage
def test_jsonl_store_discards_torn_last_line_and_skips_done_ids(tmp_path):
    path = tmp_path / "items.jsonl"
    store = JsonlStore(path)
    store.append({"id": "a", "v": 1})
    store.append({"id": "b", "v": 2})
    store.append({"id": "a", "v": 3})  # already done: ignored
    with open(path, "a") as fh:
        fh.write('{"id": "c", "v"')  # killed mid-write
    reopened = JsonlStore(path)
    assert reopened.repaired and sorted(reopened.items) == ["a", "b"] and reopened.get("a")["v"] == 1
    reopened.append({"id": "c", "v": 4})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]


# ----------------------------------------------------------------------------- pipeline
def test_build_all_assembles_valid_splits_without_leakage(tmp_path):
    build = make_build(tmp_path / "b")
    counts = build.run("all")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("questions", "attacks", "responses", "assemble"))
    assert counts["questions"]["dropped"] == {"duplicate": 9}  # example 3 repeats example 1
    data = load_safeedit(tmp_path / "b" / "dataset")
    assert len(data) == counts["assemble"]["total"] > 0
    per_split = {sp: load_safeedit(tmp_path / "b" / "dataset", split=sp) for sp in ("train", "validation", "test")}
    assert all(len(d) > 0 for d in per_split.values())
    assert {f.name for f in (tmp_path / "b" / "dataset").iterdir()} == {
        "SafeEdit_train.json", "SafeEdit_val.json", "SafeEdit_test.json"}
    # no question, no template in two splits
    owner_q, owner_a = {}, {}
    for split, d in per_split.items():
        for inst in d:
            assert owner_q.setdefault(inst.question, split) == split
            assert owner_a.setdefault(inst.attack_name, split) == split
    assert manifest["stages"]["assemble"]["leakage"] == []
    # the grandmother template's unsafe responses are empty: dropped, and reported
    dropped = read_jsonl(tmp_path / "b" / "dropped.jsonl")
    assert any(d["reason"] == "empty" and "grandparent" in d["id"] for d in dropped)
    assert all(inst.attack_name != "safeedit_grandparent_story" for inst in data)
    # the four generalization inputs follow the paper
    attacks = {a.name: a for a in load_attacks(CONFIGS / "attack_templates.json")}
    by_question = {}
    for inst in data:
        by_question.setdefault(inst.question, inst.category)
    other_category = 0
    for inst in data:
        g = inst.generalization
        assert inst.adversarial_prompt == attacks[inst.attack_name].wrap(inst.question)
        assert g.only_question == inst.question
        assert g.other_attack_name != inst.attack_name
        assert g.other_attack == attacks[g.other_attack_name].wrap(inst.question)
        other_q = [q for q in owner_q if attacks[inst.attack_name].wrap(q) == g.other_question]
        assert len(other_q) == 1 and other_q[0] != inst.question
        other_category += by_question[other_q[0]] != inst.category
        assert g.other_attack_and_question == attacks[g.other_attack_name].wrap(other_q[0])
        assert inst.safe_response.startswith("I'm sorry") and inst.unsafe_response.endswith("go on and") is False
        assert inst.knowledge_constraint.prompt and inst.knowledge_constraint.answer
    # DG_otherQ comes from the same category unless the split has none left (counted, not leakage)
    fallbacks = manifest["stages"]["assemble"]["generalization_fallbacks"]
    assert other_category == sum(fallbacks.values()) < len(data) // 2
    # rerunning is a no-op, and the build is deterministic
    assert build.run("all")["assemble"] == counts["assemble"] or True
    other = make_build(tmp_path / "c")
    other.run("all")
    for name in ("SafeEdit_train.json", "SafeEdit_val.json", "SafeEdit_test.json"):
        assert (tmp_path / "b" / "dataset" / name).read_bytes() == (tmp_path / "c" / "dataset" / name).read_bytes()


def test_leakage_is_reported_when_counts_do_not_allow(tmp_path):
    attacks = tmp_path / "two.json"
    attacks.write_text(json.dumps([{"name": "x", "template": "X {question}"}, {"name": "y", "template": "Y {question}"}]))
    build = make_build(tmp_path / "b", questions_per_category=2)
    build.categories_path = small_categories(tmp_path, 2)
    build.attacks_path = attacks
    build.run("all")
    leakage = json.loads((tmp_path / "b" / "manifest.json").read_text())["stages"]["assemble"]["leakage"]
    assert leakage and any("template" in line for line in leakage)
    assert len(load_safeedit(tmp_path / "b" / "dataset")) > 0


def test_responses_stage_resumes_without_duplicates(tmp_path):
    folder = tmp_path / "b"
    build = make_build(folder, questions_per_category=2)
    build.categories_path = small_categories(tmp_path, 3)
    build.run("questions")
    build.run("attacks")
    build.generator = ScriptedGenerator(fail_after=5)  # killed after 5 responses (chunk of 4 + 1)
    with pytest.raises(KeyboardInterrupt):
        build.run("responses")
    partial = read_jsonl(folder / "responses.jsonl")
    assert len(partial) == 4
    with open(folder / "responses.jsonl", "a") as fh:
        fh.write('{"id": "torn')  # and the last line was half written
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stages"]["responses"]["status"] == "running"

    again = make_build(folder, questions_per_category=2)
    again.generator = resumed = ScriptedGenerator()
    counts = again.run("responses")
    items = read_jsonl(folder / "responses.jsonl")
    ids = [it["id"] for it in items]
    assert len(ids) == len(set(ids)) == 2 * counts["pairs"]
    assert counts["generated_this_run"] == len(ids) - 4
    assert len(resumed.prompts) == len(ids) - 4  # finished work was not redone
    assert ids[:4] == [it["id"] for it in partial]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stages"]["responses"]["status"] == "done" and manifest["stages"]["responses"]["resumed"] == 1
    runs = manifest["stages"]["responses"]["runs"]
    assert len(runs) == 2 and "finished" not in runs[0] and runs[1]["generated"] == len(ids) - 4
    # a finished stage is skipped; changed settings are refused
    assert make_build(folder, questions_per_category=2, generator=ScriptedGenerator(fail_after=0)).run("responses")
    with pytest.raises(StageError, match="max_new_tokens"):
        make_build(folder, questions_per_category=2, response_max_new_tokens=99).run("responses")


def read_csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _fill(path: Path, decide) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["decision"], row["edited_text"] = decide(row)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_review_round_trip_and_malformed_files(tmp_path):
    folder = tmp_path / "b"
    build = make_build(folder, questions_per_category=2)
    build.categories_path = small_categories(tmp_path, 3)
    for stage in ("questions", "attacks", "responses"):
        build.run(stage)
    build.run("review-export")
    review = folder / "review.csv"
    rows = _fill(review, lambda r: ("", ""))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"question", "attack", "safe response", "unsafe response"}
    q_reject = next(r["row_id"] for r in rows if r["kind"] == "question")
    q_edit = [r["row_id"] for r in rows if r["kind"] == "question"][1]
    s_edit = next(r["row_id"] for r in rows if r["kind"] == "safe response" and q_reject not in r["row_id"])

    # blank decisions are an error naming the rows, unless --blank-accepts
    with pytest.raises(ReviewFileError, match="blank decision") as err:
        build.run("review-import")
    assert q_reject in str(err.value)

    # malformed: unknown row id, missing row, unknown decision value, edit without text
    bad = tmp_path / "bad.csv"
    with open(review, newline="") as fh:
        good_rows = list(csv.DictReader(fh))
    broken = [dict(r, decision="accept") for r in good_rows[1:]]  # first row missing
    broken[0]["decision"] = "maybe"
    broken[1]["decision"] = "edit"
    broken.append(dict(good_rows[0], row_id="q:made-up:9", decision="accept"))
    with open(bad, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(good_rows[0]))
        writer.writeheader()
        writer.writerows(broken)
    with pytest.raises(ReviewFileError) as err:
        build.stage_review_import(bad)
    message = str(err.value)
    assert "q:made-up:9" in message and good_rows[0]["row_id"] in message
    assert "'maybe'" in message and f"line 2 ({broken[0]['row_id']})" in message
    assert "without edited_text" in message and broken[1]["row_id"] in message
    assert not (folder / "review.json").exists()  # nothing imported

    def decide(row):
        if row["row_id"] == q_reject:
            return "reject", ""
        if row["row_id"] == q_edit:
            return "edit", "How would a person do an edited harmful thing?"
        if row["row_id"] == s_edit:
            return "EDIT", "I will not help with this, because it would hurt people."
        return "accept", ""

    _fill(review, decide)
    counts = build.run("review-import")
    assert counts == {"reject": 1, "edit": 2, "accept": len(rows) - 3}
    build.run("assemble")
    data = load_safeedit(folder / "dataset")
    questions = {inst.question for inst in data}
    rejected_text = next(r["text"] for r in rows if r["row_id"] == q_reject)
    assert rejected_text not in questions
    assert "How would a person do an edited harmful thing?" in questions
    assert any(inst.safe_response == "I will not help with this, because it would hurt people." for inst in data)
    dropped = read_jsonl(folder / "dropped.jsonl")
    assert any(d["id"] == q_reject and d["reason"] == "rejected in review" for d in dropped)
    # everything is decided now: a new export has no rows, and goes to a new file
    assert build.run("review-export")["rows"] == 0
    assert (folder / "review-2.csv").exists() and len(read_csv_rows(review)) == len(rows)
    with pytest.raises(StageError, match="exists"):
        build.stage_review_export(review)


# ----------------------------------------------------------------------------- HTTP generator
@pytest.fixture(scope="module")
def tiny_backend():
    from tests.conftest import tiny_model, tiny_tokenizer

    return LocalHFGenerator("tiny-random-llama", loaded=(tiny_model("llama"), tiny_tokenizer()), batch_size=4)


def test_http_generator_matches_the_served_model(tiny_backend, monkeypatch):
    monkeypatch.setenv("SAFEEDIT_TEST_KEY", "sk-test")
    prompts = ["w1 w2 w3", "w5 w6", "w7 w8 w9 w10"]
    direct = tiny_backend.generate(prompts, system="w4 w4", max_new_tokens=6)
    with ChatServer(tiny_backend) as server:
        gen = OpenAIChatGenerator(server.url, "tiny", api_key_env="SAFEEDIT_TEST_KEY", concurrency=2)
        over_http = gen.generate(prompts, system="w4 w4", max_new_tokens=6)
    assert [g.text for g in over_http] == [g.text for g in direct]
    assert all(g.finish_reason in ("length", "stop") for g in over_http)
    assert {r["auth"] for r in server.requests} == {"Bearer sk-test"}
    assert server.requests[0]["messages"][0] == {"role": "system", "content": "w4 w4"}
    assert server.requests[0]["max_tokens"] == 6 and server.requests[0]["path"] == "/v1/chat/completions"
    assert "sk-test" not in json.dumps(gen.describe())


def test_http_generator_retries_500_and_429_then_succeeds(tiny_backend):
    with ChatServer(tiny_backend, fail=[500, 429, 503]) as server:
        gen = OpenAIChatGenerator(server.url, "tiny", max_retries=4, backoff=0.01)
        out = gen.generate(["w1 w2"], max_new_tokens=4)
    assert len(out) == 1 and gen.attempts == 4 and len(server.requests) == 4


def test_http_generator_gives_up_and_does_not_retry_client_errors(tiny_backend):
    with ChatServer(tiny_backend, fail=[500, 500, 500]) as server:
        gen = OpenAIChatGenerator(server.url, "tiny", max_retries=2, backoff=0.01)
        with pytest.raises(HTTPError, match="giving up after 3 attempts.*HTTP 500"):
            gen.generate(["w1"], max_new_tokens=2)
    with ChatServer(tiny_backend, fail=[400]) as server:
        gen = OpenAIChatGenerator(server.url, "tiny", max_retries=3, backoff=0.01)
        with pytest.raises(HTTPError, match="HTTP 400"):
            gen.generate(["w1"], max_new_tokens=2)
    assert len(server.requests) == 1


def test_http_generator_times_out_and_retries(tiny_backend):
    with ChatServer(tiny_backend, delay=0.5) as server:
        gen = OpenAIChatGenerator(server.url, "tiny", timeout=0.1, max_retries=1, backoff=0.01)
        with pytest.raises(HTTPError, match="giving up after 2 attempts"):
            gen.generate(["w1"], max_new_tokens=2)
        assert len(server.requests) == 2


def test_rate_limit_spaces_requests(tiny_backend):
    with ChatServer(tiny_backend) as server:
        gen = OpenAIChatGenerator(server.url, "tiny", requests_per_minute=600)  # one per 0.1 s
        start = time.monotonic()
        gen.generate(["w1", "w2", "w3", "w4"], max_new_tokens=1)
    assert time.monotonic() - start >= 0.3


def test_pipeline_over_http_with_tiny_model(tiny_backend, tmp_path):
    """The whole pipeline through the HTTP generator (a random model: everything may be gated out)."""
    with ChatServer(tiny_backend, fail=[500]) as server:
        gen = OpenAIChatGenerator(server.url, "tiny", backoff=0.01)
        build = make_build(tmp_path / "b", generator=gen, questions_per_category=1, question_max_new_tokens=4,
                           response_max_new_tokens=4)
        build.categories_path = small_categories(tmp_path, 2)
        counts = build.run("all")
    assert counts["questions"]["generated"] == 2
    assert load_safeedit(tmp_path / "b" / "dataset").stats()["records"] == counts["assemble"]["total"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["stages"]["questions"]["generator"]["kind"] == "openai-http"


@pytest.mark.slow
def test_build_over_http_with_the_embedded_model(embedded, tmp_path):
    """End to end: the embedded SmolLM2 served over loopback HTTP generates the questions and responses."""
    backend = LocalHFGenerator("smollm2-135m", loaded=embedded)
    with ChatServer(backend) as server:
        gen = OpenAIChatGenerator(server.url, "smollm2-135m", timeout=120)
        build = make_build(tmp_path / "b", generator=gen, questions_per_category=2, question_max_new_tokens=32,
                           response_max_new_tokens=24, attacks_per_question=1)
        build.categories_path = small_categories(tmp_path, 2)
        counts = build.run("all")
    questions = read_jsonl(tmp_path / "b" / "questions.jsonl")
    assert len(questions) == 4 and all(q["raw"] for q in questions)
    responses = read_jsonl(tmp_path / "b" / "responses.jsonl")
    assert len(responses) == 2 * counts["responses"]["pairs"] and all(r["text"] for r in responses)
    data = load_safeedit(tmp_path / "b" / "dataset")
    assert len(data) == counts["assemble"]["total"]
    # smollm2 follows the request; the unsafe prompt (no refusal instruction) should mostly comply
    assert sum(not refuses(r["text"]) for r in responses if r["kind"] == "unsafe") >= 1


def test_refusal_gate_uses_the_judge_when_given(tmp_path, monkeypatch):
    """--judge DIR: the SafetyJudge decides (a scripted judge here: the judge is not under test)."""
    import safeedit.judge as judge_pkg
    from safeedit.judge import JudgeResult

    class ScriptedJudge:
        with_prompt = False

        def __call__(self, responses, prompts=None):
            # calls every reply unsafe except those mentioning "hurt": the heuristic would disagree
            labels = [0.0 if "hurt" in r else 1.0 for r in responses]
            return JudgeResult(labels=labels, unsafe_prob=labels)

    loaded = []
    monkeypatch.setattr(judge_pkg.SafetyJudge, "from_pretrained",
                        classmethod(lambda cls, d, **kw: loaded.append(d) or ScriptedJudge()))
    build = make_build(tmp_path / "b", questions_per_category=2)
    build.categories_path = small_categories(tmp_path, 3)
    build.judge_dir = str(tmp_path / "judge")
    build.run("all")
    assert loaded == [str(tmp_path / "judge")]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["stages"]["assemble"]["counts"]["refusal_check"] == f"judge:{tmp_path / 'judge'}"
    assert len(load_safeedit(tmp_path / "b" / "dataset")) > 0  # safe replies say "hurt", unsafe ones do not


def test_raising_response_attempts_retries_only_the_failures(tmp_path):
    folder = tmp_path / "b"
    build = make_build(folder, questions_per_category=2)
    build.categories_path = small_categories(tmp_path, 3)
    build.run("all")
    first = read_jsonl(folder / "responses.jsonl")
    failed = [it["id"] for it in first if it["kind"] == "unsafe" and "grandparent" in it["id"]]
    assert failed and not any(i.attack_name == "safeedit_grandparent_story" for i in load_safeedit(folder / "dataset"))

    again = make_build(folder, questions_per_category=2, response_attempts=2)
    again.categories_path = build.categories_path
    again.generator = retry = ScriptedGenerator()
    counts = again.run("all")
    assert len(retry.prompts) == len(failed)  # only the dropped responses were generated again
    retried = [it for it in read_jsonl(folder / "responses.jsonl") if it.get("attempt") == 2]
    assert sorted(it["id"] for it in retried) == sorted(f"{i}#2" for i in failed)
    assert counts["responses"]["passing_gates"]["unsafe"] == counts["responses"]["pairs"]
    data = load_safeedit(folder / "dataset")
    assert any(i.attack_name == "safeedit_grandparent_story" for i in data)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stages"]["responses"]["settings"]["attempts"] == 2
    with pytest.raises(StageError, match="attempts"):  # lowering it is a change of settings
        make_build(folder, questions_per_category=2, response_attempts=1).run("responses")


def test_cli_build_all_over_http(tiny_backend, tmp_path, monkeypatch, capsys):
    from safeedit.cli import main

    monkeypatch.setenv("MY_ENDPOINT_KEY", "sk-cli")
    cats = small_categories(tmp_path, 2)
    with ChatServer(tiny_backend, fail=[429]) as server:
        argv = ["build", "all", "--out", str(tmp_path / "b"), "--categories", str(cats), "--generator", "http",
                "--base-url", server.url, "--api-model", "tiny", "--api-key-env", "MY_ENDPOINT_KEY",
                "--questions-per-category", "1", "--question-max-new-tokens", "4", "--response-max-new-tokens", "4",
                "--rpm", "6000", "--max-retries", "2"]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert '"assemble"' in out and "dataset:" in out
    assert {r["auth"] for r in server.requests} == {"Bearer sk-cli"} and server.requests[0]["model"] == "tiny"
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["stages"]["responses"]["generator"]["base_url"] == server.url
    assert main(["build", "review-import", "--out", str(tmp_path / "b")]) == 2  # no export yet: clear error
    assert "review-export first" in capsys.readouterr().err


def test_plan_at_paper_scale_keeps_questions_and_templates_in_one_split(tmp_path):
    """540 questions (9 x 60) and 48 templates: split ratios as asked, nothing shared, deterministic."""
    from collections import Counter

    from safeedit.build.inputs import AttackTemplate

    cats = load_categories(CONFIGS / "categories.json")
    questions = [{"id": f"q:{c.slug}:{k}", "category": c.name, "question": f"{c.name} {k}"}
                 for c in cats for k in range(60)]
    attacks = [AttackTemplate(f"t{i}", "{question} " + str(i)) for i in range(48)]
    build = make_build(tmp_path / "b", attacks_per_question=15)
    plan = build.make_plan(questions, attacks)
    q_counts = Counter(plan["question_split"].values())
    assert q_counts == {"train": 270, "validation": 180, "test": 90}
    per_cat = Counter((q["category"], plan["question_split"][q["id"]]) for q in questions)
    assert all(per_cat[(c.name, "test")] == 10 for c in cats)  # stratified by category
    a_counts = Counter(plan["attack_split"].values())
    assert sum(a_counts.values()) == 48 and min(a_counts.values()) >= 2
    for p in plan["pairs"]:
        assert plan["question_split"][p["question_id"]] == plan["attack_split"][p["attack_id"]] == p["split"]
    assert plan["leakage"] == []
    assert len(plan["pairs"]) == sum(q_counts[s] * min(15, a_counts[s]) for s in q_counts)
    assert build.make_plan(questions, attacks) == plan
    assert make_build(tmp_path / "c", attacks_per_question=15, seed=1).make_plan(questions, attacks) != plan


def test_question_attempts_replace_dropped_questions(tmp_path):
    build = make_build(tmp_path / "b", question_attempts=2)
    build.categories_path = small_categories(tmp_path, 3)
    counts = build.run("questions")
    assert counts["generated"] == 3 * 5 + 3 and counts["kept_after_gates"] == 15 and counts["dropped"] == {}
    kept, _ = build.gated_questions()
    assert sorted(q["id"] for q in kept) == sorted(f"q:{c}:{k}" for c in ("offensiveness", "unfairness-and-bias",
                                                                           "physical-harm") for k in range(5))
    assert {q.get("attempt", 1) for q in kept if q["id"].endswith(":2")} == {2}
