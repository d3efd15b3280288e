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


def locate_in_context(
    model, arch: ArchitectureMap, prompt_ids: list[int], safe_ids: list[int], unsafe_ids: list[int]
) -> Location:
    """Corrected location: responses in context, mean over response tokens, L2 per layer.

    The two sequences share the prompt, which is most of their tokens at SafeEdit's long jailbreak
    inputs: it is prefilled once, and each response continues from its own copy of that cache
    (equal to two full passes up to float rounding; a test checks it)."""
    import copy

    from transformers import DynamicCache

    device = next(model.parameters()).device
    n = len(prompt_ids)
    cache = DynamicCache(config=model.config)
    prompt_outputs = None
    if n:
        ids = torch.tensor([prompt_ids], device=device)
        prompt_outputs = _layer_outputs(model, arch, ids, torch.ones_like(ids), cache=cache,
                                        position_ids=torch.arange(n, device=device)[None])
    pooled, safe_outputs = [], None
    for response, own_cache in ((safe_ids, copy.deepcopy(cache)), (unsafe_ids, cache)):
        ids = torch.tensor([response], device=device)
        outputs = _layer_outputs(model, arch, ids, torch.ones((1, n + len(response)), dtype=torch.long, device=device),
                                 cache=own_cache, position_ids=torch.arange(n, n + len(response), device=device)[None])
        pooled.append([h[0].float().mean(dim=0) for h in outputs])
        safe_outputs = outputs if safe_outputs is None else safe_outputs
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
