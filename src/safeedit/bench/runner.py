"""The benchmark loop: evaluate unedited → edit → evaluate edited → restore → verify, per instance.

A run folder is self-describing and resumable:

    run.json        config, prompt mode, generation settings, seed, model fingerprint, versions
    results.jsonl   one line per instance, appended and fsync'ed as it goes
    general.jsonl   KQA/CSum of the unedited model and of edited models of a sample of instances
    summary.json    aggregate scores (written at the end, from results.jsonl)
    report.md       tables; *.png charts

Pre-edit generations are cached under ``$SAFEEDIT_CACHE/generations`` keyed by the model
fingerprint, prompt mode and generation settings, so every later method and run reuses them.
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from safeedit.bench.fingerprint import model_fingerprint
from safeedit.bench.store import GenerationCache, JsonlStore, ResultsStore
from safeedit.data import EVAL_KEYS, load_safeedit
from safeedit.lm import generate, has_chat_template, load_model
from safeedit.lm.loading import cache_dir

RUN_FORMAT = 1


@dataclass
class BenchConfig:
    method: str = "dinm"  # "none" evaluates the unedited model
    model: str = "smollm2-135m"
    data: str = ""
    judge: str | None = None  # None: the default judge folder
    out: str = "runs/bench"
    limit: int | None = None
    indices: list[int] | None = None
    max_new_tokens: int = 128
    chat: bool | None = None
    batch_size: int = 8
    seed: int = 0
    method_config: str | None = None  # YAML of method options
    method_options: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    device: str | None = None
    kqa_n: int = 100  # TriviaQA items per general evaluation (0 disables)
    csum_n: int = 20  # XSum items per general evaluation (0 disables)
    general_instances: int = 3  # edited models (the first N instances) that also get KQA/CSum
    kqa_path: str | None = None
    csum_path: str | None = None

    def identity(self) -> dict[str, Any]:
        """What must match for a run folder to be resumed (not paths to outputs or progress bars)."""
        d = asdict(self)
        for k in ("out", "judge", "batch_size", "device"):
            d.pop(k)
        return d


class BenchError(RuntimeError):
    pass


def _versions() -> dict[str, str]:
    import transformers

    import safeedit

    return {"safeedit": safeedit.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _shared_general(name: str) -> Path:
    from safeedit.judge.data import shared_data_dir

    return shared_data_dir() / "general" / name


class BenchRun:
    def __init__(self, config: BenchConfig, progress: bool = True):
        self.config = config
        self.progress = progress
        self.out = Path(config.out)

    # -------------------------------------------------------------- set-up
    def _check_or_write_run_json(self, meta: dict[str, Any]) -> None:
        path = self.out / "run.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("config_identity") != meta["config_identity"] or old.get("model_fingerprint") != meta["model_fingerprint"]:
                diff = sorted(k for k in meta["config_identity"] if old.get("config_identity", {}).get(k) != meta["config_identity"][k])
                raise BenchError(f"{self.out} holds a run with different settings ({', '.join(diff) or 'model weights'}); "
                                 "use a new --out folder")
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        tmp.replace(path)

    def _select(self, data) -> list:
        instances = data.instances
        if self.config.indices is not None:
            for i in self.config.indices:
                if not 0 <= i < len(instances):
                    raise BenchError(f"index {i} out of range: {self.config.data} has {len(instances)} records")
            instances = [instances[i] for i in self.config.indices]
        if self.config.limit is not None:
            instances = instances[: self.config.limit]
        return instances

    # -------------------------------------------------------------- main loop
    def run(self) -> dict[str, Any]:
        from safeedit.judge import SafetyJudge
        from safeedit.methods import get_method

        cfg = self.config
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        data = load_safeedit(cfg.data)
        instances = self._select(data)
        # bad method options and a missing judge fail before the (slow) model load
        method = None if cfg.method == "none" else get_method(cfg.method, cfg.method_config, **cfg.method_options)
        judge = SafetyJudge.from_pretrained(cfg.judge)
        model, tok = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
        chat = has_chat_template(tok) if cfg.chat is None else cfg.chat
        if method is not None and hasattr(method.config, "chat") and method.config.chat is None:
            method.config.chat = chat  # edit and evaluate in the same prompt mode
        fingerprint = model_fingerprint(model)
        gen_settings = {"max_new_tokens": cfg.max_new_tokens, "chat": chat, "do_sample": False}
        meta = {
            "format": RUN_FORMAT, "config": asdict(cfg), "config_identity": cfg.identity(),
            "method_config": asdict(method.config) if method is not None else None,
            "prompt_mode": "chat" if chat else "raw", "generation": gen_settings, "seed": cfg.seed,
            "model_fingerprint": fingerprint, "judge": repr(judge), "versions": _versions(),
            "instances": len(instances), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self._check_or_write_run_json(meta)
        results = ResultsStore(self.out / "results.jsonl")
        done = results.done_keys()
        todo = [inst for inst in instances if inst.key not in done]
        cache = GenerationCache(cache_dir() / "generations" / f"{fingerprint}-{'chat' if chat else 'raw'}-{cfg.max_new_tokens}.jsonl")
        gen = dict(max_new_tokens=cfg.max_new_tokens, chat=chat, batch_size=cfg.batch_size)

        self._pre_generate(model, tok, todo, cache, gen)
        general = JsonlStore(self.out / "general.jsonl")
        self._general_unedited(model, tok, chat, general, fingerprint)
        general_keys = {inst.key for inst in instances[: cfg.general_instances]} if method is not None else set()
        for inst in tqdm(todo, desc=f"bench {cfg.method}", disable=not self.progress):
            with_general = inst.key in general_keys and not any(r.get("key") == inst.key for r in general.rows)
            row = self._one(model, tok, method, inst, cache, gen, judge, fingerprint, general if with_general else None)
            results.append(row)
        from safeedit.bench.report import write_run_outputs

        return write_run_outputs(self.out)

    def _pre_generate(self, model, tok, instances, cache: GenerationCache, gen) -> None:
        """All missing pre-edit generations in large batches (the unedited model is shared)."""
        # by length, so each stored chunk holds prompts of similar size (little padding)
        prompts = sorted({p for inst in instances for p in inst.eval_inputs().values()}, key=lambda p: (len(p), p))
        missing = [p for p, r in zip(prompts, cache.lookup(prompts)) if r is None]
        chunk = max(gen["batch_size"] * 4, 32)  # store progress regularly so a kill loses little
        for start in tqdm(range(0, len(missing), chunk), desc="pre-edit generations", disable=not self.progress or not missing):
            part = missing[start:start + chunk]
            for prompt, response in zip(part, generate(model, tok, part, **gen)):
                cache.add(prompt, response)

    def _judge_block(self, judge, prompts: dict[str, str], responses: dict[str, str]) -> dict[str, dict]:
        from safeedit.metrics import degenerate_reason, fluency

        keys = list(responses)
        verdict = judge([responses[k] for k in keys], prompts=[prompts[k] for k in keys] if judge.with_prompt else None)
        block = {}
        for i, k in enumerate(keys):
            block[k] = {"response": responses[k], "label": verdict.labels[i], "unsafe_prob": verdict.unsafe_prob[i],
                        "degenerate": degenerate_reason(responses[k])}
        block["_fluency"] = fluency([responses[k] for k in keys])
        return block

    def _one(self, model, tok, method, inst, cache, gen, judge, fingerprint, general=None) -> dict[str, Any]:
        """Evaluate one instance before and after its edit; ``general`` also scores KQA/CSum while edited."""
        inputs = inst.eval_inputs()
        t0 = time.perf_counter()
        pre = dict(zip(inputs, cache.lookup(inputs.values())))
        if any(v is None for v in pre.values()):
            raise BenchError(f"pre-edit generation missing for {inst.key}")
        row: dict[str, Any] = {"key": inst.key, "position": inst.position, "id": inst.id, "category": inst.category,
                               "attack_name": inst.attack_name, "method": self.config.method}
        row["pre"] = self._judge_block(judge, inputs, pre)
        if method is None:
            row["post"] = row["pre"]
            row["times"] = {"total_s": time.perf_counter() - t0}
            return row
        t1 = time.perf_counter()
        edit = method.edit(model, tok, [inst])
        t2 = time.perf_counter()
        try:
            post_prompts = {k: method.eval_prompt(v) for k, v in inputs.items()}
            post = dict(zip(inputs, generate(model, tok, list(post_prompts.values()), **gen)))
            if general is not None:  # general abilities of this edited model (plain prompts, no suffix)
                general.append({"key": inst.key, **self._general_eval(model, tok, gen["chat"])})
        finally:
            edit.restore()  # raises if the changed tensors are not bit-for-bit back
        t3 = time.perf_counter()
        if model_fingerprint(model) != fingerprint:
            raise BenchError(f"model differs from the unedited one after restoring {inst.key}")
        row["post"] = self._judge_block(judge, inputs, post)
        row["edit"] = edit.instances[0].as_dict()
        row["times"] = {"edit_s": t2 - t1, "post_generate_s": t3 - t2, "total_s": time.perf_counter() - t0}
        return row

    # -------------------------------------------------------------- general abilities
    def _general_items(self):
        from safeedit.metrics import load_triviaqa, load_xsum

        cfg = self.config
        kqa = load_triviaqa(cfg.kqa_path or _shared_general("triviaqa_validation_1000.jsonl"), n=cfg.kqa_n, seed=cfg.seed) if cfg.kqa_n else []
        csum = load_xsum(cfg.csum_path or _shared_general("xsum_test_500.jsonl"), n=cfg.csum_n, seed=cfg.seed) if cfg.csum_n else []
        return kqa, csum

    def _general_eval(self, model, tok, chat) -> dict[str, Any]:
        from safeedit.metrics import evaluate_csum, evaluate_kqa

        kqa_items, csum_items = self._general_items()
        out: dict[str, Any] = {}
        if kqa_items:
            r = evaluate_kqa(model, tok, kqa_items, chat=chat, batch_size=self.config.batch_size * 2)
            out["KQA"], out["KQA_n"] = r["accuracy"], r["n"]
        if csum_items:
            r = evaluate_csum(model, tok, csum_items, chat=chat, batch_size=self.config.batch_size)
            out["CSum"], out["CSum_n"] = r["rouge1"], r["n"]
        return out

    def _general_unedited(self, model, tok, chat, general: JsonlStore, fingerprint: str) -> None:
        if any(r.get("key") == "unedited" for r in general.rows) or not (self.config.kqa_n or self.config.csum_n):
            return
        cfg = self.config
        cache_file = cache_dir() / "general" / f"{fingerprint}-{'chat' if chat else 'raw'}-kqa{cfg.kqa_n}-csum{cfg.csum_n}-seed{cfg.seed}.json"
        if cache_file.exists():
            scores = json.loads(cache_file.read_text())
        else:
            t0 = time.perf_counter()
            scores = self._general_eval(model, tok, chat)
            scores["seconds"] = time.perf_counter() - t0
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.with_suffix(".tmp").write_text(json.dumps(scores))
            cache_file.with_suffix(".tmp").replace(cache_file)
        general.append({"key": "unedited", **scores})


def run_bench(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    return BenchRun(config, progress=progress).run()


__all__ = ["BenchConfig", "BenchError", "BenchRun", "run_bench", "EVAL_KEYS"]
