"""Seconds per instance of `safeedit bench` with DINM: one at a time, grouped, grouped + prefix reuse, sharded.

Rows (each in its own process, so peak RSS is its own):

(a) one at a time: ``--group-size 1`` (edit, generate the 5 post-edit inputs, restore, per instance);
(b) grouped: ``--group-size K`` (K instances of one toxic layer edited in one batched loop, their
    5K post-edit inputs generated in one call with per-row W_V);
    (a) and (b) share one warm pre-edit generation cache, made first and not timed, so they time what
    differs: locate + edit + post-edit generation + judge + restore check;
(c) grouped, cold: (b) with an empty generation cache, so the pre-edit answers are generated in the
    run (timed), as on a first run;
(d) grouped + prefix reuse, cold: (c) with ``prefix_reuse``: each group answers its pre-edit prompts
    and its post-edit prompts reuse that unedited prefill below the toxic layer (``safeedit.lm.prefix``);
    (c) vs (d) is the prefix reuse's effect, pre-edit generation included in both;
(e) sharded: the run of (b) split over two processes (RANK/WORLD_SIZE as torchrun sets them), each
    with half the threads, against the same run in one process: wall time, merged rows, identical
    content. A group stays in one process, so the shard row groups at most half the instances
    (``--group-size 4`` for 8 instances) and then also times that group size in one process.

Also printed: the share of post-edit responses that are identical between (a) and (b), (b) and (d),
and (b) and (e). ``--reference`` adds the old reference-style loop (one input at a time).
KQA/CSum are off. On a shared machine run the rows in one invocation so they suffer alike.

The "edit + post-edit + judge" column is the issue's target measure: the per-instance loop time less
the pre-edit answers a cold row makes in its run (row (a) has them cached), against row (a). Every
row's loop time includes DINM's location of the toxic layer (grouped rows locate before their group
forms and carry those seconds in ``times.locate_s``).

Usage: python benchmarks/bench_speed.py [--instances 8] [--max-new-tokens 64] [--group-size 8] [--rows abcd]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SAMPLE, print_table  # noqa: E402


def reference_loop(model, tok, judge, instances, max_new_tokens: int) -> float:
    from safeedit.lm import generate
    from safeedit.methods import DINM

    method = DINM()
    start = time.perf_counter()
    for inst in instances:
        inputs = list(inst.eval_inputs().values())
        pre = [generate(model, tok, p, max_new_tokens=max_new_tokens) for p in inputs]
        edit = method.edit(model, tok, [inst])
        post = [generate(model, tok, method.eval_prompt(p), max_new_tokens=max_new_tokens) for p in inputs]
        edit.restore()
        for text in pre + post:
            judge([text])
    return (time.perf_counter() - start) / len(instances)


def bench_config(args, out: str, method: str = "dinm", group_size: int = 1, prefix_reuse: bool = False):
    from safeedit.bench.runner import BenchConfig

    return BenchConfig(method=method, data=str(SAMPLE), judge=args.judge, out=out, limit=args.instances,
                       max_new_tokens=args.max_new_tokens, kqa_n=0, csum_n=0, dtype="float32", device="cpu",
                       group_size=group_size, prefix_reuse=prefix_reuse,
                       **({"decode_tokens": args.decode_tokens} if args.decode_tokens else {}))


def row_main(args) -> None:
    """One row, in this process: run the bench, print a JSON line of timings and memory."""
    import torch

    torch.set_num_threads(args.threads)
    from safeedit.bench.runner import peak_memory_mib, run_bench

    start = time.perf_counter()
    run_bench(bench_config(args, args.out, args.method, args.group_size, args.prefix_reuse), progress=False)
    wall = time.perf_counter() - start
    meta = json.loads((Path(args.out) / "run.json").read_text())
    print(json.dumps({"wall_s": wall, "after_load_mib": meta["memory_after_load"].get("rss_mib"),
                      "peak_mib": peak_memory_mib()["peak_rss_mib"]}))


def _child(args, out, method, group_size, threads, env_extra=None, prefix_reuse=False) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--_row", "--out", str(out), "--method", method, "--group-size", str(group_size),
           "--threads", str(threads), "--instances", str(args.instances), "--judge", args.judge, "--max-new-tokens", str(args.max_new_tokens)]
    cmd += ["--prefix-reuse"] if prefix_reuse else []
    cmd += ["--decode-tokens", str(args.decode_tokens)] if prefix_reuse and args.decode_tokens else []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **(env_extra or {}))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"a benchmark row failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def _rows(folder: Path) -> dict[str, dict]:
    rows = {}
    for f in sorted(folder.glob("results*.jsonl")):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            rows[row["key"]] = row
    return rows


def _loop_seconds(folder: Path, less_pre_edit: bool = False) -> float:
    """Mean per-instance loop time; ``less_pre_edit``: without the pre-edit answers made in the run,
    i.e. edit + post-edit generation + judge (the issue's target measure; row (a) has them cached)."""
    rows = _rows(folder).values()
    return sum(r["times"]["total_s"] - (r["times"].get("pre_generate_s", 0.0) if less_pre_edit else 0.0)
               for r in rows) / len(rows)


def _same_share(a: Path, b: Path) -> tuple[int, int]:
    ra, rb = _rows(a), _rows(b)
    same = total = 0
    for key in ra:
        for k, v in ra[key]["post"].items():
            if k != "_fluency":
                total += 1
                same += v["response"] == rb[key]["post"][k]["response"]
    return same, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=8, help="K of the grouped rows (default 8, the bench's default)")
    ap.add_argument("--reference", action="store_true", help="also time the old reference-style loop")
    ap.add_argument("--no-shards", action="store_true", help="skip the two-process row")
    ap.add_argument("--rows", default="abcd", help="which of rows (a)-(d) to run, e.g. 'ad' (default all)")
    ap.add_argument("--workdir", default=None, help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--_row", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="dinm", help=argparse.SUPPRESS)
    ap.add_argument("--prefix-reuse", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--decode-tokens", type=int, default=None,
                    help="row (d): padded tokens per post-edit decode batch (default: the bench's)")
    ap.add_argument("--judge", default=None, help="safety judge folder (default: the default judge, built if missing)")
    args = ap.parse_args()
    if args._row:
        return row_main(args)
    from safeedit.judge.shipped import ensure_default_judge

    args.judge = args.judge or str(ensure_default_judge())  # before the private cache below

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(args.workdir or tmp)  # --workdir keeps the run folders for inspection
        tmp.mkdir(parents=True, exist_ok=True)
        # a private generation cache (the model cache is shared), warmed by the unedited model first
        cache = tmp / "cache"
        cache.mkdir(exist_ok=True)
        real_models = Path(os.environ.get("SAFEEDIT_CACHE", Path.home() / ".cache" / "safeedit")).expanduser() / "models"
        if not (cache / "models").exists():
            (cache / "models").symlink_to(real_models)
        os.environ["SAFEEDIT_CACHE"] = str(cache)
        t0 = time.perf_counter()
        _result(_child(args, tmp / "warm", "none", 1, args.threads))
        print(f"pre-edit generations cached in {time.perf_counter() - t0:.0f} s (not timed below)", file=sys.stderr)

        def cold_cache(name: str) -> dict:
            """An empty generation cache (the model cache shared): pre-edit answers made in the run."""
            folder = tmp / f"cache-{name}"
            folder.mkdir(exist_ok=True)
            if not (folder / "models").exists():
                (folder / "models").symlink_to(real_models)
            return {"SAFEEDIT_CACHE": str(folder)}

        k = args.group_size
        table, results = [], {}
        for row_id, label, name, size, env, reuse in (
                ("a", "(a) one at a time (--group-size 1), warm pre-edit cache", "one", 1, None, False),
                ("b", f"(b) grouped (--group-size {k}), warm pre-edit cache", "grouped", k, None, False),
                ("c", f"(c) grouped (--group-size {k}), cold: pre-edit answers generated", "cold", k, cold_cache("c"), False),
                ("d", f"(d) grouped (--group-size {k}) + prefix reuse"
                      f"{f' (--decode-tokens {args.decode_tokens})' if args.decode_tokens else ''}, cold: pre-edit answers generated", "reuse", k,
                 cold_cache("d"), True)):
            if row_id not in args.rows:
                continue
            start = time.perf_counter()
            r = _result(_child(args, tmp / name, "dinm", size, args.threads, env, prefix_reuse=reuse))
            r["outer_wall_s"] = time.perf_counter() - start  # with interpreter start, as the shards below
            results[name] = r
            print(f"{label}: {r}", file=sys.stderr, flush=True)
            table.append([label, f"{r['wall_s'] / args.instances:.1f}", f"{_loop_seconds(tmp / name):.1f}",
                          f"{_loop_seconds(tmp / name, less_pre_edit=True):.1f}",
                          f"{r['after_load_mib']:.0f}", f"{r['peak_mib']:.0f}", f"{r['peak_mib'] / r['after_load_mib']:.2f}"])
        by_id = {row[0][1]: row for row in table}
        for row_id, row in by_id.items():  # run speed-up: warm rows vs (a), cold rows vs (c)
            ref = by_id.get("a" if row_id in "ab" else "c")
            row.insert(2, "-" if ref is None else f"{float(ref[1]) / float(row[1]):.2f}x" + (" vs (c)" if row_id in "cd" else ""))
            ref = by_id.get("a")  # the target: edit + post-edit + judge vs one at a time
            row.insert(5, "-" if ref is None else f"{float(ref[4]) / float(row[4]):.2f}x")
        same, total = _same_share(tmp / "one", tmp / "grouped") if {"a", "b"} <= set(by_id) else (0, 0)
        r_same, r_total = (_same_share(tmp / "grouped", tmp / "reuse") if {"b", "d"} <= set(by_id)
                           else _same_share(tmp / "one", tmp / "reuse") if {"a", "d"} <= set(by_id) else (0, 0))

        shard_line = None
        if not args.no_shards and "b" in args.rows:
            # a group stays in one process (safeedit.bench.runner.shard_instances), so two processes
            # need two groups' worth of instances: the shard row's group size is at most half of them,
            # against a one-process run of that group size (row (b) itself when it is the same)
            ks = min(k, max(1, -(-args.instances // 2)))
            single = "grouped"
            if ks != k:
                single = f"grouped-k{ks}"
                start = time.perf_counter()
                results[single] = _result(_child(args, tmp / single, "dinm", ks, args.threads))
                results[single]["outer_wall_s"] = time.perf_counter() - start
            start = time.perf_counter()
            procs = [_child(args, tmp / "sharded", "dinm", ks, max(1, args.threads // 2),
                            {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}) for r in (0, 1)]
            shard_results = [_result(p) for p in procs]
            wall = time.perf_counter() - start
            merged = _rows(tmp / "sharded")
            s_same, s_total = _same_share(tmp / single, tmp / "sharded")
            per_shard = {f.name: len(f.read_text().splitlines()) for f in sorted((tmp / "sharded").glob("results*.jsonl"))}
            summary = json.loads((tmp / "sharded" / "summary.json").read_text())
            shard_line = (ks, wall, results[single]["outer_wall_s"], len(merged), per_shard, s_same, s_total,
                          summary["complete"], [r["peak_mib"] for r in shard_results])

        ref = None
        if args.reference:
            import torch

            torch.set_num_threads(args.threads)
            from safeedit.data import load_safeedit
            from safeedit.judge import SafetyJudge
            from safeedit.lm import load_model

            model, tok = load_model("smollm2-135m", dtype="float32", device="cpu")
            ref = reference_loop(model, tok, SafetyJudge.from_pretrained(args.judge),
                                 load_safeedit(SAMPLE).instances[: args.instances], args.max_new_tokens)

    print(f"\nsafeedit bench, DINM, smollm2-135m fp32 CPU, {args.instances} SafeEdit sample instances x 5 inputs, "
          f"max_new_tokens={args.max_new_tokens}, {args.threads} threads, KQA/CSum off\n")
    print_table(["loop", "s / instance (run)", "speed-up (run)", "s / instance (loop)",
                 "edit + post-edit + judge s / instance", "speed-up vs (a)", "RSS after load MiB",
                 "peak RSS MiB", "peak / after load"], table)
    print("\n'run' is the whole run_bench call over the instances (model + judge load, location, edit, post-edit "
          "generation, judge, restore check, report); 'loop' is the per-instance times recorded in results.jsonl; "
          "'edit + post-edit + judge' is the loop less the pre-edit answers a cold row makes in its run.")
    if total:
        print(f"\nidentical post-edit responses, grouped vs one at a time: {same}/{total} ({100 * same / total:.1f}%)")
    if r_total:
        other = "grouped" if "b" in by_id else "one at a time"
        print(f"identical post-edit responses, grouped + prefix reuse vs {other}: {r_same}/{r_total} "
              f"({100 * r_same / r_total:.1f}%)")
    if shard_line:
        ks, wall, one_wall, n, per_shard, s_same, s_total, complete, peaks = shard_line
        one = "row (b)" if ks == args.group_size else f"grouped, --group-size {ks}"
        print(f"\nsharded (--group-size {ks}, warm pre-edit cache): 2 processes x {max(1, args.threads // 2)} thread(s): "
              f"{wall:.1f} s wall vs 1 process x {args.threads} threads ({one}): {one_wall:.1f} s (both with process "
              f"start) ({one_wall / wall:.2f}x); merged rows {n} {per_shard}, summary complete={complete}; identical "
              f"post-edit responses vs the one-process run: {s_same}/{s_total}; peak RSS per process "
              f"{', '.join(f'{p:.0f}' for p in peaks)} MiB")
    if ref is not None:
        print(f"\nreference-style loop (one input at a time, no reuse, pre-edit generated too): {ref:.1f} s / instance")


if __name__ == "__main__":
    main()
