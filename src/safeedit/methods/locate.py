"""Find the toxic layer: where the hidden states of a safe and an unsafe response differ most.

Default (corrected) procedure
    Each response is placed after the adversarial input it answers (the same formatted prompt
    the edit trains on), so the hidden states describe the response *in context*. For every
    decoder layer we take the layer's output (the residual stream, before any final norm), mean-
    pool it over the response tokens only (no prompt, no padding; the two responses differ in
    length, so pooling makes them comparable), and measure the L2 distance between the two pooled
    vectors. The toxic layer is the argmax.

Reference-compatible procedure (``without_context=True``)
    As EasyEdit does: the two responses alone, padded to a common length in one batch, Hugging
    Face's ``output_hidden_states`` (whose last entry already has the final norm applied), and the
    Frobenius norm of the difference of the whole [tokens x hidden] matrices, padding included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from safeedit.lm.arch import ArchitectureMap
from safeedit.lm.forward_args import cache_arg, keep_last_logits
from safeedit.lm.generation import left_pad


@dataclass(frozen=True)
class Location:
    layer: int
    distances: list[float]  # one per decoder layer
    #: the hidden states entering the toxic layer over prompt + safe response (in-context location,
    #: layer >= 1): exactly what an edit of that layer on the same sequence caches, so it can be reused
    safe_layer_input: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def table(self) -> str:
        top = max(self.distances) or 1.0
        lines = ["layer  distance"]
        for i, d in enumerate(self.distances):
            bar = "#" * int(round(30 * d / top))
            lines.append(f"{i:5d}  {d:8.3f}  {bar}{'  <- toxic layer' if i == self.layer else ''}")
        return "\n".join(lines)


def _layer_outputs(model, arch: ArchitectureMap, input_ids: torch.Tensor, attention: torch.Tensor,
                   cache=None, position_ids: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Every decoder layer's output hidden states over ``input_ids``, captured with forward hooks.

    With ``cache`` (a transformers cache already holding the tokens before ``input_ids``) the pass
    continues from it and fills it; ``attention`` then spans cached + new tokens."""
    captured: list[torch.Tensor] = []

    def grab(_module, _args, output):
        captured.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [layer.register_forward_hook(grab) for layer in arch.decoder_layers(model)]
    # only the hidden states are read: skip the [tokens x vocab] logits (about 200 MB for two
    # 500-token sequences of a 49k vocabulary), the largest tensor of the pass
    keep = keep_last_logits(model)
    if cache is not None:
        keep[cache_arg(model)] = cache
        keep["position_ids"] = position_ids
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention, use_cache=cache is not None, **keep)
    finally:
        for h in handles:
            h.remove()
    return captured


def _keep_first(cache, n: int) -> None:
    """Cut every layer of a DynamicCache to its first ``n`` tokens (views: the next update copies)."""
    for layer in cache.layers:
        if layer.keys is not None and layer.keys.numel():
            layer.keys, layer.values = layer.keys[..., :n, :], layer.values[..., :n, :]


class PromptReuse:
    """The unedited model's states over the last located prompt: its KV cache and every layer's
    output. A location given this holder prefills only the prompt tokens after those it shares with
    that prompt, then keeps its own prompt's states for the next. SafeEdit's adversarial prompts
    share long attack templates, so locating them in sorted order skips much of their prefill
    (:meth:`safeedit.methods.dinm.DINM.group_keys`). Holds one prompt's states (~115 KiB a token
    for SmolLM2-135M); :meth:`clear` frees them."""

    def __init__(self):
        self.ids: list[int] = []
        self.cache = None
        self.outputs: list[torch.Tensor] | None = None
        self.reused_tokens = 0  # prompt tokens whose prefill was skipped, over all locations

    def clear(self) -> None:
        self.ids, self.cache, self.outputs = [], None, None

    def take(self, prompt_ids: list[int]) -> tuple[int, object, list[torch.Tensor] | None]:
        """How many leading tokens ``prompt_ids`` shares with the kept prompt, the kept cache cut to
        them and the kept layer outputs over them; the holder is emptied (the caller refills it)."""
        from safeedit.lm.prefix import shared_prefix_length

        n = shared_prefix_length(self.ids, prompt_ids)
        cache, outputs = self.cache, self.outputs
        self.clear()
        if not n or cache is None:
            return 0, None, None
        _keep_first(cache, n)
        self.reused_tokens += n
        return n, cache, [h[:, :n] for h in outputs]


def locate_in_context(
    model, arch: ArchitectureMap, prompt_ids: list[int], safe_ids: list[int], unsafe_ids: list[int],
    reuse: PromptReuse | None = None,
) -> Location:
    """Corrected location: responses in context, mean over response tokens, L2 per layer.

    The two sequences share the prompt, which is most of their tokens at SafeEdit's long jailbreak
    inputs: it is prefilled once, and each response continues from its own copy of that cache
    (equal to two full passes up to float rounding; a test checks it). With ``reuse``, the prompt
    tokens shared with the previous location's prompt come from its states (see :class:`PromptReuse`)."""
    import copy

    from transformers import DynamicCache

    device = next(model.parameters()).device
    n = len(prompt_ids)
    done, cache, prompt_outputs = reuse.take(prompt_ids) if reuse is not None else (0, None, None)
    if cache is None:
        cache = DynamicCache(config=model.config)
    if done < n:
        ids = torch.tensor([prompt_ids[done:]], device=device)
        rest = _layer_outputs(model, arch, ids, torch.ones((1, n), dtype=torch.long, device=device), cache=cache,
                              position_ids=torch.arange(done, n, device=device)[None])
        prompt_outputs = rest if prompt_outputs is None else [torch.cat(p, dim=1) for p in zip(prompt_outputs, rest)]
    pooled, safe_outputs = [], None
    for response, own_cache in ((safe_ids, copy.deepcopy(cache)), (unsafe_ids, cache)):
        ids = torch.tensor([response], device=device)
        outputs = _layer_outputs(model, arch, ids, torch.ones((1, n + len(response)), dtype=torch.long, device=device),
                                 cache=own_cache, position_ids=torch.arange(n, n + len(response), device=device)[None])
        pooled.append([h[0].float().mean(dim=0) for h in outputs])
        safe_outputs = outputs if safe_outputs is None else safe_outputs
    if reuse is not None and n:
        _keep_first(cache, n)  # the unsafe response's tokens off again: the prompt's states for the next location
        reuse.ids, reuse.cache, reuse.outputs = list(prompt_ids), cache, prompt_outputs
    del cache
    distances = [float(torch.linalg.vector_norm(a - b)) for a, b in zip(*pooled)]
    layer = int(torch.tensor(distances).argmax())
    safe_input = None
    if layer >= 1:  # decoder layer i-1's output is layer i's input, over prompt + safe response
        parts = ([prompt_outputs[layer - 1]] if prompt_outputs is not None else []) + [safe_outputs[layer - 1]]
        safe_input = torch.cat(parts, dim=1)
    return Location(layer=layer, distances=distances, safe_layer_input=safe_input)


def locate_reference(model, safe_ids: list[int], unsafe_ids: list[int], pad_id: int) -> Location:
    """EasyEdit-style location: responses alone, padded together, full-matrix norm incl. padding."""
    device = next(model.parameters()).device
    input_ids, attention = left_pad([safe_ids, unsafe_ids], pad_id, device)
    with torch.no_grad():
        hidden = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=True, use_cache=False).hidden_states
    distances = [float(torch.linalg.matrix_norm((h[0] - h[1]).float())) for h in hidden[1:]]
    return Location(layer=int(torch.tensor(distances).argmax()), distances=distances)
