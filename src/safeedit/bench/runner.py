"""The benchmark loop, for both kinds of method (see :mod:`safeedit.methods.base`).

Per-instance editors (DINM, ...): evaluate unedited -> edit -> evaluate edited -> restore -> verify.
A method that can edit in groups (``Method.supports_grouping``, DINM) has its instances grouped by
``Method.group_key`` (DINM: the toxic layer, located first) into groups of ``group_size``; each group
is edited in one batched loop, its post-edit responses generated in one batched ``generate`` with
each row served by its own instance's edit, judged, verified, and written to ``results.jsonl`` as
one unit. Other methods, and the first ``general_instances`` (KQA/CSum on each edited model), run
one instance at a time. Trained-once methods (none, SFT, ...): ``fit`` once on the training
split (or nothing to fit), then evaluate every test instance on that one model, with the
post-method generations batched across instances. The runner knows no method by name.

A run folder is self-describing and resumable:

    run.json        config, prompt mode, generation settings, seed, model fingerprint, judge, versions
    fit.json        what training cost (seconds, peak memory) and its fingerprint; artifact/ holds it
    results.jsonl   one line per instance, appended and fsync'ed as it goes (a group at a time)
    results.rank{r}-of{w}.jsonl, general.rank{r}-of{w}.jsonl
                    the same, per process, when a launcher (torchrun, accelerate launch) runs w
                    processes: RANK/WORLD_SIZE from the environment split the instances in blocks
                    of ``group_size``; summary and report merge every shard; each resumes its own
    general.jsonl   KQA/CSum of the unedited model and of the method's model(s)
    summary.json    aggregate scores (written at the end, from results.jsonl)
    report.md       tables; *.png charts

Generations are cached under ``$SAFEEDIT_CACHE/generations`` keyed by the model's fingerprint,
the prompt mode and the generation settings, so every later method and run reuses the unedited
model's answers, and a killed trained-once run does not generate twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from safeedit.lm.fingerprint import model_fingerprint
from safeedit.bench.store import GenerationCache, JsonlStore, ResultsStore, read_shards, shard_name
from safeedit.data import EVAL_KEYS, load_safeedit
from safeedit.data.splits import question_overlap
from safeedit.errors import ConfigError, DataError, RunFailedError, UserError
from safeedit.lm import generate, load_model, use_chat_template
from safeedit.lm.generation import GenerationStats
from safeedit.lm.heap import release_free_memory
from safeedit.lm.loading import DEFAULT_MODEL
from safeedit.paths import cache_dir, general_data_path

RUN_FORMAT = 2


#: padded tokens (rows x (longest prompt + new tokens)) of one batch under prefix reuse, which bounds
#: the batch's one KV cache (~45 KiB a token for SmolLM2-135M in float32, so ~495 MiB). Rows are
#: sorted by length and cut into the fewest batches, then the fewest padded slots
#: (``token_budget_batches``), so SafeEdit's ~1,000-token jailbreak prompts decode ~10 at a time and
#: the short questions together. 11,264 keeps the bench's peak within 1.5x of the RSS after load on
#: any data: the peak measured the RSS after load (1,311 MiB) + the largest batch's cache + ~150 MiB,
#: and 1,311 + 495 + 150 < 1.5 x 1,311. Measured on the 2-core CPU on 2026-12-07 (DINM, 8 sample
#: instances, groups of 8, 64 new tokens; location + edit + post-edit + judge s/instance, peak RSS /
#: after load; benchmarks/bench_speed.py --rows d): 16,384 tokens 5.7 s, 1.64x; 12,288 (the sample's
#: batches at 11,264 are the same) 6.3 s, 1.48x; 10,240 6.8 s, 1.38x; one at a time 14.6 s, 1.34x.
#: ``--decode-tokens`` sets it per run (on a GPU with room, raise it).
REUSE_DECODE_TOKENS = 11264


@dataclass
class BenchConfig:
    """Settings of one benchmark run. Everything but the output folder, the judge options,
    ``batch_size``, ``device`` and ``trust_remote_code`` must match for a run folder to be resumed
    (the judge is recorded in run.json, and ``safeedit report`` refuses to mix judges)."""

    #: SafeEdit test data: a .json/.jsonl file, a folder of split files, or a dataset id (required)
    data: str
    #: method name (``safeedit.methods.METHODS``); ``none`` evaluates the unedited model
    method: str = "dinm"
    #: hub id, local folder, .gguf or alias; None: the method config's ``model:``, else the embedded model
    model: str | None = None
    #: split of ``data`` to use when it is a folder or dataset id (e.g. ``test``)
    data_split: str | None = None
    #: training split for methods that train once (SFT, DPO, ..., MEND): file, folder or dataset id
    train_data: str | None = None
    #: split of ``train_data`` (e.g. ``train``)
    train_split: str | None = None
    #: safety judge (``safeedit.judge.load_judge``): classifier folder / hub id, generative judge, or
    #: ``http:MODEL``; None: the default judge folder
    judge: str | None = None
    #: prompt format of a generative judge (llama-guard, harmbench, rubric); None: guessed
    judge_format: str | None = None
    #: API root for an ``http:MODEL`` judge (key from ``$OPENAI_API_KEY``)
    judge_base_url: str | None = None
    #: run folder (resumed when it exists with the same settings)
    out: str = "runs/bench"
    #: first N selected instances
    limit: int | None = None
    #: instance positions to use (after ``data_split``)
    indices: list[int] | None = None
    #: new tokens per response (the paper generates up to 600 on 7B models)
    max_new_tokens: int = 128
    #: prompt mode: None/True chat template when the tokenizer has one, False raw text (the paper's)
    chat: bool | None = None
    #: prompts per generation batch
    batch_size: int = 8
    #: per-instance editors that can edit in groups (DINM): instances edited and evaluated together
    #: (same toxic layer); 1 is one at a time. Results equal one at a time up to float summation order
    group_size: int = 8
    #: grouped editors: generate each group's pre-edit answers in the group's pass and let its post-edit
    #: prompts reuse that unedited prefill below the edited layer (``safeedit.lm.prefix``); pays only
    #: for pre-edit answers not yet in the generation cache. Results equal the plain path up to float
    #: rounding. None: on when the model runs on a CPU, where prefill is compute-bound (post-edit
    #: generation 4.6 s instead of 20.5 s per instance, benchmarks/bench_speed.py), off on a GPU, where
    #: prefill is cheap and the reuse's bookkeeping costs more than it saves (benchmarks/gpu_check.sh)
    prefix_reuse: bool | None = None
    #: prefix reuse: padded tokens (rows x (longest prompt + new tokens)) of one batch, i.e. its KV
    #: cache; lower it on a memory-tight machine (see ``REUSE_DECODE_TOKENS``)
    decode_tokens: int = REUSE_DECODE_TOKENS
    #: ``auto``: let accelerate place a model larger than one GPU over all visible GPUs
    device_map: str | None = None
    #: seed for sampling, data subsets and training
    seed: int = 0
    #: YAML file of method options (``configs/<method>/*.yaml``)
    method_config: str | None = None
    #: method options that override the YAML file (``--set KEY=VALUE``)
    method_options: dict[str, Any] = field(default_factory=dict)
    #: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16
    dtype: str = "auto"
    #: cpu, cuda, cuda:1 ... (None: cuda if available)
    device: str | None = None
    #: allow model code from the hub (off unless asked)
    trust_remote_code: bool = False
    #: TriviaQA items per general evaluation (0 disables)
    kqa_n: int = 100
    #: XSum items per general evaluation (0 disables)
    csum_n: int = 20
    #: per-instance editors: edited models (the first N instances) that also get KQA/CSum
    general_instances: int = 3
    #: TriviaQA / XSum files (default: the subsets in ../shared/data/general)
    kqa_path: str | None = None
    csum_path: str | None = None

    def identity(self) -> dict[str, Any]:
        """What must match for a run folder to be resumed (not paths to outputs or progress bars)."""
        d = asdict(self)
        for k in ("out", "judge", "judge_format", "judge_base_url", "batch_size", "device", "trust_remote_code",
                  "group_size", "prefix_reuse", "decode_tokens", "device_map"):
            d.pop(k)
        return d


class RunFolderError(UserError):
    """A run folder that cannot be used for these settings."""


class BenchError(RunFailedError):
    """The run could not continue (the model differs after a restore, a generation is missing)."""


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) set by torchrun / accelerate launch; (0, 1) for a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad RANK={rank} / WORLD_SIZE={world} in the environment")
    return rank, world


def shard_instances(instances: list, rank: int, world: int, block: int) -> list:
    """Instances of shard ``rank``: blocks of ``block`` consecutive instances dealt round-robin
    (a group stays in one process, so a sharded run forms the same groups as a single one)."""
    block = max(1, block)
    return [inst for i, inst in enumerate(instances) if (i // block) % world == rank]


def idle_shard_warning(n_instances: int, world: int, block: int) -> str | None:
    """Why some processes of a sharded run get no instance (fewer blocks of ``block`` than
    processes), with the fix; None when every process has work."""
    blocks = -(-n_instances // max(1, block))
    if world <= 1 or blocks >= world:
        return None
    return (f"{n_instances} instances in blocks of --group-size {block} make {blocks} block(s) for {world} "
            f"processes, so {world - blocks} of them have nothing to do: use --group-size "
            f"{max(1, -(-n_instances // world))} or fewer, or at most {blocks} process(es)")


def _versions() -> dict[str, str]:
    import transformers

    import safeedit

    return {"safeedit": safeedit.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def peak_memory_mib() -> dict[str, float]:
    """Peak resident memory of this process so far (and peak CUDA allocation when on a GPU)."""
    import resource

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:  # the resident memory right now (Linux)
        out["rss_mib"] = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, IndexError, ValueError):
        pass
    if torch.cuda.is_available():
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


class BenchRun:
    def __init__(self, config: BenchConfig, progress: bool = True):
        self.config = config
        self.progress = progress
        self.out = Path(config.out)
        self._verdicts: dict[tuple[str | None, str], tuple[float, float]] = {}  # (prompt read, response) -> verdict

    # -------------------------------------------------------------- set-up
    def _check_or_write_run_json(self, meta: dict[str, Any]) -> None:
        path = self.out / "run.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("config_identity") != meta["config_identity"] or old.get("model_fingerprint") != meta["model_fingerprint"]:
                diff = sorted(k for k in meta["config_identity"] if old.get("config_identity", {}).get(k) != meta["config_identity"][k])
                raise RunFolderError(f"{self.out} holds a run with different settings ({', '.join(diff) or 'model weights'}); "
                                     "use a new --out folder")
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"run.json.{os.getpid()}.tmp")  # shards start at the same moment
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        tmp.replace(path)

    def _training_split(self, method, test) -> tuple[list | None, dict | None]:
        """The training instances (None when the method trains nothing) and the overlap report."""
        cfg = self.config
        if cfg.train_data is None:
            if method.requires_training:
                raise ConfigError(f"method {method.name!r} trains once on a training split: pass --train-data PATH "
                                  f"(a SafeEdit file, or a folder/dataset id with --train-split)")
            return None, None
        train = load_safeedit(cfg.train_data, split=cfg.train_split).instances
        if not train:
            raise DataError(f"training data {cfg.train_data} has no instances")
        overlap = question_overlap(train, test)
        if overlap.shared_question_keys:
            raise DataError(
                f"{len(overlap.shared_question_keys)} test instance(s) share their harmful question with the training "
                f"data ({len(overlap.shared_questions)} question(s), e.g. {overlap.shared_questions[0]!r} in test "
                f"instance {overlap.shared_question_keys[0]}): a method trained on them has seen the answer. Split by "
                f"question (`safeedit data split PATH --out DIR`)")
        return train, overlap.as_dict()

    def _generation_cache(self, fingerprint: str, chat: bool) -> GenerationCache:
        name = f"{fingerprint}-{'chat' if chat else 'raw'}-{self.config.max_new_tokens}.jsonl"
        return GenerationCache(cache_dir() / "generations" / name)

    # -------------------------------------------------------------- main loop
    def run(self) -> dict[str, Any]:
        from safeedit.judge import load_judge
        from safeedit.methods import get_method
        from safeedit.methods.options import choose_model, read_config_file

        cfg = self.config
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        instances = load_safeedit(cfg.data, split=cfg.data_split).select(cfg.indices, cfg.limit, where=cfg.data)
        # bad options, a leaking split and a missing judge fail before the (slow) model load
        config_file = read_config_file(cfg.method_config) if cfg.method_config else None
        model_name = choose_model(cfg.model, config_file, DEFAULT_MODEL)
        method = get_method(cfg.method, config_file, **cfg.method_options)
        train, overlap = self._training_split(method, instances)
        judge = load_judge(cfg.judge, device=cfg.device, format=cfg.judge_format, base_url=cfg.judge_base_url)
        rank, world = shard_from_env()
        self.rank, self.world = rank, world
        device = cfg.device
        if device is None and world > 1 and torch.cuda.is_available() and cfg.device_map is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"  # one GPU each
        if cfg.group_size < 1:
            raise ConfigError(f"group_size must be >= 1, got {cfg.group_size}")
        if cfg.decode_tokens < 1:
            raise ConfigError(f"decode_tokens must be >= 1, got {cfg.decode_tokens}")
        model, tok = load_model(model_name, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code,
                                device_map=cfg.device_map)
        chat = use_chat_template(tok, cfg.chat)
        fingerprint = model_fingerprint(model)
        gen_settings = {"max_new_tokens": cfg.max_new_tokens, "chat": chat, "do_sample": False}
        meta = {
            "format": RUN_FORMAT, "config": asdict(cfg), "config_identity": cfg.identity() | {"model": model_name},
            "model": model_name,
            "method": {"name": method.name, "per_instance": method.per_instance, "config": asdict(method.config)},
            "prompt_mode": "chat" if chat else "raw", "generation": gen_settings, "seed": cfg.seed,
            "model_fingerprint": fingerprint, "judge": judge.identity(), "versions": _versions(),
            "instances": len(instances), "train_instances": len(train) if train is not None else None,
            "train_test_overlap": overlap, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "shards": world, "memory_after_load": peak_memory_mib(),
        }
        self._check_or_write_run_json(meta)
        results = ResultsStore(self.out / shard_name("results", rank, world))
        # every shard's rows count as done: a run resumed with another number of processes repeats nothing
        done = results.done_keys() | {row["key"] for row in read_shards(self.out, "results")}
        todo = [inst for inst in shard_instances(instances, rank, world, cfg.group_size) if inst.key not in done]
        idle = idle_shard_warning(len(instances), world, cfg.group_size)
        if idle:  # a block is a group, kept in one process so shards form the single run's groups
            logging.getLogger(__name__).warning("rank %d of %d: %s", rank, world, idle)
        gen = dict(max_new_tokens=cfg.max_new_tokens, chat=chat, batch_size=cfg.batch_size)

        pre_cache = self._generation_cache(fingerprint, chat)
        if not self._reuses_prefix(model, method):  # else each group answers its own pre-edit prompts
            self._generate_missing(model, tok, [p for i in todo for p in i.eval_inputs().values()], pre_cache, gen,
                                   "pre-edit generations")
        general = JsonlStore(self.out / shard_name("general", rank, world))
        if rank == 0:
            self._general_unedited(model, tok, chat, general, fingerprint)
        if train is not None:
            if rank > 0:  # shards train nothing: wait for rank 0's artefact, then load it
                self._wait_for_fit()
            self._fit(method, model, tok, train, chat, fingerprint)
        if method.per_instance:
            self._run_per_instance(model, tok, method, instances, todo, pre_cache, gen, judge, fingerprint, general, results)
        else:
            self._run_trained_once(model, tok, method, todo, pre_cache, gen, judge, fingerprint, general, results)
        from safeedit.bench.report import summarize, write_run_outputs

        # this process's memory, for the cost tables (benchmarks/train_cost.py, edit_cost.py --runs)
        _write_json_atomic(self.out / shard_name("resources", rank, world).replace(".jsonl", ".json"),
                           {"memory_after_load": meta["memory_after_load"], "memory_at_end": peak_memory_mib()})
        if world > 1 and not summarize(self.out)["complete"]:
            return summarize(self.out)  # the last shard to finish writes the merged report
        return write_run_outputs(self.out)

    def _wait_for_fit(self, poll_s: float = 5.0) -> None:
        waited = 0.0
        while not (self.out / "fit.json").is_file():
            if waited % 300 < poll_s:
                logging.getLogger(__name__).warning("rank %d waits for rank 0 to train (%s/fit.json)", self.rank, self.out)
            time.sleep(poll_s)
            waited += poll_s

    def _fit(self, method, model, tok, train, chat, fingerprint) -> dict[str, Any]:
        """Train once, or re-apply the saved artefact of an earlier (killed) run of this folder."""
        key = {"method": method.name, "config": asdict(method.config), "train": [i.key for i in train],
               "model": fingerprint, "chat": chat, "seed": self.config.seed}
        fit_fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        record_path, artifact = self.out / "fit.json", self.out / "artifact"
        if record_path.exists():
            record = json.loads(record_path.read_text())
            if record.get("fingerprint") != fit_fingerprint or not artifact.is_dir():
                raise RunFolderError(f"{self.out} holds a trained artefact made with other settings; use a new --out folder")
            method.load_fitted(model, tok, artifact)
            return record
        tmp = self.out / "artifact.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while training
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        try:
            record = dict(method.fit(model, tok, train, chat=chat, out_dir=tmp) or {})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-trained is left that looks like an artefact
            raise
        record.update({"fingerprint": fit_fingerprint, "method": method.name, "train_instances": len(train),
                       "seconds": time.perf_counter() - start, **peak_memory_mib()})
        os.replace(tmp, artifact)
        _write_json_atomic(record_path, record)  # written last: its presence means the artefact is complete
        return record

    def _reuses_prefix(self, model, method) -> bool:
        from safeedit.lm.prefix import supports_prefix_reuse

        cfg = self.config
        wanted = cfg.prefix_reuse if cfg.prefix_reuse is not None else next(model.parameters()).device.type == "cpu"
        return (wanted and method.per_instance and cfg.group_size > 1 and method.supports_grouping
                and supports_prefix_reuse(model))

    def _generate_missing(self, model, tok, prompts: list[str], cache: GenerationCache, gen, desc: str) -> None:
        """Generate what ``cache`` lacks, in large batches, storing as it goes (a kill loses little)."""
        # by length, so each stored chunk holds prompts of similar size (little padding)
        unique = sorted(set(prompts), key=lambda p: (len(p), p))
        missing = [p for p, r in zip(unique, cache.lookup(unique)) if r is None]
        chunk = max(gen["batch_size"] * 4, 32)
        for start in tqdm(range(0, len(missing), chunk), desc=desc, disable=not self.progress or not missing):
            part = missing[start:start + chunk]
            for prompt, response in zip(part, generate(model, tok, part, **gen)):
                cache.add(prompt, response)

    def _judge_new(self, judge, blocks: list[tuple[dict[str, str], dict[str, str]]]) -> None:
        """Judge, in one call, every response of ``blocks`` ((prompts, responses) by input name) not
        judged before in this run. A verdict depends on the text the judge reads only, so a response
        judged before (every pre-edit answer is judged again for each instance that asks its prompt,
        and many post-edit answers repeat) is not judged again; and one call over a group's responses
        batches them by length, where a call per block of 5 pays for short batches (16 calls of 5 took
        ~1.5x the time of one call over the same 80 sample responses)."""
        memo = self._verdicts
        new: dict[tuple, tuple[str, str]] = {}  # one per distinct text the judge reads
        for prompts, responses in blocks:
            for k, text in responses.items():
                read = (prompts[k] if judge.with_prompt else None, text)
                if read not in memo:
                    new.setdefault(read, (prompts[k], text))
        if new:
            items = list(new.values())
            verdict = judge([t for _, t in items], prompts=[p for p, _ in items] if judge.with_prompt else None)
            for i, read in enumerate(new):
                memo[read] = (verdict.labels[i], verdict.unsafe_prob[i])

    def _judge_block(self, judge, prompts: dict[str, str], responses: dict[str, str]) -> dict[str, dict]:
        from safeedit.metrics import degenerate_reason, fluency

        keys = list(responses)
        self._judge_new(judge, [(prompts, responses)])  # nothing left to judge when the caller batched
        memo = self._verdicts
        read = {k: (prompts[k] if judge.with_prompt else None, responses[k]) for k in keys}
        block = {}
        for k in keys:
            label, prob = memo[read[k]]
            block[k] = {"response": responses[k], "label": label, "unsafe_prob": prob,
                        "degenerate": degenerate_reason(responses[k])}
        block["_fluency"] = fluency([responses[k] for k in keys])
        return block

    @staticmethod
    def _check_pre(inst, pre: dict[str, str | None]) -> None:
        if any(v is None for v in pre.values()):
            raise BenchError(f"pre-edit generation missing for {inst.key}")

    def _row(self, inst, judge, inputs, pre) -> dict[str, Any]:
        self._check_pre(inst, pre)
        row = {"key": inst.key, "position": inst.position, "id": inst.id, "category": inst.category,
               "attack_name": inst.attack_name, "method": self.config.method}
        row["pre"] = self._judge_block(judge, inputs, pre)
        return row

    # -------------------------------------------------------------- per-instance editors
    def _run_per_instance(self, model, tok, method, instances, todo, cache, gen, judge, fingerprint, general, results):
        cfg = self.config
        general_keys = {inst.key for inst in instances[: cfg.general_instances]}
        done_general = {r.get("key") for r in general.rows} | {r.get("key") for r in read_shards(self.out, "general")}
        grouped = cfg.group_size > 1 and method.supports_grouping
        bar = tqdm(total=len(todo), desc=f"bench {cfg.method}", disable=not self.progress)
        later = []
        for inst in todo:
            with_general = inst.key in general_keys and inst.key not in done_general and (cfg.kqa_n or cfg.csum_n)
            if grouped and not with_general:
                later.append(inst)
                continue
            results.append(self._one_edit(model, tok, method, inst, cache, gen, judge, fingerprint,
                                          general if with_general else None))
            bar.update(1)
        # location first (DINM: the toxic layer, on the unedited model), then groups of group_size
        # instances with one key; a window of 4 groups' worth is located at a time, so what location
        # keeps for the edit stays bounded, and keys left with a partial group wait for later windows
        pending: dict[Any, list] = {}
        window = cfg.group_size * 4
        keyed_s: dict[str, float] = {}  # group_key's seconds (DINM: location), part of the instance's edit

        def run(group):
            results.extend(self._group_edit(model, tok, method, group, cache, gen, judge, fingerprint,
                                            {i.key: keyed_s.pop(i.key, 0.0) for i in group}))
            bar.update(len(group))

        for start in range(0, len(later), window):
            members = later[start:start + window]
            # groups form in instance order, whatever order the method located them in
            for inst, (key, seconds) in zip(members, method.group_keys(model, tok, members, chat=gen["chat"])):
                keyed_s[inst.key] = seconds
                pending.setdefault(key, []).append(inst)
            for members in pending.values():
                while len(members) >= cfg.group_size:
                    run(members[:cfg.group_size])
                    del members[:cfg.group_size]
        for members in pending.values():
            if members:
                run(members)
        bar.close()

    def _group_edit(self, model, tok, method, insts, cache, gen, judge, fingerprint,
                    keyed_s: dict[str, float]) -> list[dict[str, Any]]:
        """Edit a group at once, generate its 5K post-edit responses in one call (row k of the batch
        served by its own instance's edit), verify the model is untouched, judge; one row each.

        ``keyed_s``: seconds each instance's ``group_key`` took before the group formed (DINM's
        location of the toxic layer); they belong to that instance's edit and are added to its times,
        so grouped and one-at-a-time times measure the same work."""
        t0 = time.perf_counter()
        inputs = [inst.eval_inputs() for inst in insts]
        group = method.group_edit(model, tok, insts, chat=gen["chat"])
        release_free_memory()  # the edit's logits and gradients, before the generation's caches
        t1 = time.perf_counter()
        pre_prompts = [v for inp in inputs for v in inp.values()]
        prompts = [method.eval_prompt(v) for v in pre_prompts]
        owners = [k for k, inp in enumerate(inputs) for _ in inp]
        if self._reuses_prefix(model, method) and group.lowest_changed_layer:
            texts, pre_s = self._post_reusing_prefix(model, tok, group, pre_prompts, prompts, owners, cache, gen)
        else:
            self._generate_missing(model, tok, pre_prompts, cache, gen, "pre-edit generations")
            pre_s = time.perf_counter() - t1
            texts = generate(model, tok, prompts, **gen, row_context=lambda idx: group.rows([owners[i] for i in idx]))
        t2 = time.perf_counter()
        pres = [dict(zip(inp, cache.lookup(inp.values()))) for inp in inputs]
        posts, start = [], 0
        for inp in inputs:
            posts.append(dict(zip(inp, texts[start:start + len(inp)])))
            start += len(inp)
        for inst, pre in zip(insts, pres):
            self._check_pre(inst, pre)
        self._judge_new(judge, [(inp, pre) for inp, pre in zip(inputs, pres)] + list(zip(inputs, posts)))
        rows = [self._row(inst, judge, inp, pre) for inst, inp, pre in zip(insts, inputs, pres)]
        if model_fingerprint(model) != fingerprint:  # a grouped edit never writes the model's tensors
            raise BenchError(f"model differs from the unedited one after the group {[i.key for i in insts]}")
        n = len(insts)
        for k, (row, inp, post) in enumerate(zip(rows, inputs, posts)):
            row["post"] = self._judge_block(judge, inp, post)
            row["edit"] = group.instances[k].as_dict()
            # pre_generate_s: pre-edit answers made in this group (0 when the cache had them);
            # locate_s: this instance's location, done before its group formed (in edit_s and total_s)
            located = keyed_s.get(insts[k].key, 0.0)
            row["times"] = {"edit_s": (t1 - t0) / n + located, "locate_s": located, "pre_generate_s": pre_s / n,
                            "post_generate_s": (t2 - t1 - pre_s) / n,
                            "total_s": (time.perf_counter() - t0) / n + located, "group_size": n}
        return rows

    def _post_reusing_prefix(self, model, tok, group, pre_prompts, prompts, owners, cache, gen) -> tuple[list[str], float]:
        """Post-edit answers of a group, and the seconds spent on pre-edit answers. Pre-edit prompts not
        yet answered are answered here, in one pass with their post-edit prompts: the unedited prefill
        of the tokens the two share serves both, and the layers below the edit run over them once
        (``safeedit.lm.prefix.generate_before_and_after``).

        Rows go in batches of at most ``decode_tokens`` padded tokens, rows of similar length
        together; a batch holds one KV cache, which the pre-edit answers decode in and the post-edit
        answers then reuse (a CPU decode step reads every weight once whatever the batch, so a row's
        share falls as the batch grows)."""
        from safeedit.lm.prefix import generate_before_and_after

        texts: list[str | None] = [None] * len(prompts)
        known = dict(zip(pre_prompts, cache.lookup(pre_prompts)))
        plain = [i for i, p in enumerate(pre_prompts) if known[p] is not None]  # nothing to share: plain path
        if plain:
            out = generate(model, tok, [prompts[i] for i in plain], **gen,
                           row_context=lambda idx: group.rows([owners[plain[j]] for j in idx]))
            for i, t in zip(plain, out):
                texts[i] = t
        fresh = [i for i in range(len(prompts)) if texts[i] is None]
        stats = GenerationStats()
        before, after = generate_before_and_after(
            model, tok, [pre_prompts[i] for i in fresh], [prompts[i] for i in fresh],
            layer=group.lowest_changed_layer, edited=lambda idx: group.rows([owners[fresh[j]] for j in idx]),
            max_new_tokens=gen["max_new_tokens"], chat=gen["chat"], batch_tokens=self.config.decode_tokens, stats=stats)
        for i, pre_answer, post_answer in zip(fresh, before, after):
            texts[i] = post_answer
            if known[pre_prompts[i]] is None:  # a prompt repeated in the group is answered alike by each row
                cache.add(pre_prompts[i], pre_answer)
                known[pre_prompts[i]] = pre_answer
        return texts, stats.pre_edit_s  # type: ignore[return-value]

    def _one_edit(self, model, tok, method, inst, cache, gen, judge, fingerprint, general=None) -> dict[str, Any]:
        """Evaluate one instance before and after its edit; ``general`` also scores KQA/CSum while edited."""
        inputs = inst.eval_inputs()
        self._generate_missing(model, tok, list(inputs.values()), cache, gen, "pre-edit generations")
        t0 = time.perf_counter()  # as before prefix reuse: pre-edit answers are not part of the times
        pre = dict(zip(inputs, cache.lookup(inputs.values())))
        self._check_pre(inst, pre)  # before the edit: a missing answer stops the run early
        t1 = time.perf_counter()
        edit = method.edit(model, tok, [inst], chat=gen["chat"])
        t2 = time.perf_counter()
        try:
            post_prompts = [method.eval_prompt(v) for v in inputs.values()]
            post = dict(zip(inputs, generate(model, tok, post_prompts, **gen)))
            if general is not None:  # general abilities of this edited model (plain prompts, no suffix)
                general.append({"key": inst.key, **self._general_eval(model, tok, gen["chat"])})
        finally:
            edit.restore()  # raises if the changed tensors are not bit-for-bit back
        t3 = time.perf_counter()
        if model_fingerprint(model) != fingerprint:
            raise BenchError(f"model differs from the unedited one after restoring {inst.key}")
        self._judge_new(judge, [(inputs, pre), (inputs, post)])  # one judge call for both sides
        row = self._row(inst, judge, inputs, pre)
        row["post"] = self._judge_block(judge, inputs, post)
        row["edit"] = edit.instances[0].as_dict()
        row["times"] = {"edit_s": t2 - t1, "post_generate_s": t3 - t2, "total_s": time.perf_counter() - t0}
        return row

    # -------------------------------------------------------------- trained-once methods
    def _run_trained_once(self, model, tok, method, todo, pre_cache, gen, judge, fingerprint, general, results):
        cfg = self.config
        method_fp = model_fingerprint(model)
        post_cache = pre_cache if method_fp == fingerprint else self._generation_cache(method_fp, gen["chat"])
        changes_general = method_fp != fingerprint or method.wraps_general_prompts
        if (changes_general and (cfg.kqa_n or cfg.csum_n) and getattr(self, "rank", 0) == 0
                and not any(r.get("key") == "method" for r in general.rows)):
            t0 = time.perf_counter()
            wrap = method.general_prompt if method.wraps_general_prompts else None
            general.append({"key": "method", **self._general_eval(model, tok, gen["chat"], wrap=wrap),
                            "seconds": time.perf_counter() - t0})
        per_chunk = max(1, (gen["batch_size"] * 4) // len(next(iter(todo)).eval_inputs())) if todo else 1
        bar = tqdm(total=len(todo), desc=f"bench {cfg.method}", disable=not self.progress)
        for start in range(0, len(todo), per_chunk):
            chunk = todo[start:start + per_chunk]
            t0 = time.perf_counter()
            self._generate_missing(model, tok, [method.eval_prompt(p) for i in chunk for p in i.eval_inputs().values()],
                                   post_cache, gen, "post-method generations")
            seconds = (time.perf_counter() - t0) / len(chunk)
            looked = []  # each instance's inputs and both sides' answers, looked up once
            for inst in chunk:
                inputs = inst.eval_inputs()
                pre = dict(zip(inputs, pre_cache.lookup(inputs.values())))
                post = dict(zip(inputs, post_cache.lookup([method.eval_prompt(p) for p in inputs.values()])))
                self._check_pre(inst, pre)
                if any(v is None for v in post.values()):
                    raise BenchError(f"post-method generation missing for {inst.key}")
                looked.append((inst, inputs, pre, post))
            # the chunk's responses, both sides, judged in one call
            self._judge_new(judge, [b for _, inputs, pre, post in looked for b in ((inputs, pre), (inputs, post))])
            for inst, inputs, pre, post in looked:
                row = self._row(inst, judge, inputs, pre)
                same = all(post[k] == row["pre"][k]["response"] for k in inputs)
                row["post"] = row["pre"] if same else self._judge_block(judge, inputs, post)
                row["times"] = {"post_generate_s": seconds}
                results.append(row)
                bar.update(1)
        bar.close()

    # -------------------------------------------------------------- general abilities
    def _general_items(self):
        from safeedit.metrics import load_triviaqa, load_xsum

        cfg = self.config
        kqa = load_triviaqa(cfg.kqa_path or general_data_path("triviaqa_validation_1000.jsonl"), n=cfg.kqa_n, seed=cfg.seed) if cfg.kqa_n else []
        csum = load_xsum(cfg.csum_path or general_data_path("xsum_test_500.jsonl"), n=cfg.csum_n, seed=cfg.seed) if cfg.csum_n else []
        return kqa, csum

    def _general_eval(self, model, tok, chat, wrap=None) -> dict[str, Any]:
        from safeedit.metrics import evaluate_csum, evaluate_kqa

        kqa_items, csum_items = self._general_items()
        out: dict[str, Any] = {}
        if kqa_items:
            r = evaluate_kqa(model, tok, kqa_items, chat=chat, batch_size=self.config.batch_size * 2, wrap=wrap)
            out["KQA"], out["KQA_n"] = r["accuracy"], r["n"]
        if csum_items:
            r = evaluate_csum(model, tok, csum_items, chat=chat, batch_size=self.config.batch_size, wrap=wrap)
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
            _write_json_atomic(cache_file, scores)
        general.append({"key": "unedited", **scores})


def run_bench(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    return BenchRun(config, progress=progress).run()


__all__ = ["BenchConfig", "BenchError", "BenchRun", "RunFolderError", "peak_memory_mib", "run_bench", "shard_from_env",
           "shard_instances", "EVAL_KEYS"]
