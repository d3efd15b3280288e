"""FT-L on tiny random models: what changes, the norm constraint, early stop, the two objectives."""

import pytest
import torch
import torch.nn.functional as F

from safeedit.errors import ConfigError
from safeedit.lm import resolve_architecture
from safeedit.methods import FTL, get_method
from safeedit.methods.sequences import build_sequence
from tests.conftest import tiny_instance, tiny_model, tiny_tokenizer
from tests.test_dinm import state_hash


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread (no OpenMP spinning on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_changes_exactly_the_configured_matrix_and_restores_bit_for_bit():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    digest = state_hash(model)
    edit = FTL(layer=2, lr=1e-2, steps=4).edit(model, tok, [tiny_instance(1)])
    name = resolve_architecture(model).w_v_param_name(2)
    assert edit.changed == [name]
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (n == name), n
    d = edit.instances[0].details
    assert d["layer"] == 2 and d["steps_taken"] == 4 and d["nll_after"] < d["nll_before"]
    edit.restore()
    assert state_hash(model) == digest


def test_norm_constraint_bounds_every_weight_change():
    tok, inst, eps = tiny_tokenizer(), tiny_instance(2), 1e-4
    changes = {}
    for constraint in (None, eps):
        model = tiny_model("llama")
        w0 = resolve_architecture(model).w_v_weight(model, 1).detach().clone()
        FTL(layer=1, lr=1e-2, steps=5, norm_constraint=constraint).edit(model, tok, [inst])
        changes[constraint] = (resolve_architecture(model).w_v_weight(model, 1).detach() - w0).abs().max().item()
    assert changes[None] > 10 * eps  # without it the step would leave the box
    assert 0 < changes[eps] <= eps * (1 + 1e-3)


def test_default_layer_keeps_the_reference_relative_depth():
    assert FTL().layer_for(32) == 21  # the reference's layer for 7B models
    assert FTL().layer_for(30) == 19
    assert FTL(layer=3).layer_for(30) == 3
    with pytest.raises(ConfigError):
        FTL(layer=5).layer_for(3)
    with pytest.raises(ConfigError):
        get_method("ft-l", objective="bag")


def test_early_stop_takes_no_step_when_the_loss_is_already_low():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    digest = state_hash(model)
    edit = FTL(layer=1, lr=1e-2, early_stop_loss=1e3).edit(model, tok, [tiny_instance(3)])
    assert edit.instances[0].details["steps_taken"] == 0 and len(edit.instances[0].losses) == 1
    assert state_hash(model) == digest


@pytest.mark.parametrize("objective", ["teacher_forced", "prompt_last"])
def test_objectives_score_what_they_document(objective):
    model, tok, inst = tiny_model("llama"), tiny_tokenizer(), tiny_instance(4)
    seq = build_sequence(tok, inst.adversarial_prompt, inst.safe_response, chat=None, max_length=256)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq.ids])).logits[0]
    targets = torch.tensor(seq.ids[seq.target_start:])
    if objective == "teacher_forced":
        expected = F.cross_entropy(logits[seq.target_start - 1:-1], targets)
    else:  # every target token from the distribution at the last prompt position
        expected = F.cross_entropy(logits[seq.target_start - 1].expand(len(targets), -1), targets)
    edit = FTL(layer=1, steps=0, objective=objective).edit(model, tok, [inst])
    assert edit.instances[0].details["nll_before"] == pytest.approx(expected.item(), rel=1e-5)
    edit.restore()
