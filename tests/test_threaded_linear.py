"""Small-batch linear layers split over CPU threads give F.linear's results, and only where meant."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from safeedit.lm.threaded_linear import (
    MAX_ROWS,
    ThreadedLinear,
    small_batch_linear,
    thread_small_linears,
    threaded_parts,
)
from tests.conftest import tiny_model, tiny_tokenizer


@pytest.fixture
def threads():
    """Run the test with the given number of torch threads, then restore the previous setting."""
    before = torch.get_num_threads()

    def use(n: int) -> None:
        torch.set_num_threads(n)

    yield use
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(1, 24), (5, 24), (2, 3, 24), (MAX_ROWS, 24)])
@pytest.mark.parametrize("bias", [False, True])
def test_values_equal_f_linear(threads, shape, bias):
    threads(2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(48, 24, generator=g)
    b = torch.randn(48, generator=g) if bias else None
    with torch.no_grad():
        assert threaded_parts(x, w) == 2
        got = small_batch_linear(x, w, b)
    assert got.shape == F.linear(x, w, b).shape
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-6, atol=1e-6)


def test_slices_follow_the_threads_and_divide_the_output_rows(threads):
    x = torch.randn(3, 8)
    with torch.no_grad():
        threads(4)
        assert threaded_parts(x, torch.randn(12, 8)) == 4
        assert threaded_parts(x, torch.randn(9, 8)) == 3  # 4 does not divide 9
        assert threaded_parts(x, torch.randn(7, 8)) == 1  # a prime: F.linear
        threads(1)
        assert threaded_parts(x, torch.randn(12, 8)) == 1


def test_plain_f_linear_for_many_rows_and_for_training(threads):
    threads(2)
    w = torch.randn(16, 8)
    with torch.no_grad():
        assert threaded_parts(torch.randn(MAX_ROWS + 1, 8), w) == 1
        assert threaded_parts(torch.randn(2, 0, 8), w) == 1
    x = torch.randn(3, 8, requires_grad=True)
    assert threaded_parts(x, w) == 1  # autograd needs x's gradient: unchanged training numerics
    assert threaded_parts(x.detach(), w.requires_grad_()) == 1
    assert threaded_parts(x.detach(), w.detach()) == 2  # nothing requires grad
    with torch.no_grad():
        assert threaded_parts(x, torch.randn(8, 16).t()) == 1  # a transposed view cannot be sliced by view()
        assert threaded_parts(x.to(torch.int64), w) == 1


def test_switching_keeps_parameters_and_state_dict_and_leaves_other_modules():
    class Custom(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Custom(16, 4))
    state = copy.deepcopy(model.state_dict())
    weight = model[0].weight
    assert thread_small_linears(model) == 1
    assert type(model[0]) is ThreadedLinear and isinstance(model[0], nn.Linear)
    assert type(model[2]) is Custom  # subclasses keep their own forward
    assert model[0].weight is weight
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert thread_small_linears(model) == 0  # idempotent
    copy.deepcopy(model)  # the switched class pickles and copies like any module


def test_a_switched_model_answers_as_before(threads):
    """Greedy answers of a tiny Llama with threaded linears equal the plain model's, and training
    through it (gradients) is unchanged."""
    from safeedit.lm import generate

    threads(2)
    tok = tiny_tokenizer()
    plain = tiny_model("llama", seed=3)
    switched = copy.deepcopy(plain)
    assert thread_small_linears(switched) > 0
    prompts = ["alpha beta", "gamma delta epsilon zeta", "eta"]
    kwargs = dict(max_new_tokens=12, chat=False, batch_size=3)
    assert generate(switched, tok, prompts, **kwargs) == generate(plain, tok, prompts, **kwargs)
    ids = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        torch.testing.assert_close(switched(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    for m in (plain, switched):
        m.zero_grad()
        m(input_ids=ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), switched.named_parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_load_model_threads_a_cpu_models_linears(embedded):
    model, _tok = embedded
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is ThreadedLinear for m in linears)
