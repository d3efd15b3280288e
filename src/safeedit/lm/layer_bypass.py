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
