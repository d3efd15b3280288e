"""GPU check: bf16 DINM edit seconds and post-edit generation tokens/s, grouped vs one at a time.

Made for a GPU machine with no hub and no internet: the models are *randomly initialised* from
configs of the real shapes (SmolLM2-135M, and Llama-2-7B as in the paper) and a word-level
tokenizer over their vocabulary is built here, so only this repository's source travels. Random
weights make the safety numbers meaningless but the shapes, hence the timings, real. The toxic layer
is fixed to the last one (where the paper finds it for Mistral-7B and we find it on SmolLM2).

For each shape: K instances edited (a) one at a time (``DINM.edit``, generate its 5 inputs,
restore), (b) grouped (``DINM.group_edit``, the 5K pre-edit inputs answered in one call, then the
5K post-edit inputs in one call with per-row W_V) and (c) grouped + prefix reuse (pre- and post-edit
answers in one pass that runs the shared tokens below the toxic layer once and keeps one KV cache,
``safeedit.lm.prefix.generate_before_and_after``). Printed: edit seconds per instance, post-edit
new tokens/s, pre+post generation seconds per instance, and the correctness check: the share of identical greedy outputs and the
largest W_V difference between grouped and sequential. The check is repeated in float32 (K=4,
32 new tokens): in bf16 the batched per-row matmul rounds differently from the plain one, Adam's
normalised first steps lift that where a gradient element is tiny, and random weights give
near-tied logits, so bf16 outputs of the two paths can differ without either being wrong.

Usage: python benchmarks/gpu_check.py [--shapes smollm2-135m,llama-2-7b] [--k 8] [--tiny]
``--tiny``: a tiny config on whatever device there is (CPU here), for checking the script itself.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SHAPES = {
    "smollm2-135m": dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True),
    "llama-2-7b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False),
    "tiny": dict(num_hidden_layers=3, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024, tie_word_embeddings=False),
}


def word_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 2)} | {"<unk>": vocab_size - 2, "</s>": vocab_size - 1}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    tok.padding_side = "left"
    return tok


def instances(n: int, vocab: int, prompt_len: int, seed: int = 0):
    """SafeEdit-shaped instances in random words: long attack prompts, short questions."""
    from safeedit.data import GeneralizationInputs, KnowledgeConstraint, SafeEditInstance

    rng = random.Random(seed)

    def words(k):
        return " ".join(f"w{rng.randrange(vocab - 2)}" for _ in range(k))

    out = []
    for i in range(n):
        long = lambda: words(rng.randint(prompt_len // 2, prompt_len))  # noqa: E731
        out.append(SafeEditInstance(
            position=i, id=i, category="gpu-check", question=words(16), adversarial_prompt=long(),
            safe_response=words(rng.randint(32, 96)), unsafe_response=words(64),
            knowledge_constraint=KnowledgeConstraint(prompt=words(24), answer=words(rng.randint(16, 48))),
            generalization=GeneralizationInputs(words(16), long(), words(20), long()), source="gpu-check"))
    return out


def build(shape: str, device: str, dtype):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=SHAPES[shape]["vocab_size"] - 1,
                      pad_token_id=SHAPES[shape]["vocab_size"] - 1)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def check(shape: str, args, device: str, dtype, k: int | None = None, new_tokens: int | None = None) -> list:
    import torch

    from safeedit.lm import generate
    from safeedit.lm.generation import GenerationStats
    from safeedit.lm.prefix import generate_before_and_after
    from safeedit.methods import DINM
    from safeedit.methods.dinm import PAPER_SUFFIX

    t0 = time.perf_counter()
    model = build(shape, device, dtype)
    tok = word_tokenizer(model.config.vocab_size)
    insts = instances(k or args.k, model.config.vocab_size, args.prompt_len)
    layer = model.config.num_hidden_layers - 1
    method = DINM(suffix=PAPER_SUFFIX, steps=args.steps, lr=args.lr, layer=layer)
    gen = dict(max_new_tokens=new_tokens or args.new_tokens, chat=False)
    dname = str(dtype).replace("torch.", "")
    print(f"[{shape} {dname}] built in {time.perf_counter() - t0:.1f} s on {device}; K={len(insts)}, "
          f"{args.steps} steps, toxic layer {layer}, {gen['max_new_tokens']} new tokens", flush=True)

    # (a) one at a time
    edit_s = gen_s = 0.0
    one_texts, one_weights, stats_a = [], [], GenerationStats()
    for inst in insts:
        sync()
        t = time.perf_counter()
        edit = method.edit(model, tok, [inst])
        sync()
        edit_s += time.perf_counter() - t
        one_weights.append(model.get_parameter(edit.changed[0]).detach().float().cpu().clone())
        t = time.perf_counter()
        one_texts += generate(model, tok, [method.eval_prompt(p) for p in inst.eval_inputs().values()],
                              batch_size=5, stats=stats_a, **gen)
        sync()
        gen_s += time.perf_counter() - t
        edit.restore()

    # (b) grouped: pre-edit answers, then post-edit answers in one call with per-row W_V
    sync()
    t = time.perf_counter()
    group = method.group_edit(model, tok, insts)
    sync()
    g_edit_s = time.perf_counter() - t
    inputs = [list(i.eval_inputs().values()) for i in insts]
    pre = [p for ps in inputs for p in ps]
    prompts = [method.eval_prompt(p) for p in pre]
    owners = [k for k, ps in enumerate(inputs) for _ in ps]
    rows = lambda idx: group.rows([owners[i] for i in idx])  # noqa: E731
    batch = len(prompts)
    t = time.perf_counter()
    generate(model, tok, pre, batch_size=batch, **gen)
    sync()
    pre_s = time.perf_counter() - t
    stats_b = GenerationStats()
    t = time.perf_counter()
    grouped_texts = generate(model, tok, prompts, batch_size=batch, stats=stats_b, row_context=rows, **gen)
    sync()
    g_gen_s = time.perf_counter() - t

    # (c) grouped + prefix reuse: pre- and post-edit answers in one pass that shares the prefill below
    # the toxic layer and one KV cache (the pre-edit part timed inside, the rest is post-edit)
    stats_c = GenerationStats()
    t = time.perf_counter()
    one_batch = batch * (args.prompt_len * 2 + gen["max_new_tokens"])  # all rows in one batch, as in (b)
    _, reuse_texts = generate_before_and_after(model, tok, pre, prompts, layer=layer, edited=rows, stats=stats_c,
                                               batch_tokens=one_batch, **gen)
    sync()
    c_pre_s = stats_c.pre_edit_s
    c_gen_s = time.perf_counter() - t - c_pre_s

    same = sum(a == b for a, b in zip(one_texts, grouped_texts))
    same_reuse = sum(a == b for a, b in zip(grouped_texts, reuse_texts))
    dw = max(float((group.weights[k].float().cpu() - w).abs().max()) for k, w in enumerate(one_weights))
    delta = max(float((w - model.get_parameter(method_name(model, layer)).detach().float().cpu()).abs().max())
                for w in one_weights)
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_available() else "-"
    del model, group
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    n = len(insts)
    name = f"{shape} {dname}"
    return [
        [name, "one at a time", f"{edit_s / n:.3f}", f"{stats_a.new_tokens / gen_s:.0f}", "-", f"{(edit_s + gen_s) / n:.2f}",
         "", "", peak],
        [name, f"grouped (K={n})", f"{g_edit_s / n:.3f}", f"{stats_b.new_tokens / g_gen_s:.0f}",
         f"{(pre_s + g_gen_s) / n:.2f}", f"{(g_edit_s + g_gen_s) / n:.2f}",
         f"{same}/{len(prompts)} vs one at a time", f"{dw:.2e} (edit {delta:.2e})", peak],
        [name, f"grouped + prefix reuse (K={n})", f"{g_edit_s / n:.3f}",
         f"{(stats_c.new_tokens - stats_c.pre_edit_tokens) / c_gen_s:.0f}",
         f"{(c_pre_s + c_gen_s) / n:.2f}", f"{(g_edit_s + c_gen_s) / n:.2f}",
         f"{same_reuse}/{len(prompts)} vs grouped", "", peak],
    ]


def method_name(model, layer):
    from safeedit.lm import resolve_architecture

    return resolve_architecture(model).w_v_param_name(layer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="smollm2-135m,llama-2-7b")
    ap.add_argument("--k", type=int, default=8, help="instances per group")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=384, help="words in the longest prompts")
    ap.add_argument("--tiny", action="store_true", help="tiny config, fp32 on CPU: checks the script itself")
    ap.add_argument("--no-fp32", action="store_true", help="skip the float32 correctness rows (K=4, 32 tokens)")
    args = ap.parse_args()
    import torch
    import transformers

    from _common import print_table  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        shapes, dtype = ["tiny"], torch.float32
        args.k, args.steps, args.new_tokens, args.prompt_len = min(args.k, 3), min(args.steps, 3), min(args.new_tokens, 8), 48
    else:
        shapes, dtype = args.shapes.split(","), torch.bfloat16
        if device == "cpu":
            print("no GPU: the real shapes in bf16 on a CPU would take hours; use --tiny to check the script", file=sys.stderr)
            raise SystemExit(2)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {name}", flush=True)
    rows = []
    for shape in shapes:
        rows += check(shape, args, device, dtype)
    if not args.tiny and not args.no_fp32:
        # the correctness check again in float32: bf16 rounding differs between the batched per-row
        # matmul and the plain one, and Adam's normalised steps lift that where a gradient is tiny
        for shape in shapes:
            rows += check(shape, args, device, torch.float32, k=4, new_tokens=32)
    print()
    print_table(["model", "path", "edit s / instance", "post-edit new tok/s", "pre+post generate s / instance",
                 "edit+post generate s / instance", "identical outputs", "max |dW| grouped vs sequential",
                 "peak GPU memory"], rows)


if __name__ == "__main__":
    main()
