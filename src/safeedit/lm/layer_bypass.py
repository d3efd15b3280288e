"""Run a decoder from layer L upward, on hidden states computed earlier for layer L's input.

An edit at layer L leaves everything below L unchanged, so the hidden states entering layer L can
be computed once and reused. Inside :func:`run_from_layer` the layers below L are identity
functions and a pre-hook on layer L swaps its input for the tensor ``feed()`` returns; the model's
own forward still builds the masks and position embeddings, so any architecture in the map works.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn


def layer_returns_tuple(layer: nn.Module, run_once: Callable[[], object]) -> bool:
    """Whether ``layer`` returns a tuple (older transformers) or a tensor; ``run_once`` runs the model."""
    seen: dict[str, bool] = {}

    def grab(_module, _args, output):
        seen["tuple"] = isinstance(output, tuple)

    handle = layer.register_forward_hook(grab)
    try:
        run_once()
    finally:
        handle.remove()
    return bool(seen.get("tuple"))


@contextmanager
def capturing_layer_input(layers: nn.ModuleList, layer: int) -> Iterator[dict]:
    """Inside: each forward stores layer ``layer``'s input in ``seen["input"]`` (detached) and
    whether the decoder layers return tuples in ``seen["tuple"]``."""
    seen: dict = {}

    def grab_input(_module, args, kwargs):
        seen["input"] = kwargs.get("hidden_states", args[0] if args else None).detach()

    def grab_type(_module, _args, output):
        seen["tuple"] = isinstance(output, tuple)

    handles = [layers[layer].register_forward_pre_hook(grab_input, with_kwargs=True),
               layers[0].register_forward_hook(grab_type)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capturing_module_io(layer: nn.Module, module: nn.Module) -> Iterator[dict]:
    """Inside: each forward stores ``module``'s input and output and ``layer``'s output (detached) in
    ``seen["input"]``, ``seen["output"]`` and ``seen["layer_output"]``."""
    seen: dict = {}

    def at_input(_m, args):
        seen["input"] = args[0].detach()

    def at_output(_m, _args, out):
        seen["output"] = out.detach()

    def at_layer(_m, _args, out):
        seen["layer_output"] = _layer_output(out).detach()

    handles = [module.register_forward_pre_hook(at_input), module.register_forward_hook(at_output),
               layer.register_forward_hook(at_layer)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def run_from_layer(layers: nn.ModuleList, layer: int, feed: Callable[[], torch.Tensor],
                   returns_tuple: bool) -> Iterator[None]:
    """Layers ``< layer`` pass their input through; layer ``layer`` receives ``feed()`` as its input."""

    def bypass(hidden_states, *args, **kwargs):
        return (hidden_states,) if returns_tuple else hidden_states

    def feed_input(_module, args, kwargs):
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = feed()
        else:
            args = (feed(), *args[1:])
        return args, kwargs

    # a forward set on the instance (accelerate's device hooks under device_map) is put back afterwards
    own_forwards = [layers[i].__dict__.get("forward") for i in range(layer)]
    for i in range(layer):
        layers[i].forward = bypass
    handle = layers[layer].register_forward_pre_hook(feed_input, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        for i, own in enumerate(own_forwards):
            if own is None:
                del layers[i].forward  # back to the class's forward
            else:
                layers[i].forward = own


@contextmanager
def run_after_layer(layers: nn.ModuleList, layer: int, feed: Callable[[], torch.Tensor],
                    returns_tuple: bool) -> Iterator[None]:
    """Layers ``< layer`` pass their input through and layer ``layer`` returns ``feed()`` as its
    output: the model runs only the layers above ``layer`` (and its head) on a given output."""

    def replaced(hidden_states, *args, **kwargs):
        out = feed()
        return (out,) if returns_tuple else out

    own = layers[layer].__dict__.get("forward")
    with run_from_layer(layers, layer, lambda: None, returns_tuple):
        layers[layer].forward = replaced
        try:
            yield
        finally:
            if own is None:
                del layers[layer].forward
            else:
                layers[layer].forward = own


def _layer_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def output_adds_module_output(model, layers: nn.ModuleList, layer: int, module: nn.Module) -> bool:
    """Whether layer ``layer``'s output is (something ``module`` does not change) + ``module``'s
    output, as in a pre-norm residual block whose last matrix is ``module`` (Llama, Mistral, Qwen2,
    GPT-2, GPT-NeoX's W_V). Checked on a four-token input by doubling the module's output: the layer
    output must move by exactly that output. A norm after the module (Gemma 2's post-FFN norm)
    fails the check."""
    device = next(model.parameters()).device
    ids = torch.arange(4, device=device)[None]
    seen: dict[str, torch.Tensor] = {}
    double = {"on": False}

    def at_module(_m, _args, out):
        seen["o"] = out.detach().float()
        return out * 2 if double["on"] else out

    def at_layer(_m, _args, out):
        seen["y2" if double["on"] else "y"] = _layer_output(out).detach().float()

    handles = [module.register_forward_hook(at_module), layers[layer].register_forward_hook(at_layer)]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
            o = seen["o"]
            double["on"] = True
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if any(k not in seen for k in ("y", "y2")) or seen["y"].shape != o.shape:
        return False
    y, y2 = seen["y"], seen["y2"]
    eps = torch.finfo(next(model.parameters()).dtype).eps
    # per element, so a residual stream with a few huge activations (attention sinks) does not
    # widen the tolerance elsewhere: the move must equal W_V's output up to the rounding of y and y2,
    # and somewhere W_V's output must be large enough against y for the two forms to differ
    err = (y2 - y - o).abs()
    allowed = 8 * eps * (y.abs() + y2.abs() + o.abs()) + torch.finfo(torch.float32).tiny
    visible = o.abs() > 64 * eps * (y.abs() + o.abs())
    return bool(visible.any()) and bool((err <= allowed).all())
