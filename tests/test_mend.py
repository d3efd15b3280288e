"""MEND on tiny random models: the update's structure, no-op and exact restore, save/load, resume."""

import json

import pytest
import torch
import torch.nn.functional as F

from safeedit.data import KnowledgeConstraint
from safeedit.errors import DataError
from safeedit.methods import MEND, get_method
from safeedit.methods import mend as mend_module
from safeedit.methods.mend import train_mend
from safeedit.methods.sequences import build_sequence
from tests.conftest import tiny_instance, tiny_model, tiny_tokenizer
from tests.test_dinm import state_hash

EDITED = [f"model.layers.{layer}.mlp.{m}.weight" for layer in range(3) for m in ("down_proj", "gate_proj", "up_proj")]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread (no OpenMP spinning on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def short_instance(seed=0):
    """Prompt and target of a few tokens, so the number of tokens T is below the matrix ranks."""
    from dataclasses import replace

    inst = tiny_instance(seed, seed)
    return replace(inst, adversarial_prompt="w1 w2 w3", safe_response="w4 w5")


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_untrained_network_is_one_gradient_step_of_rank_at_most_T():
    """Identity network, no statistics yet: ΔW = −η Σ_t δ_t u_tᵀ = −η ∇_W NLL, rank ≤ T tokens."""
    model, tok, inst = tiny_model("llama"), tiny_tokenizer(), short_instance()
    seq = build_sequence(tok, inst.adversarial_prompt, inst.safe_response, chat=None, max_length=256)
    params = dict(model.named_parameters())
    nll = F.cross_entropy(model(input_ids=torch.tensor([seq.ids])).logits[0, seq.target_start - 1:-1],
                          torch.tensor(seq.ids[seq.target_start:]))
    grads = dict(zip(EDITED, torch.autograd.grad(nll, [params[n] for n in EDITED])))
    before = weights(model)
    mend = MEND(rank=4, step_init=0.5)
    mend.init_hypernet(model)
    edit = mend.edit(model, tok, [inst])
    assert edit.changed == sorted(EDITED)
    T = len(seq.ids)
    for n in EDITED:
        delta = params[n].detach() - before[n]
        assert torch.allclose(delta, -0.5 * grads[n], atol=1e-6, rtol=1e-3), n
        assert torch.linalg.matrix_rank(delta).item() <= T < min(delta.shape)
    for n, p in model.named_parameters():
        if n not in EDITED:
            assert torch.equal(p, before[n]), n


def test_trained_network_update_is_a_sum_of_T_outer_products():
    model, tok, inst = tiny_model("llama"), tiny_tokenizer(), short_instance(1)
    mend = MEND(rank=4)
    hyper = mend.init_hypernet(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for block in hyper.modules():
            if isinstance(block, mend_module.LowRankBlock):
                block.B.normal_()  # a network that is no longer the identity
    hyper.eval()  # fixed statistics (training mode would update them on every call)
    first, targets = mend_module.edited_params(model, mend.config)
    runner = mend._runner(model, tok, inst, None, first, mend_module.resolve_architecture(model))
    with runner:
        factors, _ = mend.factors(runner, targets)
    T = len(runner.sequences[0].ids)
    for n, (u, d) in factors.items():
        u_t, d_t = hyper.net_for(n)(u, d)
        outer = sum(torch.outer(d_t[t], u_t[t]) for t in range(T))
        delta = hyper.delta(n, u, d, targets[n][0].weight.shape).detach()
        assert u.shape[0] == T
        assert torch.allclose(delta, -hyper.steps[n.replace(".", "__")] * outer, atol=1e-6)
        assert torch.linalg.matrix_rank(delta).item() <= T


def test_zero_step_leaves_the_model_unchanged_and_restore_is_exact():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    digest = state_hash(model)
    mend = MEND(rank=4, step_init=0.0)
    mend.init_hypernet(model)
    edit = mend.edit(model, tok, [tiny_instance(2)])
    assert state_hash(model) == digest
    mend = MEND(rank=4, step_init=1e-2)
    mend.init_hypernet(model)
    edit = mend.edit(model, tok, [tiny_instance(2), tiny_instance(3, 3)])  # sequential: restore to the first state
    assert state_hash(model) != digest
    edit.restore()
    assert state_hash(model) == digest


def test_edit_without_a_trained_network_fails_clearly():
    with pytest.raises(Exception, match="no trained hyper-network"):
        MEND().edit(tiny_model("llama"), tiny_tokenizer(), [tiny_instance(0)])


def small_mend(tmp=None, **kw):
    opts = dict(rank=8, lr=1e-3, step_lr=1e-3, step_init=1e-2, iterations=4, checkpoint_every=2) | kw
    return get_method("mend", **opts)


def test_training_learns_and_the_saved_network_reloads_identically(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    train = [tiny_instance(s, s) for s in range(10, 14)]
    mend = small_mend(iterations=8, checkpoint_every=4)
    record = train_mend(mend, model, tok, train, tmp_path, val=[tiny_instance(5, 5)], progress=False)
    val = record["val"]
    assert [v["iteration"] for v in val] == [0, 4, 8]
    assert val[-1]["nll_post"] < val[0]["nll_post"]  # the edit got better at its job
    assert (tmp_path / "latest").read_text().strip() == "ckpt-0000008" and (tmp_path / "curve.png").is_file()
    # reload from the training folder, as --set checkpoint=DIR does; no training split needed
    loaded = get_method("mend", checkpoint=str(tmp_path))
    assert loaded.requires_training is False and MEND.requires_training is True
    deltas = []
    for method in (mend, loaded):
        digest = state_hash(model)
        before = weights(model)
        edit = method.edit(model, tok, [tiny_instance(6, 6)])
        deltas.append({n: model.get_parameter(n).detach() - before[n] for n in edit.changed})
        edit.restore()
        assert state_hash(model) == digest
    for n in deltas[0]:
        assert torch.equal(deltas[0][n], deltas[1][n]), n
    # the network remembers the questions it was trained on and refuses to be scored on them
    with pytest.raises(DataError, match="trained on"):
        loaded.edit(model, tok, [train[0]])


def test_an_interrupted_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    train = [tiny_instance(s, s) for s in range(10, 13)]
    reference = small_mend()
    train_mend(reference, model, tok, train, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    real = mend_module.outer_loss

    def killed_at_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # iterations 0, 1 (checkpoint at 2), 2 done; die during 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mend_module, "outer_loss", killed_at_fourth)
    with pytest.raises(KeyboardInterrupt):
        train_mend(small_mend(), model, tok, train, tmp_path / "killed", progress=False)
    monkeypatch.setattr(mend_module, "outer_loss", real)
    assert (tmp_path / "killed" / "latest").read_text().strip() == "ckpt-0000002"
    logged = [json.loads(x)["iteration"] for x in (tmp_path / "killed" / "losses.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2]
    messages = []
    resumed = small_mend()
    train_mend(resumed, model, tok, train, tmp_path / "killed", progress=False, log=messages.append)
    assert any("resuming" in m and "iteration 2" in m for m in messages)
    logged = [json.loads(x)["iteration"] for x in (tmp_path / "killed" / "losses.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2, 3]  # nothing lost, nothing twice
    ref_state, res_state = reference.hyper.state_dict(), resumed.hyper.state_dict()
    for k in ref_state:
        assert torch.allclose(ref_state[k], res_state[k], atol=1e-6), k
    # a folder trained with other settings is refused
    with pytest.raises(Exception, match="other settings"):
        train_mend(small_mend(rank=4), model, tok, train, tmp_path / "killed", progress=False)


def test_bench_trains_once_edits_each_instance_and_reuses_the_artefact(tmp_path, monkeypatch):
    """The runner's trained-once path: fit on --train-data, fingerprinted artefact, restore after each edit;
    a resumed run loads the artefact instead of training, and checkpoint=artefact needs no training data."""
    from safeedit.bench.runner import BenchConfig, run_bench
    from tests.test_bench import make_tiny_judge

    monkeypatch.setenv("SAFEEDIT_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    train, test = tmp_path / "train.json", tmp_path / "test.json"
    train.write_text(json.dumps([tiny_instance(s, s).to_record() for s in range(20, 24)]))
    test.write_text(json.dumps([tiny_instance(s, s).to_record() for s in range(2)]))
    judge = str(make_tiny_judge(tmp_path / "judge"))
    options = {"rank": 4, "iterations": 2, "checkpoint_every": 2, "step_init": 1e-2}
    common = dict(method="mend", model=str(model_dir), data=str(test), judge=judge, chat=False, max_new_tokens=4,
                  kqa_n=0, csum_n=0, general_instances=0)
    out = tmp_path / "run"
    run_bench(BenchConfig(train_data=str(train), out=str(out), method_options=options, **common), progress=False)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["edit"]["details"]["nll_after"] < r["edit"]["details"]["nll_before"] for r in rows)
    fit = json.loads((out / "fit.json").read_text())
    assert fit["iterations"] == 2 and (out / "artifact" / "latest").is_file()

    calls = {"n": 0}
    real = mend_module.outer_loss
    monkeypatch.setattr(mend_module, "outer_loss", lambda *a, **k: calls.__setitem__("n", calls["n"] + 1) or real(*a, **k))
    (out / "results.jsonl").write_text("")  # as if killed before the first instance was written
    run_bench(BenchConfig(train_data=str(train), out=str(out), method_options=options, **common), progress=False)
    assert calls["n"] == 0  # the saved network was loaded, not retrained
    assert json.loads((out / "fit.json").read_text()) == fit

    reuse = tmp_path / "reuse"
    run_bench(BenchConfig(out=str(reuse), method_options={"checkpoint": str(out / "artifact")}, **common), progress=False)
    assert len((reuse / "results.jsonl").read_text().splitlines()) == 2 and calls["n"] == 0
