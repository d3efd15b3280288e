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

import inspect
from dataclasses import dataclass, field

import torch

from safeedit.lm.arch import ArchitectureMap
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


def _layer_outputs(model, arch: ArchitectureMap, input_ids: torch.Tensor, attention: torch.Tensor) -> list[torch.Tensor]:
    """Every decoder layer's output hidden states, captured with forward hooks."""
    captured: list[torch.Tensor] = []

    def grab(_module, _args, output):
        captured.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [layer.register_forward_hook(grab) for layer in arch.decoder_layers(model)]
    # only the hidden states are read: skip the [tokens x vocab] logits (about 200 MB for two
    # 500-token sequences of a 49k vocabulary), the largest tensor of the pass
    params = inspect.signature(model.forward).parameters
    keep = next(({k: 1} for k in ("logits_to_keep", "num_logits_to_keep") if k in params), {})
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention, use_cache=False, **keep)
    finally:
        for h in handles:
            h.remove()
    return captured


def locate_in_context(
    model, arch: ArchitectureMap, prompt_ids: list[int], safe_ids: list[int], unsafe_ids: list[int]
) -> Location:
    """Corrected location: responses in context, mean over response tokens, L2 per layer."""
    device = next(model.parameters()).device
    pooled, safe_outputs = [], None
    for response in (safe_ids, unsafe_ids):
        ids = torch.tensor([prompt_ids + response], device=device)
        outputs = _layer_outputs(model, arch, ids, torch.ones_like(ids))
        pooled.append([h[0, len(prompt_ids):].float().mean(dim=0) for h in outputs])
        safe_outputs = outputs if safe_outputs is None else safe_outputs
    distances = [float(torch.linalg.vector_norm(a - b)) for a, b in zip(*pooled)]
    layer = int(torch.tensor(distances).argmax())
    # decoder layer i-1's output is layer i's input
    return Location(layer=layer, distances=distances, safe_layer_input=safe_outputs[layer - 1] if layer >= 1 else None)


def locate_reference(model, safe_ids: list[int], unsafe_ids: list[int], pad_id: int) -> Location:
    """EasyEdit-style location: responses alone, padded together, full-matrix norm incl. padding."""
    device = next(model.parameters()).device
    input_ids, attention = left_pad([safe_ids, unsafe_ids], pad_id, device)
    with torch.no_grad():
        hidden = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=True, use_cache=False).hidden_states
    distances = [float(torch.linalg.matrix_norm((h[0] - h[1]).float())) for h in hidden[1:]]
    return Location(layer=int(torch.tensor(distances).argmax()), distances=distances)
