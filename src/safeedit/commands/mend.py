"""``safeedit mend train``: meta-train MEND's hyper-network once, resumably."""

from __future__ import annotations

import sys
from pathlib import Path

from safeedit.commands.common import add_model_args, add_prompt_mode, load_from_args


def cmd_mend_train(args) -> int:
    from safeedit.data import load_safeedit
    from safeedit.data.splits import question_overlap
    from safeedit.errors import DataError
    from safeedit.lm import use_chat_template
    from safeedit.lm.loading import DEFAULT_MODEL
    from safeedit.methods import get_method
    from safeedit.methods.mend import train_mend
    from safeedit.methods.options import choose_model, parse_set_options, read_config_file

    config = read_config_file(args.config) if args.config else None
    flags = dict(iterations=args.iterations, checkpoint_every=args.checkpoint_every)
    overrides = {k: v for k, v in flags.items() if v is not None} | parse_set_options(args.set)  # unset: the config's
    method = get_method("mend", config, **overrides)
    train = load_safeedit(args.data, split=args.split).instances
    val = []
    if args.val_data:
        val = load_safeedit(args.val_data, split=args.val_split).select(None, args.val_n, where=args.val_data)
        overlap = question_overlap(train, val)
        if overlap.shared_question_keys:
            raise DataError(f"{len(overlap.shared_question_keys)} held-out instance(s) share their harmful question with "
                            f"the training data (e.g. {overlap.shared_questions[0]!r}); split by question")
    model, tok = load_from_args(args, choose_model(args.model, config, DEFAULT_MODEL))
    chat = use_chat_template(tok, args.chat)
    cfg = method.config
    print(f"MEND: {len(train)} training instances, {cfg.iterations} iterations, rank {cfg.rank}, lr {cfg.lr}, "
          f"step lr {cfg.step_lr}, last {cfg.last_layers} layers x {cfg.modules}; checkpoint every "
          f"{cfg.checkpoint_every} into {args.out}", file=sys.stderr)
    record = train_mend(method, model, tok, train, Path(args.out), chat=chat, val=val, progress=not args.quiet,
                        log=lambda m: print(m, file=sys.stderr))
    final = record.get("final") or {}
    print(f"trained {record['iterations']} iterations in {record['seconds']:.0f}s; last outer loss "
          f"{final.get('loss', float('nan')):.4f}")
    for row in record.get("val", []):
        print(f"  held-out after {row['iteration']:>6} iterations: NLL(safe) {row['nll_pre']:.3f} -> {row['nll_post']:.3f}"
              f" after the edit, KL(constraint) {row['kl']:.4f} (n={row['n']})")
    print(f"curve: {Path(args.out) / 'curve.png'}; use it with --method mend --set checkpoint={args.out}")
    return 0


def register(sub) -> None:
    mend = sub.add_parser("mend", help="MEND's hyper-network: meta-train it once (resumable)")
    msub = mend.add_subparsers(dest="mend_command", required=True)
    t = msub.add_parser("train", help="meta-train on a training split; a killed run resumes from its last checkpoint")
    add_model_args(t, default=None)
    add_prompt_mode(t)
    t.add_argument("--data", required=True, help="SafeEdit training data (file, folder or dataset id)")
    t.add_argument("--split", default=None, help="split of --data (e.g. train)")
    t.add_argument("--out", required=True, help="training folder (checkpoints, losses.jsonl, curve.png); resumed if it exists")
    t.add_argument("--val-data", default=None, help="held-out SafeEdit data: edit success measured at each checkpoint")
    t.add_argument("--val-split", default=None)
    t.add_argument("--val-n", type=int, default=10, help="held-out instances to measure (default 10)")
    t.add_argument("--config", default=None, help="YAML of MEND options (configs/mend/*.yaml)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a MEND option, e.g. --set lr=1e-4")
    t.add_argument("--iterations", type=int, default=None, help="meta-training iterations (overrides the config)")
    t.add_argument("--checkpoint-every", type=int, default=None)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_mend_train)
