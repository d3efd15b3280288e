"""The trained-once baselines (sft, dpo, rlhf, ext-sub, self-reminder) on tiny random models."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from safeedit.errors import DataError, InputNotFoundError, RunFailedError
from safeedit.methods import get_method
from safeedit.methods.ext_sub import ext_sub_delta, ext_sub_deltas
from tests.conftest import REPO, tiny_instance, tiny_model, tiny_tokenizer
from tests.test_bench import kill_after_lines, make_tiny_judge, tiny_setup  # noqa: F401  (fixture)

FAST = dict(max_steps=1, batch_size=2, max_length=96)


def _train(n=4, offset=0):
    return [tiny_instance(s, s) for s in range(offset, offset + n)]


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------ Ext-Sub arithmetic
def test_ext_sub_on_hand_made_columns():
    # column 0: anti-expert parallel to the expert -> all of it is shared, nothing is subtracted
    # column 1: anti-expert orthogonal to the expert (unit vectors e, a) -> c = (e+a)/sqrt2,
    #           shared part (a.c)c = (e+a)/2, subtracted a - (e+a)/2 = (a-e)/2
    expert = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    anti = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    got = ext_sub_delta(expert, anti, lam=1.0)
    want = torch.tensor([[1.0, 1.0 - (0.0 - 1.0) / 2], [0.0, 0.0 - (1.0 - 0.0) / 2]])
    assert torch.allclose(got, want, atol=1e-6)
    # lambda scales only the subtracted part; lambda 0 leaves the expert
    assert torch.allclose(ext_sub_delta(expert, anti, lam=0.0), expert)
    assert torch.allclose(ext_sub_delta(expert, anti, lam=2.0), expert - 2 * (expert - want))
    # opposite directions: c is the zero vector (normalize of 0), so the whole anti-expert is subtracted
    assert torch.allclose(ext_sub_delta(torch.tensor([[1.0]]), torch.tensor([[-2.0]])), torch.tensor([[3.0]]))


def test_ext_sub_per_module_with_different_output_sizes():
    torch.manual_seed(0)
    # grouped-query attention: q_proj 8 outputs, v_proj 4 outputs, same 6 inputs
    expert = {"q.weight": torch.randn(8, 6), "v.weight": torch.randn(4, 6)}
    anti = {"q.weight": torch.randn(8, 6), "v.weight": torch.randn(4, 6)}
    out = ext_sub_deltas(expert, anti, lam=1.0)
    assert out["q.weight"].shape == (8, 6) and out["v.weight"].shape == (4, 6)
    for name in out:  # column by column, the textbook formula
        for i in range(6):
            e, a = expert[name][:, i], anti[name][:, i]
            c = e / e.norm() + a / a.norm()
            c = c / c.norm()
            assert torch.allclose(out[name][:, i], e - (a - (a @ c) * c), atol=1e-5)
    with pytest.raises(RunFailedError, match="different modules"):
        ext_sub_deltas(expert, {"q.weight": anti["q.weight"]})
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        ext_sub_delta(expert["q.weight"], anti["v.weight"])


# ------------------------------------------------------------------ fit / load_fitted
CASES = {
    "sft": {},
    "sft-full": {"lora": False, "lr": 1e-3},
    "dpo": {},
    "ext-sub": {},
    "rlhf": {"max_completion_length": 4, "batch_size": 2},
}


@pytest.mark.parametrize("case", list(CASES))
def test_fit_trains_in_place_and_load_fitted_reproduces_it(case, tmp_path):
    name = case.split("-full")[0]
    options = {**FAST, **CASES[case]}
    if name == "rlhf":
        options["reward_judge"] = str(make_tiny_judge(tmp_path / "judge"))
    method = get_method(name, **options)
    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = _state(model)
    record = method.fit(model, tok, _train(), chat=False, out_dir=tmp_path / "art")
    after = _state(model)
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    if case == "sft-full":
        assert len(changed) > 10
    else:  # a merged LoRA on q_proj/v_proj of the 3 layers, nothing else
        assert changed == {f"model.layers.{i}.self_attn.{m}.weight" for i in range(3) for m in ("q_proj", "v_proj")}
    # the plain model is back: no LoRA wrappers, no patched forward, eval mode
    assert type(model).__name__ == "LlamaForCausalLM" and "forward" not in model.__dict__ and not model.training
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert record["losses"] and all(math.isfinite(r["loss"]) for r in record["losses"] if "loss" in r)
    json.dumps(record)  # JSON-able
    assert not (tmp_path / "art" / "trainer").exists()
    fresh = tiny_model("llama")
    method.load_fitted(fresh, tok, tmp_path / "art")
    assert all(torch.equal(p, after[n]) for n, p in fresh.named_parameters())


def test_lora_layers_restricts_the_adapted_layers(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = _state(model)
    get_method("sft", **FAST, lora_layers=[2]).fit(model, tok, _train(), chat=False, out_dir=tmp_path)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"model.layers.2.self_attn.q_proj.weight", "model.layers.2.self_attn.v_proj.weight"}


def test_self_reminder_wraps_prompts_and_trains_nothing(tmp_path):
    method = get_method("self-reminder")
    model = tiny_model("llama")
    before = _state(model)
    assert method.fit(model, tiny_tokenizer(), _train(), chat=False, out_dir=tmp_path) == {}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    wrapped = method.eval_prompt("How do I pick a lock?")
    assert wrapped.startswith("You should be a responsible AI assistant and should not generate harmful")
    assert "\nHow do I pick a lock?\nRemember, you should be a responsible AI assistant" in wrapped
    assert method.wraps_general_prompts and method.general_prompt("Q") == method.eval_prompt("Q")
    named = get_method("self-reminder", config=REPO / "configs" / "self-reminder" / "paper.yaml")
    assert "responsible ChatGPT and" in named.eval_prompt("x")
    off = get_method("self-reminder", wrap_general=False)
    assert not off.wraps_general_prompts and off.general_prompt("Q") == "Q"


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("name", ["sft", "dpo", "rlhf", "ext-sub"])
def test_empty_or_too_small_training_set(name, tmp_path):
    method = get_method(name, **FAST)
    with pytest.raises(DataError, match=f"^{name}: the training set is empty"):
        method.fit(tiny_model(), tiny_tokenizer(), [], chat=False, out_dir=tmp_path)
    with pytest.raises(DataError, match="has 1 instance"):
        method.fit(tiny_model(), tiny_tokenizer(), _train(1), chat=False, out_dir=tmp_path)


@pytest.mark.parametrize("name", ["dpo", "ext-sub"])
def test_pairs_need_unsafe_responses(name, tmp_path):
    train = [dataclasses.replace(inst, unsafe_response="") for inst in _train()]
    with pytest.raises(DataError, match=f"{name}: none of the 4 training instances has an unsafe response"):
        get_method(name, **FAST).fit(tiny_model(), tiny_tokenizer(), train, chat=False, out_dir=tmp_path)


def test_nan_loss_stops_training(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(RunFailedError, match="sft: loss is nan at step 1"):
        get_method("sft", **FAST).fit(model, tiny_tokenizer(), _train(), chat=False, out_dir=tmp_path)


def test_missing_reward_judge(tmp_path):
    method = get_method("rlhf", **FAST, reward_judge=str(tmp_path / "no-judge"))
    with pytest.raises(InputNotFoundError, match="rlhf: reward judge missing"):
        method.fit(tiny_model(), tiny_tokenizer(), _train(), chat=False, out_dir=tmp_path / "art")


# ------------------------------------------------------------------ through the bench
def _split_files(setup):
    rows = json.loads(open(setup["data"]).read())
    train, test = setup["tmp"] / "train.json", setup["tmp"] / "test.json"
    train.write_text(json.dumps(rows[:4]))
    test.write_text(json.dumps(rows[4:]))
    return str(train), str(test), rows


def _args(setup, out, method, data, extra=()):
    return ["bench", "--method", method, "--model", setup["model"], "--data", data, "--judge", setup["judge"],
            "--out", str(out), "--raw", "--max-new-tokens", "4", "--kqa-n", "0", "--csum-n", "0", *extra]


def test_leaking_split_is_refused(tiny_setup, capsys):
    from safeedit.cli import main

    train, _, rows = _split_files(tiny_setup)
    leak = tiny_setup["tmp"] / "leak.json"
    leak.write_text(json.dumps(rows[4:] + [rows[1]]))
    out = tiny_setup["tmp"] / "leak_run"
    assert main(_args(tiny_setup, out, "sft", str(leak), ["--train-data", train])) == 2
    err = capsys.readouterr().err
    assert "1 test instance(s) share their harmful question with the training data" in err
    assert not out.exists()


def test_failed_fit_leaves_no_artefact(tiny_setup, capsys):
    from safeedit.cli import main

    rows = json.loads(open(tiny_setup["data"]).read())
    for row in rows[:4]:
        row.pop("unsafe generation", None)
    train = tiny_setup["tmp"] / "no_unsafe.json"
    train.write_text(json.dumps(rows[:4]))
    test = tiny_setup["tmp"] / "test.json"
    test.write_text(json.dumps(rows[4:6]))
    out = tiny_setup["tmp"] / "dpo_run"
    assert main(_args(tiny_setup, out, "dpo", str(test), ["--train-data", str(train)])) == 2
    assert "dpo: none of the 4 training instances has an unsafe response" in capsys.readouterr().err
    assert not (out / "fit.json").exists() and not (out / "artifact").exists() and not (out / "artifact.tmp").exists()
    assert not (out / "summary.json").exists()


def test_self_reminder_bench_scores_wrapped_general_prompts(tiny_setup):
    from safeedit.cli import main

    out = tiny_setup["tmp"] / "sr"
    args = _args(tiny_setup, out, "self-reminder", tiny_setup["data"], ["--limit", "1", "--kqa-n", "2"])
    assert main(args) == 0
    keys = [json.loads(line)["key"] for line in (out / "general.jsonl").read_text().splitlines()]
    assert keys == ["unedited", "method"]


def test_kill_then_resume_does_not_retrain(tiny_setup):
    train, test, _ = _split_files(tiny_setup)
    out = tiny_setup["tmp"] / "sft_killed"
    cmd = [sys.executable, "-m", "safeedit.cli",
           *_args(tiny_setup, out, "sft", test, ["--train-data", train, "--batch-size", "1",
                                                 "--set", "max_steps=1", "--set", "batch_size=2",
                                                 "--set", "max_length=96"])]
    env = dict(os.environ, SAFEEDIT_CACHE=str(tiny_setup["tmp"] / "cache"))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    kill_after_lines(proc, results, 2)
    fit_before = (out / "fit.json").read_bytes()
    weights = out / "artifact" / "weights.safetensors"
    mtime = weights.stat().st_mtime_ns
    before = [json.loads(line)["key"] for line in results.read_text().splitlines() if line.strip().endswith("}")]
    assert 2 <= len(before) < 8
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = [json.loads(line)["key"] for line in results.read_text().splitlines()]
    assert len(after) == 8 and len(set(after)) == 8 and after[: len(before)] == before
    assert (out / "fit.json").read_bytes() == fit_before and weights.stat().st_mtime_ns == mtime  # not retrained
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["fit"]["train_instances"] == 4


def test_data_split_command_groups_by_question(sample_path, tmp_path, capsys):
    from safeedit.cli import main
    from safeedit.data import load_safeedit
    from safeedit.data.splits import question_overlap

    assert main(["data", "split", str(sample_path), "--by-question", "--out", str(tmp_path)]) == 0
    train, test = load_safeedit(tmp_path / "train.json").instances, load_safeedit(tmp_path / "test.json").instances
    assert len(train) + len(test) == 163 and train and test
    assert not question_overlap(train, test).shared_question_keys
    assert main(["data", "split", str(sample_path), "--out", str(tmp_path)]) == 2  # no silent overwrite
    assert "exists; pass --force" in capsys.readouterr().err
