"""Argument groups and helpers shared by the sub-command modules."""

from __future__ import annotations

import argparse
import sys
import time


def add_model_args(p: argparse.ArgumentParser, default: str | None = "smollm2-135m") -> None:
    """--model/--dtype/--device/--trust-remote-code. ``default=None``: the method config's model,
    else the embedded one (see :func:`safeedit.methods.options.choose_model`)."""
    from safeedit.lm.loading import DEFAULT_MODEL

    shown = default or f"the --config file's model, else {DEFAULT_MODEL}"
    p.add_argument("--model", default=default, help=f"hub id, local folder, .gguf file or alias (default: {shown})")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")


def add_prompt_mode(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--chat", dest="chat", action="store_true", default=None, help="use the chat template (default when the model has one)")
    g.add_argument("--raw", dest="chat", action="store_false", help="raw text prompts (the paper's reference mode)")


def load_from_args(args, model_name: str | None = None):
    from safeedit.lm import load_model

    name = model_name or args.model
    start = time.perf_counter()
    model, tokenizer = load_model(name, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    print(f"loaded {name} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return model, tokenizer


def parse_indices(text: str) -> list[int]:
    """'0,1,2' or '0-4' or '0-2,7' -> sorted unique indices."""
    from safeedit.errors import SelectionError

    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.update(range(int(lo), int(hi) + 1))
            elif part:
                out.add(int(part))
        except ValueError:
            raise SelectionError(f"--index {text!r}: {part!r} is not a number or a range like 0-4") from None
    return sorted(out)
