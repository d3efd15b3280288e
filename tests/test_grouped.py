"""Grouped DINM (K instances of one toxic layer edited and evaluated at once) equals one at a time;
grouped bench runs resume by group; sharded runs merge into the single-process result."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from safeedit.lm import generate, resolve_architecture
from safeedit.methods import DINM, EditError
from tests.conftest import REPO, tiny_instance, tiny_model, tiny_tokenizer
from tests.test_bench import bench_args, kill_after_lines, tiny_setup  # noqa: F401  (fixture)
from tests.test_dinm import state_hash

OPTS = dict(suffix=None, lr=1e-2, steps=3, layer=1)


def ragged_instances(n=3):
    """Tiny instances whose edit sequences and eval inputs differ in length (padding is exercised)."""
    out = []
    for k in range(n):
        inst = tiny_instance(10 + k, k)
        kc = dataclasses.replace(inst.knowledge_constraint, prompt=" ".join(inst.knowledge_constraint.prompt.split()[: 8 - 2 * k]))
        out.append(dataclasses.replace(inst, adversarial_prompt=inst.adversarial_prompt + " w7" * (4 * k),
                                       safe_response=" ".join(inst.safe_response.split()[: 12 - 4 * k]),
                                       knowledge_constraint=kc))
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_grouped_edit_and_generation_equal_one_at_a_time(family):
    tok, insts = tiny_tokenizer(), ragged_instances()
    model = tiny_model(family)
    digest = state_hash(model)
    group = DINM(**OPTS).group_edit(model, tok, insts)
    assert state_hash(model) == digest  # the grouped edit never writes the model's tensors
    original = model.get_parameter(resolve_architecture(model).w_v_param_name(1)).detach().clone()
    for k, inst in enumerate(insts):
        single = tiny_model(family)
        edit = DINM(**OPTS).edit(single, tok, [inst])  # each from the original weights
        weight = single.get_parameter(edit.changed[0]).detach()
        moved = (weight - original).abs().max()
        assert moved > 1e-3  # the edit moved W_V
        # equal up to float summation order (padded batch shapes), which Adam's first normalised
        # step can lift to ~1e-5 where a gradient element is tiny; far below the edit itself
        diff = (group.weights[k] - weight).abs().max()
        assert diff <= 2e-5 and diff <= 1e-3 * moved, (k, diff, moved)
        for a, b in zip(group.instances[k].losses, edit.instances[0].losses):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert group.instances[k].details["layer"] == 1 and group.instances[k].details["group_size"] == 3

    inputs = [list(i.eval_inputs().values()) for i in insts]
    prompts = [p for ps in inputs for p in ps]
    owners = [k for k, ps in enumerate(inputs) for _ in ps]
    grouped = generate(model, tok, prompts, max_new_tokens=6, batch_size=len(prompts),
                       row_context=lambda idx: group.rows([owners[i] for i in idx]))
    one_at_a_time = []
    for k, ps in enumerate(inputs):
        edit = group.apply(k)
        one_at_a_time += generate(model, tok, ps, max_new_tokens=6)
        edit.restore()
    assert state_hash(model) == digest
    assert grouped == one_at_a_time
    assert grouped != generate(model, tok, prompts, max_new_tokens=6)  # the edits change the answers


def test_located_group_reuses_the_location_pass_and_equals_single_edits():
    from collections import Counter

    model, tok = tiny_model("llama"), tiny_tokenizer()
    opts = dict(suffix=None, lr=1e-2, steps=2)
    method = DINM(**opts)
    insts = [tiny_instance(s, s) for s in range(8)]
    keys = [method.group_key(model, tok, i) for i in insts]
    layer, count = Counter(keys).most_common(1)[0]
    assert count >= 2 and len(set(keys)) > 1, keys  # seeds chosen so that both cases occur
    with pytest.raises(EditError, match="one toxic layer"):
        DINM(**opts).group_edit(model, tok, insts)
    same = [i for i, k in zip(insts, keys) if k == layer]
    if layer >= 1:  # location kept the hidden states entering the layer for the edit
        assert all(method._planned[i.key][3] is not None for i in same)
    group = method.group_edit(model, tok, same)
    assert not method._planned.keys() & {i.key for i in same}  # consumed
    for k, inst in enumerate(same):
        single = tiny_model("llama")
        edit = DINM(**opts).edit(single, tok, [inst])
        # the group trains from location's inputs of layer L (prompt prefilled once, responses from its
        # cache), the single edit from its own full pass: equal up to rounding, which Adam's normalised
        # first steps lift to ~1e-5 of a 2e-2 change
        assert torch.allclose(group.weights[k], single.get_parameter(edit.changed[0]), atol=3e-5)
        assert group.instances[k].details["distances"] == pytest.approx(edit.instances[0].details["distances"])


@pytest.mark.parametrize("family,adds", [("llama", True), ("qwen2", True), ("gpt2", True), ("gpt_neox", True),
                                         ("gemma2", False), ("gemma3_text", False)])
def test_the_residual_check_tells_pre_norm_blocks_from_a_norm_after_the_mlp(family, adds):
    from safeedit.lm.arch import resolve_architecture
    from safeedit.lm.layer_bypass import output_adds_module_output

    model = tiny_model(family)
    arch = resolve_architecture(model)
    layers = arch.decoder_layers(model)
    assert [output_adds_module_output(model, layers, i, arch.w_v_module(model, i)) for i in range(3)] == [adds] * 3
    # the attention's output projection feeds the MLP too, so the layer output is no sum with it
    if family == "llama":
        assert not output_adds_module_output(model, layers, 1, layers[1].self_attn.o_proj)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("layer", [1, 2])
def test_value_tail_steps_equal_running_the_toxic_layer(family, layer):
    """Caching W_V's input and the residual around it (layer L not re-run per step; at the last layer
    only the scored positions) trains the same copies as running layer L every step. Gemma 2 puts a
    norm after the MLP, so the check turns the tail off there and the result is the plain path's."""
    from safeedit.lm.arch import resolve_architecture
    from safeedit.lm.layer_bypass import output_adds_module_output

    model, tok = tiny_model(family), tiny_tokenizer()
    arch = resolve_architecture(model)
    fits = output_adds_module_output(model, arch.decoder_layers(model), layer, arch.w_v_module(model, layer))
    assert fits == (family != "gemma2")
    insts = [tiny_instance(s, s) for s in range(3)]
    digest = state_hash(model)
    opts = dict(suffix=None, lr=1e-2, steps=3, layer=layer)
    runs = {}
    for tail in (None, False):
        group = DINM(**opts).group_edit(model, tok, insts, loss_rows=2, value_tail=tail)
        runs[tail] = (group.weights, [[step["loss"] for step in r.losses] for r in group.instances])
    assert state_hash(model) == digest
    assert torch.allclose(runs[None][0], runs[False][0], atol=1e-5)
    assert not torch.equal(runs[False][0][0], arch.w_v_weight(model, layer))  # the edit did move W_V
    for with_tail, plain in zip(runs[None][1], runs[False][1]):
        assert with_tail == pytest.approx(plain, rel=1e-4, abs=1e-6)


def test_group_edit_refuses_mixed_layers_and_leaves_the_model_on_nan():
    import math

    model, tok = tiny_model("llama"), tiny_tokenizer()
    digest = state_hash(model)
    insts = [tiny_instance(s, s) for s in range(6)]
    with pytest.raises(EditError, match="non-finite loss"):
        DINM(suffix=None, steps=1, layer=2, lr=math.inf).group_edit(model, tok, insts[:2])
    assert state_hash(model) == digest and all(p.requires_grad for p in model.parameters())


def _rows(folder, pattern="results*.jsonl"):
    rows = [json.loads(line) for f in sorted(folder.glob(pattern)) for line in f.read_text().splitlines()]
    return sorted(rows, key=lambda r: r["key"])


def _content(row):
    """A result row without wall-clock fields and the group bookkeeping."""
    row = json.loads(json.dumps(row))
    row.pop("times", None)
    row["edit"].pop("seconds", None)
    row["edit"]["details"].pop("group_size", None)
    return row


def test_grouped_bench_kill_resume_by_group_and_same_answers_as_one_at_a_time(tiny_setup):  # noqa: F811
    from safeedit.cli import main

    out = tiny_setup["tmp"] / "grouped"
    extra = ["--kqa-n", "0", "--csum-n", "0", "--set", "layer=2", "--limit", "8", "--group-size", "4"]
    cmd = [sys.executable, "-m", "safeedit.cli", *bench_args(tiny_setup, out, extra=extra)]
    env = dict(os.environ, SAFEEDIT_CACHE=str(tiny_setup["tmp"] / "cache"))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    kill_after_lines(proc, results, 1)
    before = [json.loads(line)["key"] for line in results.read_text().splitlines()]
    assert len(before) == 4  # a group is the unit that is written
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = [json.loads(line)["key"] for line in results.read_text().splitlines()]
    assert len(after) == 8 and len(set(after)) == 8 and after[: len(before)] == before

    single = tiny_setup["tmp"] / "single"
    extra_single = [*extra[:-1], "1"]
    assert main(bench_args(tiny_setup, single, extra=extra_single)) == 0
    grouped_rows, single_rows = _rows(out), _rows(single)
    assert [r["key"] for r in grouped_rows] == [r["key"] for r in single_rows]
    assert all(r["edit"]["details"]["group_size"] == 4 for r in grouped_rows)
    for g, s in zip(grouped_rows, single_rows):
        assert {k: v["response"] for k, v in g["post"].items() if k != "_fluency"} == \
               {k: v["response"] for k, v in s["post"].items() if k != "_fluency"}, g["key"]


def test_grouped_bench_times_count_each_instances_location(tiny_setup):  # noqa: F811
    """Location runs before a group forms (to group by layer); its seconds still belong to the
    instance's edit, as in the one-at-a-time path where edit() locates."""
    from safeedit.cli import main

    out = tiny_setup["tmp"] / "located"
    extra = ["--kqa-n", "0", "--csum-n", "0", "--limit", "4", "--group-size", "2"]
    assert main(bench_args(tiny_setup, out, extra=extra)) == 0
    for row in _rows(out):
        t = row["times"]
        assert t["locate_s"] > 0, row["key"]
        assert t["edit_s"] >= t["locate_s"] and row["edit"]["seconds"] >= t["locate_s"]
        assert t["total_s"] >= t["edit_s"] + t["post_generate_s"]


def test_a_sharded_run_says_when_some_processes_have_no_block_of_instances():
    """Blocks of --group-size instances go to the processes whole; with fewer blocks than processes
    some idle, and the run says so with the group size that would give every process work."""
    from safeedit.bench.runner import idle_shard_warning, shard_instances

    items = list(range(8))
    assert shard_instances(items, 0, 2, 8) == items and shard_instances(items, 1, 2, 8) == []
    message = idle_shard_warning(8, 2, 8)
    assert "1 block(s) for 2 processes" in message and "--group-size 4 or fewer" in message
    assert shard_instances(items, 1, 2, 4) == [4, 5, 6, 7] and idle_shard_warning(8, 2, 4) is None
    assert idle_shard_warning(8, 1, 8) is None and idle_shard_warning(9, 3, 4) is None
    assert "--group-size 3 or fewer" in idle_shard_warning(9, 4, 4)


def test_two_process_sharded_run_resumes_a_killed_shard_and_merges_to_the_single_process_run(tiny_setup):  # noqa: F811
    extra = ["--kqa-n", "0", "--csum-n", "0", "--set", "layer=2", "--group-size", "2", "--limit", "6"]
    env = dict(os.environ, SAFEEDIT_CACHE=str(tiny_setup["tmp"] / "cache"), OMP_NUM_THREADS="1")

    def launch(out, rank=None, world=None):
        cmd = [sys.executable, "-m", "safeedit.cli", *bench_args(tiny_setup, out, extra=extra)]
        e = dict(env, RANK=str(rank), WORLD_SIZE=str(world)) if world else env
        return subprocess.Popen(cmd, cwd=REPO, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    sharded, single = tiny_setup["tmp"] / "sharded", tiny_setup["tmp"] / "one"
    # rank 0 (blocks 0-1 and 4-5) is killed after writing its first group, then resumed beside rank 1
    first = launch(sharded, 0, 2)
    rank0 = sharded / "results.rank0-of2.jsonl"
    kill_after_lines(first, rank0, 2)
    before = [json.loads(line)["key"] for line in rank0.read_text().splitlines()]
    assert len(before) == 2  # one group, written at once
    procs = [launch(sharded, r, 2) for r in (0, 1)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    after = [json.loads(line)["key"] for line in rank0.read_text().splitlines()]
    assert len(after) == 4 and len(set(after)) == 4 and after[:2] == before  # nothing lost or redone
    p = launch(single)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    shard_files = sorted(f.name for f in sharded.glob("results*.jsonl"))
    assert shard_files == ["results.rank0-of2.jsonl", "results.rank1-of2.jsonl"]
    per_shard = [len(_rows(sharded, name)) for name in shard_files]
    assert per_shard == [4, 2]  # blocks of group_size dealt round-robin: 0-1, 4-5 | 2-3
    merged, one = _rows(sharded), _rows(single)
    assert len(merged) == 6 and [_content(r) for r in merged] == [_content(r) for r in one]
    summary = json.loads((sharded / "summary.json").read_text())
    assert summary["n"] == 6 and summary["complete"]
    assert summary["post"] == json.loads((single / "summary.json").read_text())["post"]

    # the same run under a real launcher: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK for two processes
    launched = tiny_setup["tmp"] / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "safeedit.cli", *bench_args(tiny_setup, launched, extra=extra)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sorted(f.name for f in launched.glob("results*.jsonl")) == shard_files
    assert [_content(r) for r in _rows(launched)] == [_content(r) for r in one]


def test_grouped_bench_with_prefix_reuse_equals_the_plain_grouped_run(tiny_setup):  # noqa: F811
    from safeedit.cli import main

    # a suffix, so the post-edit prompts extend the pre-edit ones as DINM's do; fresh caches, so the
    # pre-edit answers are generated in the groups (the only case with a prefix to reuse)
    extra = ["--kqa-n", "0", "--csum-n", "0", "--set", "layer=2", "--set", "suffix=w5 w6 w7", "--limit", "6",
             "--group-size", "3"]
    rows = {}
    # "waves": decode batches of at most 100 padded tokens (a few rows), so an instance's rows and a
    # repeated pre-edit prompt fall in different waves (an answered prompt then has no state: plain path)
    for name, flags in (("plain", ["--no-prefix-reuse"]), ("reuse", ["--prefix-reuse"]),
                        ("waves", ["--prefix-reuse", "--decode-tokens", "100"])):
        os.environ["SAFEEDIT_CACHE"] = str(tiny_setup["tmp"] / f"cache-{name}")
        if name == "reuse":  # the unedited answers of the first 2 instances cached: a group mixes both paths
            warm = ["--kqa-n", "0", "--csum-n", "0", "--limit", "2"]
            assert main(bench_args(tiny_setup, tiny_setup["tmp"] / "warm", method="none", extra=warm)) == 0
        assert main(bench_args(tiny_setup, tiny_setup["tmp"] / name, extra=[*extra, *flags])) == 0
        rows[name] = _rows(tiny_setup["tmp"] / name)
        assert len(rows[name]) == 6
    assert [_content(r) for r in rows["reuse"]] == [_content(r) for r in rows["plain"]]
    assert [_content(r) for r in rows["waves"]] == [_content(r) for r in rows["plain"]]
    assert any(r["post"]["DS"]["response"] != r["pre"]["DS"]["response"] for r in rows["reuse"])


def test_loss_rows_change_memory_not_the_result():
    """Editing the group one instance at a time (the CPU default), in pairs or all together (the
    accelerator default) gives every instance the same trajectory."""
    tok, insts = tiny_tokenizer(), [tiny_instance(s, s) for s in range(3)]
    opts = dict(suffix=None, lr=1e-2, steps=3, layer=2)
    one = DINM(**opts).group_edit(tiny_model("llama"), tok, insts, loss_rows=1)
    together = DINM(**opts).group_edit(tiny_model("llama"), tok, insts, loss_rows=3)
    pairs = DINM(**opts).group_edit(tiny_model("llama"), tok, insts, loss_rows=2)
    for other in (together, pairs):
        assert torch.allclose(one.weights, other.weights, atol=3e-5)
        assert [r.losses[0]["loss"] for r in one.instances] == pytest.approx([r.losses[0]["loss"] for r in other.instances])
    with pytest.raises(EditError, match="loss_rows"):
        DINM(**opts).group_edit(tiny_model("llama"), tok, insts, loss_rows=0)


def test_a_chunked_group_edit_holds_one_chunks_reference_at_a_time(monkeypatch):
    """With loss_rows=1 the [tokens x vocabulary] KL references and layer inputs of one instance are
    alive at a time, whatever the group size (the CPU's memory does not grow with K)."""
    from safeedit.methods import dinm

    alive = []
    prepare = dinm._GroupRunner.prepare

    def counting(self, *bs):
        prepare(self, *bs)
        alive.append(len(self._layer_inputs))

    monkeypatch.setattr(dinm._GroupRunner, "prepare", counting)
    tok, insts = tiny_tokenizer(), [tiny_instance(s, s) for s in range(4)]
    DINM(suffix=None, lr=1e-2, steps=2, layer=2).group_edit(tiny_model("llama"), tok, insts, loss_rows=1)
    assert alive and max(alive) == 2  # a chunk's target and constraint batches, then released
    alive.clear()
    DINM(suffix=None, lr=1e-2, steps=2, layer=2).group_edit(tiny_model("llama"), tok, insts, loss_rows=4)
    assert max(alive) == 2  # one chunk: the whole group


@pytest.mark.parametrize("group_size", [1, 2])
def test_bench_judges_a_groups_responses_in_one_call_with_the_verdicts_of_single_calls(tiny_setup, monkeypatch, group_size):  # noqa: F811
    """Every response of a group (pre- and post-edit, all inputs) goes to the judge in one call, one
    call per instance on the one-at-a-time path, and each verdict is the one a call on that response
    alone gives."""
    from safeedit.cli import main
    from safeedit.judge import SafetyJudge

    calls = []
    original = SafetyJudge.__call__

    def counting(self, responses, *args, **kwargs):
        calls.append(list(responses))
        return original(self, responses, *args, **kwargs)

    monkeypatch.setattr(SafetyJudge, "__call__", counting)
    out = tiny_setup["tmp"] / f"judged{group_size}"
    extra = ["--kqa-n", "0", "--csum-n", "0", "--set", "layer=2", "--limit", "4", "--group-size", str(group_size)]
    assert main(bench_args(tiny_setup, out, extra=extra)) == 0  # one layer for all: groups of group_size
    rows = _rows(out)
    assert len(calls) == 4 // group_size
    for row, call in zip(rows[::group_size], calls):
        group = rows[rows.index(row):rows.index(row) + group_size]
        texts = {v["response"] for r in group for side in ("pre", "post")
                 for k, v in r[side].items() if k != "_fluency"}
        assert set(call) == {t for t in texts if t.strip()} and len(call) == len(set(call))
    judge = SafetyJudge.from_pretrained(tiny_setup["judge"])
    for row in rows:
        for side in ("pre", "post"):
            for k, v in row[side].items():
                if k != "_fluency" and v["response"].strip():
                    alone = original(judge, [v["response"]])
                    assert v["label"] == alone.labels[0], (row["key"], side, k)
                    assert v["unsafe_prob"] == pytest.approx(alone.unsafe_prob[0], abs=1e-5), (row["key"], side, k)


def test_group_keys_locate_in_prompt_order_reusing_shared_prefixes_and_equal_one_by_one():

    model, tok = tiny_model("llama"), tiny_tokenizer()
    template = " ".join(f"w{i}" for i in range(30, 45))
    insts = []
    for s in range(6):
        inst = tiny_instance(s, s)
        # two templates, interleaved, so prompt order differs from instance order
        prefix = template if s % 2 else "w7 w8 w9"
        insts.append(dataclasses.replace(inst, adversarial_prompt=f"{prefix} {inst.adversarial_prompt}"))
    method, single = DINM(suffix=None), DINM(suffix=None)
    keyed = method.group_keys(model, tok, insts)
    assert [k for k, _ in keyed] == [single.group_key(model, tok, i) for i in insts]
    assert all(seconds >= 0 for _, seconds in keyed)
    assert method.location_reused_tokens >= 2 * len(tok(template, add_special_tokens=False)["input_ids"])
    assert method._reuse is None  # the states of the last prompt are not kept past the call
    for inst in insts:
        a, b = method._planned[inst.key], single._planned[inst.key]
        assert a[1] == pytest.approx(b[1], rel=1e-4, abs=1e-5)
        if b[3] is not None:
            torch.testing.assert_close(a[3], b[3], rtol=1e-4, atol=1e-5)
