"""``safeedit locate`` and ``safeedit edit``."""

from __future__ import annotations

import json
import sys
import time

from safeedit.commands.common import add_model_args, add_prompt_mode, load_from_args, parse_indices


def _add_method_args(p) -> None:
    p.add_argument("--config", default=None, help="YAML file of method options (configs/<method>/*.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a method option, e.g. --set lr=1e-5")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--layer", type=int, default=None, help="force the edited layer instead of locating it")
    p.add_argument("--reference-compat", action="store_true", default=None,
                   help="reproduce EasyEdit's behaviour (KL without grad, locate once, location without context)")
    p.add_argument("--layers-module", default=None, help="dotted path of the decoder layers (unknown families)")
    p.add_argument("--wv-module", default=None, help="W_V path inside a layer, e.g. mlp.down_proj (unknown families)")


def _method_and_model(args, name: str):
    """The configured method (``--config``, then the shortcut flags, then ``--set``) and the model to load."""
    from safeedit.lm.loading import DEFAULT_MODEL
    from safeedit.methods import get_method
    from safeedit.methods.options import choose_model, parse_set_options, read_config_file

    config = read_config_file(args.config) if args.config else None
    shortcuts = dict(steps=args.steps, lr=args.lr, layer=args.layer, reference_compat=args.reference_compat,
                     layers_module=args.layers_module, wv_module=args.wv_module)
    options = {k: v for k, v in shortcuts.items() if v is not None} | parse_set_options(args.set)
    method = get_method(name, config, **options)
    return method, choose_model(args.model, config, DEFAULT_MODEL)


def cmd_locate(args) -> int:
    from collections import Counter

    from tqdm.auto import tqdm

    from safeedit.data import load_safeedit

    data = load_safeedit(args.data)
    indices = list(range(len(data))) if args.index == "all" else parse_indices(args.index)
    instances = data.select(indices, where=args.data)
    method, model_name = _method_and_model(args, "dinm")  # the toxic-layer location is DINM's
    model, tok = load_from_args(args, model_name)
    if len(indices) == 1:
        instance = instances[0]
        location = method.locate(model, tok, instance, chat=args.chat)
        print(f"instance {indices[0]} ({instance.category}, attack {instance.attack_name}): toxic layer {location.layer}")
        print(location.table())
        if args.plot:
            from safeedit.bench.plots import plot_layer_distances

            plot_layer_distances(location.distances, location.layer, args.plot, title=f"instance {indices[0]}")
            print(f"plot written to {args.plot}")
        return 0
    layers = {}
    n_layers = 0
    for i, instance in zip(tqdm(indices, desc="locate"), instances):
        location = method.locate(model, tok, instance, chat=args.chat)
        layers[i], n_layers = location.layer, len(location.distances)
    counts = Counter(layers.values())
    print(f"toxic layers of {len(indices)} instances ({n_layers} decoder layers, 0-based)")
    print("| layer | instances | share |\n|------:|----------:|------:|")
    for layer in sorted(counts):
        print(f"| {layer} | {counts[layer]} | {100 * counts[layer] / len(indices):.1f}% |")
    if args.json:
        print(json.dumps({str(i): layer for i, layer in layers.items()}))
    if args.plot:
        from safeedit.bench.plots import plot_layer_histogram

        plot_layer_histogram(counts, n_layers, args.plot, title=f"toxic layers, {len(indices)} instances")
        print(f"plot written to {args.plot}")
    return 0


def cmd_edit(args) -> int:
    from safeedit.data import load_safeedit
    from safeedit.errors import ConfigError, OutputExistsError
    from safeedit.lm import generate, use_chat_template
    from safeedit.lm.saving import save_model

    indices = parse_indices(args.index)
    if args.out:
        from pathlib import Path

        if len(indices) > 1 and not args.sequential:
            raise ConfigError("--out saves one model: edit one instance, or add --sequential to apply all "
                              f"{len(indices)} edits to one model")
        if Path(args.out).exists() and any(Path(args.out).iterdir()):
            raise OutputExistsError(f"{args.out} exists and is not empty; choose a new --out folder")
    instances = load_safeedit(args.data).select(indices, where=args.data)
    method, model_name = _method_and_model(args, args.method)
    if not method.per_instance:
        raise ConfigError(f"method {method.name!r} trains once; use `safeedit bench --method {method.name}`")
    model, tok = load_from_args(args, model_name)
    chat = use_chat_template(tok, args.chat)
    prompts = [inst.adversarial_prompt for inst in instances]
    gen = dict(max_new_tokens=args.max_new_tokens, chat=chat, batch_size=8)
    before = generate(model, tok, prompts, **gen)
    after: list[str] = []
    records = []
    if args.sequential or len(instances) == 1:
        edit = method.edit(model, tok, instances, chat=chat)
        records = edit.instances
        after = generate(model, tok, [method.eval_prompt(p) for p in prompts], **gen)
    else:
        for inst in instances:
            edit = method.edit(model, tok, [inst], chat=chat)
            records.extend(edit.instances)
            after.append(generate(model, tok, method.eval_prompt(inst.adversarial_prompt), **gen))
            edit.restore()
    for i, inst, rec, b, a in zip(indices, instances, records, before, after):
        losses = " ".join(f"{x['loss']:.3f}" for x in rec.losses)
        d = rec.details
        where = f"layer {d['layer']}, " if d.get("layer") is not None else ""
        nll = f", NLL(safe) {d['nll_before']:.3f} -> {d['nll_after']:.3f}" if "nll_after" in d else ""
        print(f"\n=== instance {i} [{inst.category}] attack {inst.attack_name!r} — {where}{rec.seconds:.1f}s{nll}")
        print(f"loss per step: {losses}")
        print(f"--- before ---\n{b}\n--- after ---\n{a}")
    if args.out:
        from dataclasses import asdict

        meta = {"method": method.name, "config": asdict(method.config), "model": model_name,
                "prompt_mode": "chat" if chat else "raw", "data": args.data, "indices": indices,
                "sequential": bool(args.sequential), "edits": [r.as_dict() for r in records],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path = save_model(model, tok, args.out, metadata=meta)
        print(f"\nsaved the edited model to {path} (AutoModelForCausalLM.from_pretrained loads it)")
    if args.json:
        print(json.dumps([r.as_dict() for r in records]), file=sys.stderr)
    return 0


def register(sub) -> None:
    loc = sub.add_parser("locate", help="find the toxic layer of one SafeEdit instance")
    add_model_args(loc, default=None)
    add_prompt_mode(loc)
    _add_method_args(loc)
    loc.add_argument("--data", required=True)
    loc.add_argument("--index", default="0", help="one index, a list/range (0,3,5-9) or 'all' for a histogram")
    loc.add_argument("--plot", default=None, help="write a PNG of the per-layer distances (or the histogram)")
    loc.add_argument("--json", action="store_true", help="also print instance -> layer as JSON")
    loc.set_defaults(func=cmd_locate)

    edit = sub.add_parser("edit", help="detoxify with a per-instance editor (DINM) and show responses before and after")
    edit.add_argument("--method", default="dinm", help="a per-instance editor (default dinm)")
    add_model_args(edit, default=None)
    add_prompt_mode(edit)
    _add_method_args(edit)
    edit.add_argument("--data", required=True)
    edit.add_argument("--index", default="0", help="e.g. 0,1,2 or 0-4")
    edit.add_argument("--sequential", action="store_true", help="edit all instances one after another, no restore")
    edit.add_argument("--out", default=None, help="save the edited model here (one instance, or all with --sequential)")
    edit.add_argument("--max-new-tokens", type=int, default=64)
    edit.add_argument("--json", action="store_true", help="also print the edit records as JSON on stderr")
    edit.set_defaults(func=cmd_edit)
