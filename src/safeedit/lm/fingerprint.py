"""A cheap, content-based fingerprint of a model's weights.

Hashing every byte of a 7B model takes tens of seconds, so we hash each tensor's name, shape,
dtype and a fixed strided sample of up to 4096 of its values. Any real edit of a matrix changes
many values and therefore the sample with near certainty; the bench runner additionally checks
the edited tensors bit for bit after each restore (see ``Edit.restore``).
"""

from __future__ import annotations

import hashlib

import torch

SAMPLE_VALUES = 4096


def model_fingerprint(model) -> str:
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLE_VALUES)
            sample = flat[::step][:SAMPLE_VALUES].to("cpu", torch.float32).contiguous()
            h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
