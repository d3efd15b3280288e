import hashlib
import math

import pytest
import torch

from safeedit.lm import resolve_architecture
from safeedit.errors import ConfigError, DataError
from safeedit.methods import DINM, EditError, get_method
from tests.conftest import tiny_instance, tiny_model, tiny_tokenizer


def state_hash(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tiny_dinm(**overrides):
    return DINM(**({"suffix": None, "lr": 1e-2, "steps": 5} | overrides))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gpt2", "gpt_neox"])
def test_fast_path_equals_naive_full_model_loop(family):
    tok, inst = tiny_tokenizer(), tiny_instance(1)
    weights = []
    for fast in (True, False):
        model = tiny_model(family)
        edit = tiny_dinm(fast=fast).edit(model, tok, [inst])
        weights.append(model.get_parameter(edit.changed[0]).detach().clone())
        assert edit.instances[0].losses  # the loss was logged
    assert torch.allclose(weights[0], weights[1], atol=1e-6), (weights[0] - weights[1]).abs().max()


def test_only_w_v_changes_and_restore_is_bitwise_exact():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    digest = state_hash(model)
    edit = tiny_dinm().edit(model, tok, [tiny_instance(2)])
    arch = resolve_architecture(model)
    layer = edit.instances[0].details["layer"]
    assert edit.changed == [arch.w_v_param_name(layer)]
    for name, p in model.named_parameters():
        if name == edit.changed[0]:
            assert not torch.equal(p, before[name])
        else:
            assert torch.equal(p, before[name]), name
    assert state_hash(model) != digest
    edit.restore()
    assert state_hash(model) == digest


def test_sequential_edits_restore_to_the_very_first_state():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    digest = state_hash(model)
    edit = tiny_dinm(layer=None).edit(model, tok, [tiny_instance(s, s) for s in range(3)])
    assert len(edit.instances) == 3
    edit.restore()
    assert state_hash(model) == digest


def test_kl_term_keeps_the_constraint_distribution_closer():
    tok, inst = tiny_tokenizer(), tiny_instance(3)
    kl_after = {}
    for kl_weight in (1.0, 0.0):
        model = tiny_model("llama")
        edit = tiny_dinm(lr=5e-2, steps=8, edit_weight=1.0, kl_weight=kl_weight, layer=2).edit(model, tok, [inst])
        kl_after[kl_weight] = edit.instances[0].losses[-1]["kl"]
    assert kl_after[1.0] < kl_after[0.0]


def test_reference_kl_no_grad_never_shapes_the_update():
    tok, inst = tiny_tokenizer(), tiny_instance(3)
    weights = []
    for opts in ({"kl_no_grad": True, "kl_weight": 1.0}, {"kl_weight": 0.0}, {"kl_weight": 1.0}):
        model = tiny_model("llama")
        edit = tiny_dinm(layer=2, **opts).edit(model, tok, [inst])
        weights.append(model.get_parameter(edit.changed[0]).detach().clone())
    assert torch.equal(weights[0], weights[1])  # KL under no_grad == no KL at all
    assert not torch.equal(weights[1], weights[2])


def test_locate_once_reuses_the_first_layer():
    tok = tiny_tokenizer()
    insts = [tiny_instance(s, s) for s in range(6)]
    compat = DINM(suffix=None, steps=1, locate_once=True)
    model = tiny_model("llama")
    edit = compat.edit(model, tok, insts)
    assert {r.details["layer"] for r in edit.instances} == {edit.instances[0].details["layer"]}
    assert all(r.details["distances"] is None for r in edit.instances[1:])
    default = DINM(suffix=None, steps=1).edit(tiny_model("llama"), tok, insts)
    assert all(r.details["distances"] is not None and len(r.details["distances"]) == 3 for r in default.instances)


def test_reference_location_compares_responses_alone():
    model, tok, inst = tiny_model("llama"), tiny_tokenizer(), tiny_instance(4)
    ours = DINM().locate(model, tok, inst)
    ref = DINM(locate_without_context=True).locate(model, tok, inst)
    assert len(ours.distances) == len(ref.distances) == 3
    assert ours.distances != ref.distances


def test_reference_compat_sets_all_three_flags():
    cfg = DINM(reference_compat=True).config
    assert cfg.flag("kl_no_grad") and cfg.flag("locate_once") and cfg.flag("locate_without_context")
    assert not DINM(reference_compat=True, kl_no_grad=False).config.flag("kl_no_grad")


def test_bad_layer_missing_unsafe_and_nan_loss_leave_model_unchanged():
    import dataclasses

    model, tok = tiny_model("llama"), tiny_tokenizer()
    digest = state_hash(model)
    with pytest.raises(ConfigError, match="layer 7 out of range"):
        tiny_dinm(layer=7).edit(model, tok, [tiny_instance(0)])
    assert state_hash(model) == digest
    no_unsafe = dataclasses.replace(tiny_instance(0), unsafe_response=None)
    with pytest.raises(DataError, match="unsafe generation"):
        tiny_dinm().edit(model, tok, [tiny_instance(1), no_unsafe])  # the first edit is undone too
    assert state_hash(model) == digest
    with pytest.raises(EditError, match="non-finite loss"):
        tiny_dinm(lr=math.inf).edit(model, tok, [tiny_instance(2)])
    assert state_hash(model) == digest


def test_requires_grad_flags_are_put_back():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    tiny_dinm().edit(model, tok, [tiny_instance(0)]).restore()
    assert all(p.requires_grad for p in model.parameters())


def test_get_method_reads_yaml_and_rejects_unknown_options(tmp_path):
    good = tmp_path / "dinm.yaml"
    good.write_text("method: dinm\nlr: 1.0e-5\nsteps: 3\n")
    assert get_method("dinm", good).config.lr == 1e-5
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1.0e-5\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match="learning_rate"):
        get_method("dinm", bad)
    with pytest.raises(ValueError, match="unknown method"):
        get_method("rome")


@pytest.mark.slow
def test_embedded_edit_halves_the_safe_response_nll(embedded, sample):
    model, tok = embedded
    digest = state_hash(model)
    edit = DINM().edit(model, tok, [sample[0]])
    record = edit.instances[0]
    assert record.details["nll_after"] <= 0.5 * record.details["nll_before"], record
    edit.restore()
    assert state_hash(model) == digest


def test_cli_sequential_edit_saves_a_loadable_model(tmp_path, capsys):
    import json

    from transformers import AutoModelForCausalLM

    from safeedit.cli import main

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "data.json"
    data.write_text(json.dumps([tiny_instance(s, s).to_record() for s in range(3)]))
    out = tmp_path / "edited"
    rc = main(["edit", "--model", str(model_dir), "--raw", "--data", str(data), "--index", "0-2",
               "--sequential", "--steps", "2", "--lr", "0.01", "--max-new-tokens", "4", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.count("=== instance") == 3 and "loss per step" in printed
    saved = AutoModelForCausalLM.from_pretrained(out)
    original = tiny_model("llama")
    meta = json.loads((out / "safeedit.json").read_text())
    changed = {f"model.layers.{e['details']['layer']}.mlp.down_proj.weight" for e in meta["edits"]}
    for name, p in saved.named_parameters():
        assert torch.equal(p, original.get_parameter(name)) != (name in changed), name
    assert main(["edit", "--model", str(model_dir), "--raw", "--data", str(data), "--index", "0",
                 "--sequential", "--steps", "1", "--out", str(out)]) == 2  # refuses a non-empty folder


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gpt_neox"])
def test_location_prefills_the_prompt_once_and_equals_two_full_passes(family):
    """The shared-prompt location (one prompt prefill, each response from a copy of its cache) gives
    the distances and the toxic layer's input of two independent full passes over prompt + response."""
    from safeedit.methods.locate import _layer_outputs, locate_in_context

    model = tiny_model(family, seed=5)
    arch = resolve_architecture(model)
    prompt, safe, unsafe = [5, 6, 7, 8, 9, 10, 11], [20, 21, 22], [90, 91, 92, 93, 94]
    full = []
    for response in (safe, unsafe):
        ids = torch.tensor([prompt + response])
        full.append(_layer_outputs(model, arch, ids, torch.ones_like(ids)))
    expected = [float(torch.linalg.vector_norm(a[0, len(prompt):].mean(0) - b[0, len(prompt):].mean(0)))
                for a, b in zip(*full)]
    location = locate_in_context(model, arch, prompt, safe, unsafe)
    assert location.distances == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert location.layer == max(range(len(expected)), key=expected.__getitem__)
    # the toxic layer's input over prompt + safe response (what a grouped edit reuses) is the full pass's
    if location.layer >= 1:
        torch.testing.assert_close(location.safe_layer_input, full[0][location.layer - 1], rtol=1e-4, atol=1e-5)
    else:
        assert location.safe_layer_input is None


@pytest.mark.parametrize("toxic", [0, 1, 2])
def test_location_finds_the_only_layer_that_separates_the_responses(toxic):
    """Constructed case: attention outputs and every FFN but one write nothing to the residual
    stream, so the streams of the two responses differ only by embeddings until layer ``toxic``,
    whose (scaled-up) FFN then pulls them apart; later layers change nothing."""
    from safeedit.methods.locate import locate_in_context

    model = tiny_model("llama", seed=3)
    arch = resolve_architecture(model)
    with torch.no_grad():
        for i, layer in enumerate(arch.decoder_layers(model)):
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.mul_(200.0 if i == toxic else 0.0)
    location = locate_in_context(model, arch, prompt_ids=[5, 6, 7, 8], safe_ids=[10, 11, 12], unsafe_ids=[90, 91, 92])
    d = location.distances
    assert location.layer == toxic
    assert all(d[j] < d[toxic] for j in range(toxic))
    assert all(d[j] == pytest.approx(d[toxic], rel=1e-6) for j in range(toxic, 3))
    if toxic >= 1:  # layer toxic-1's output over prompt + safe response, as one full pass computes it
        from safeedit.methods.locate import _layer_outputs

        ids = torch.tensor([[5, 6, 7, 8, 10, 11, 12]])
        full = _layer_outputs(model, arch, ids, torch.ones_like(ids))
        torch.testing.assert_close(location.safe_layer_input, full[toxic - 1], rtol=1e-5, atol=1e-5)


def test_location_reuses_the_previous_prompts_states_for_the_tokens_they_share():
    """With a PromptReuse holder, a location prefills only the prompt tokens after the ones it shares
    with the previous prompt; distances and the toxic layer's input equal a location without it."""
    from safeedit.methods.locate import PromptReuse, locate_in_context

    model = tiny_model("llama", seed=5)
    arch = resolve_architecture(model)
    base = [5, 6, 7, 8, 9, 10, 11]
    prompts = [base, [5, 6, 7, 8, 40, 41], [5, 6, 7, 8, 40, 41], [5, 6, 7], [70, 71, 72], []]
    shared = [0, 4, 6, 3, 0, 0]
    reuse = PromptReuse()
    for prompt, expect_shared in zip(prompts, shared):
        before = reuse.reused_tokens
        got = locate_in_context(model, arch, prompt, [20, 21, 22], [90, 91, 92, 93], reuse=reuse)
        assert reuse.reused_tokens - before == expect_shared
        fresh = locate_in_context(model, arch, prompt, [20, 21, 22], [90, 91, 92, 93])
        assert got.layer == fresh.layer
        assert got.distances == pytest.approx(fresh.distances, rel=1e-4, abs=1e-5)
        if fresh.safe_layer_input is None:
            assert got.safe_layer_input is None
        else:
            torch.testing.assert_close(got.safe_layer_input, fresh.safe_layer_input, rtol=1e-4, atol=1e-5)
        assert reuse.ids == prompt  # the holder now keeps this prompt's states, responses cut off
        assert reuse.cache is None or reuse.cache.get_seq_length() == len(prompt)
    reuse.clear()
    assert reuse.cache is None and reuse.outputs is None and reuse.ids == []
