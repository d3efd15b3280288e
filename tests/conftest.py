"""Shared fixtures: the SafeEdit sample from ../shared, tiny random models, the embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAFEEDIT_SHARED", REPO.parent / "shared"))
SAMPLE = SHARED / "data" / "safeedit" / "safeedit_sample.json"
THREE = SHARED / "data" / "safeedit" / "three_instances_for_editing.json"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_config(family: str):
    """A randomly initialised config of ``family`` small enough for unit tests (no downloads)."""
    import transformers as tf

    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=121, pad_token_id=121)
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "mistral":
        return tf.MistralConfig(**common)
    if family == "qwen2":
        return tf.Qwen2Config(**common)
    if family == "gemma":
        return tf.GemmaConfig(**common, head_dim=8)
    if family == "gemma2":
        return tf.Gemma2Config(**common, head_dim=8)
    if family == "gemma3_text":
        return tf.Gemma3TextConfig(**common, head_dim=8)
    if family == "phi3":
        return tf.Phi3Config(**common)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=3, n_head=4, n_positions=256,
                            bos_token_id=1, eos_token_id=121)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                num_attention_heads=4, max_position_embeddings=256,
                                bos_token_id=1, eos_token_id=121)
    raise KeyError(family)


def tiny_model(family: str = "llama", seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def sample_path() -> Path:
    if not SAMPLE.is_file():
        pytest.fail(f"SafeEdit sample not found at {SAMPLE}; ../shared must sit beside the repo")
    return SAMPLE


@pytest.fixture(scope="session")
def sample(sample_path):
    from safeedit.data import load_safeedit

    return load_safeedit(sample_path)


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, float32 on CPU."""
    from safeedit.lm import load_model

    return load_model("smollm2-135m", dtype="float32", device="cpu")


def tiny_tokenizer():
    """A word-level tokenizer over the tiny models' vocabulary: words w0..w119, EOS id 121."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(120)} | {"<unk>": 120, "</s>": 121}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    tok.padding_side = "left"
    return tok


def tiny_instance(seed: int = 0, key_offset: int = 0):
    """A SafeEdit instance written in the tiny vocabulary."""
    import random

    from safeedit.data import GeneralizationInputs, KnowledgeConstraint, SafeEditInstance

    rng = random.Random(seed)

    def words(n):
        return " ".join(f"w{rng.randrange(120)}" for _ in range(n))

    return SafeEditInstance(
        position=key_offset, id=seed, category="test", question=words(5), adversarial_prompt=words(20),
        safe_response=words(12), unsafe_response=words(12),
        knowledge_constraint=KnowledgeConstraint(prompt=words(8), answer=words(8)),
        generalization=GeneralizationInputs(words(5), words(20), words(20), words(20)), source="tiny",
    )
