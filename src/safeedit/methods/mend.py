"""MEND: gradient-decomposition editing with a trained hyper-network (Mitchell et al., ICLR 2022).

For a linear layer ``y = W u``, the gradient of a loss over a sequence is a sum of rank-1 terms,
``∇_W L = Σ_t δ_t u_tᵀ`` with ``u_t`` the layer input at token t and ``δ_t = ∂L/∂y_t``. MEND keeps
one small network per weight *shape* that maps each pair ``(u_t, δ_t)`` — concatenated and
normalised by running mean/std — to ``(ũ_t, δ̃_t)`` through low-rank residual blocks whose output
matrix starts at zero (so the untrained network is the identity), and edits

    W' = W − η_W · Σ_t δ̃_t ũ_tᵀ

with a learned step ``η_W`` per edited matrix (``step_init=0`` leaves the model unchanged). The
sign makes the untrained network one normalised gradient-descent step; η may learn either sign.

Meta-training (``fit`` / ``safeedit mend train``), per iteration one training instance:
prompt = adversarial input, edit target = safe response, locality example = the knowledge
constraint. The edit is computed at the unedited weights, applied functionally (the model's
parameters never change), and the hyper-network is trained on

    edit_weight · NLL(safe response | edited)  +  loc_weight · KL(p_unedited ‖ p_edited)

(KL over the constraint-answer tokens, summed over the vocabulary, mean over positions). Only the
last ``last_layers`` layers change, so the activations below them are computed once per training
instance and each iteration runs only those layers (and logits only where the losses read).

Training folder (``out``): ``ckpt-NNNNNN/`` (``hypernet.safetensors``, ``mend.json``,
``optimizer.pt``), ``latest`` (name of the newest complete checkpoint, replaced atomically),
``losses.jsonl`` (one line per iteration), ``val.jsonl`` (edit success on held-out instances at
each checkpoint) and ``curve.png``. A killed run restarts from ``latest``; lines of
``losses.jsonl`` past it are dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from safeedit.data.schema import SafeEditInstance
from safeedit.data.splits import normalize_question
from safeedit.errors import ConfigError, DataError, InputNotFoundError
from safeedit.lm.arch import _get, resolve_architecture
from safeedit.lm.generation import context_window
from safeedit.methods.base import Edit, EditError, InstanceEdit, Method
from safeedit.methods.sequences import FastRunner, build_sequence

FORMAT = 1
#: config fields that define the hyper-network's shape and what it edits (must match on load/resume)
ARCH_FIELDS = ("last_layers", "modules", "rank", "hidden_blocks", "layers_module")


@dataclass
class MENDConfig:
    """MEND's options. Defaults are the reference's GPU values for SafeEdit (EasyEdit
    ``hparams/TRAINING/MEND/llama-7b.yaml`` and Mitchell et al. 2022); ``configs/mend/smollm2-135m.yaml``
    holds the reduced CPU schedule."""

    #: edit the listed modules of the last N decoder layers (reference: 3)
    last_layers: int = 3
    #: module paths inside a decoder layer (reference: the FFN's gate, up and down projections)
    modules: list[str] = field(default_factory=lambda: ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
    #: rank of each low-rank residual block of the hyper-network (reference: 1920)
    rank: int = 1920
    #: residual blocks per hyper-network (reference: 1 hidden layer)
    hidden_blocks: int = 1
    #: initial per-matrix step η (reference: edit_lr 1e-4); 0 makes every edit a no-op until trained
    step_init: float = 1e-4
    #: Adam learning rate of the hyper-network (reference: 1e-6)
    lr: float = 1e-6
    #: Adam learning rate of the per-matrix steps η (reference: lr_lr 1e-4)
    step_lr: float = 1e-4
    #: weight of NLL(safe response) after the edit in the outer loss (reference: cedit 0.1)
    edit_weight: float = 0.1
    #: weight of KL(pre ‖ post) on the knowledge-constraint answer (reference: cloc 1.0)
    loc_weight: float = 1.0
    #: gradient-norm clip of the outer update (reference: 100)
    grad_clip: float = 100.0
    #: meta-training iterations, one instance each (reference: 30,000+ on GPUs; days on this CPU)
    iterations: int = 30000
    #: write a resumable checkpoint every N iterations (ours)
    checkpoint_every: int = 1000
    #: seed of the hyper-network's initialisation and the training order (ours)
    seed: int = 0
    #: a trained hyper-network folder (``safeedit mend train --out``, or a bench run's ``artifact``) to
    #: edit with; then no training split is needed (ours)
    checkpoint: str | None = None
    #: text appended to the edit prompt and post-edit evaluation inputs (reference MEND: none)
    suffix: str | None = None
    #: token budget of one sequence, prompt cut from the left (ours: the model window)
    max_length: int | None = None
    #: score only the first N tokens of the safe response and of the constraint answer (ours: CPU cost;
    #: a refusal is decided by the first tokens); None = all (reference)
    max_target_tokens: int | None = None
    #: refuse to edit an instance whose harmful question was in the training data (ours: a leak)
    refuse_train_questions: bool = True
    #: dotted path of the decoder layers, for families not in safeedit.lm.arch (ours)
    layers_module: str | None = None

    def __post_init__(self):
        if self.last_layers < 1:
            raise ConfigError(f"MEND last_layers must be >= 1, got {self.last_layers}")
        if self.rank < 1 or self.hidden_blocks < 0:
            raise ConfigError(f"MEND rank must be >= 1 and hidden_blocks >= 0, got {self.rank}, {self.hidden_blocks}")
        if self.iterations < 0 or self.checkpoint_every < 1:
            raise ConfigError("MEND iterations must be >= 0 and checkpoint_every >= 1")
        if not self.modules:
            raise ConfigError("MEND modules must name at least one module")

    def architecture(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ARCH_FIELDS}


# ---------------------------------------------------------------------- the hyper-network
class RunningNorm(nn.Module):
    """Running mean/std of the rows it has seen (updated in training mode); identity before any."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        n, mean = x.shape[0], x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x)
        if self.count < 2:
            return x
        std = (self.m2 / (self.count - 1)).sqrt().to(x.dtype)
        return (x - self.mean.to(x.dtype)) / (std + self.eps)


class LowRankBlock(nn.Module):
    """``x + B·relu(A·x + a)`` with B zero at start: the identity until trained."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, dim))
        nn.init.xavier_uniform_(self.A)
        self.a = nn.Parameter(torch.zeros(rank))
        self.B = nn.Parameter(torch.zeros(dim, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(x @ self.A.T + self.a) @ self.B.T


class GradientNet(nn.Module):
    """One per weight shape: ``(u_t, δ_t) -> (ũ_t, δ̃_t)`` for every token t."""

    def __init__(self, d_in: int, d_out: int, rank: int, blocks: int):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.norm = RunningNorm(d_in + d_out)
        self.blocks = nn.ModuleList(LowRankBlock(d_in + d_out, min(rank, d_in + d_out)) for _ in range(blocks))

    def forward(self, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(torch.cat([u, delta], dim=-1))
        for block in self.blocks:
            x = block(x)
        return x[:, :self.d_in], x[:, self.d_in:]


def _key(name: str) -> str:
    return name.replace(".", "__")


class HyperNetwork(nn.Module):
    """The gradient networks (keyed by shape) and the per-matrix steps η."""

    def __init__(self, targets: dict[str, tuple[int, int]], config: MENDConfig):
        super().__init__()
        self.targets = dict(targets)  # param name -> (d_in, d_out)
        shapes = sorted({shape for shape in targets.values()})
        self.nets = nn.ModuleDict({f"{i}x{o}": GradientNet(i, o, config.rank, config.hidden_blocks) for i, o in shapes})
        self.steps = nn.ParameterDict({_key(n): nn.Parameter(torch.tensor(float(config.step_init))) for n in targets})

    def net_for(self, name: str) -> GradientNet:
        d_in, d_out = self.targets[name]
        return self.nets[f"{d_in}x{d_out}"]

    def delta(self, name: str, u: torch.Tensor, grad_out: torch.Tensor, weight_shape) -> torch.Tensor:
        """``−η · Σ_t δ̃_t ũ_tᵀ`` in the weight's own layout (Linear (out, in); GPT-2 Conv1D (in, out))."""
        u_t, d_t = self.net_for(name)(u, grad_out)
        d_in, d_out = self.targets[name]
        update = d_t.T @ u_t if tuple(weight_shape) == (d_out, d_in) else u_t.T @ d_t
        return -self.steps[_key(name)] * update


# ---------------------------------------------------------------------- helpers
def edited_params(model, config: MENDConfig) -> tuple[int, dict[str, tuple[nn.Module, int, int]]]:
    """(first edited layer, {param name: (module, d_in, d_out)}) for the configured modules."""
    arch = resolve_architecture(model, layers=config.layers_module, w_v="mlp.down_proj")
    layers = arch.decoder_layers(model)
    n = len(layers)
    if config.last_layers > n:
        raise ConfigError(f"MEND last_layers={config.last_layers} but the model has {n} layers")
    first = n - config.last_layers
    out: dict[str, tuple[nn.Module, int, int]] = {}
    for layer in range(first, n):
        for path in config.modules:
            module = _get(layers[layer], path)
            weight = getattr(module, "weight", None)
            if weight is None or weight.dim() != 2:
                raise ConfigError(f"MEND module {path!r} of layer {layer} has no 2-D weight")
            if isinstance(module, nn.Linear):
                d_out, d_in = weight.shape
            else:  # GPT-2's Conv1D keeps (in, out)
                d_in, d_out = weight.shape
            out[f"{arch.layers}.{layer}.{path}.weight"] = (module, d_in, d_out)
    return first, out


def _question_hashes(instances: Sequence[SafeEditInstance]) -> list[str]:
    return sorted({hashlib.sha256(normalize_question(i.question).encode()).hexdigest()[:16] for i in instances})


def _resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or a training folder whose ``latest`` names one."""
    path = Path(path)
    if (path / "hypernet.safetensors").is_file():
        return path
    latest = path / "latest"
    if latest.is_file():
        folder = path / latest.read_text().strip()
        if (folder / "hypernet.safetensors").is_file():
            return folder
    raise InputNotFoundError(f"no trained MEND hyper-network in {path} (expected hypernet.safetensors or a 'latest' "
                             "file from `safeedit mend train`)")


# ---------------------------------------------------------------------- the method
class MEND(Method):
    name = "mend"
    config_class = MENDConfig
    requires_training = True
    summary = "per instance: a meta-trained hyper-network turns the safe response's gradient into a rank-1-per-token edit of the last FFNs (MEND)"

    def __init__(self, config: MENDConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        # a trained hyper-network given as checkpoint=DIR needs no training split
        self.requires_training = self.config.checkpoint is None
        self.hyper: HyperNetwork | None = None
        self.meta: dict[str, Any] = {}
        self._runners: dict[str, FastRunner] = {}

    def eval_prompt(self, text: str) -> str:
        return f"{text.rstrip()} {self.config.suffix}" if self.config.suffix else text

    # ------------------------------------------------------------ building, saving, loading
    def init_hypernet(self, model) -> HyperNetwork:
        """A fresh (identity) hyper-network for ``model``'s edited matrices."""
        _, params = edited_params(model, self.config)
        torch.manual_seed(self.config.seed)
        self.hyper = HyperNetwork({n: (i, o) for n, (_, i, o) in params.items()}, self.config)
        self.hyper.to(next(model.parameters()).device)
        self.meta = {}
        return self.hyper

    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        """``hypernet.safetensors`` + ``mend.json`` in ``folder`` (created)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.hyper.state_dict().items()}
        save_file(state, str(folder / "hypernet.safetensors"))
        meta = {"format": FORMAT, "architecture": self.config.architecture(), "config": asdict(self.config),
                "targets": {n: list(s) for n, s in self.hyper.targets.items()}, **self.meta, **(extra or {})}
        (folder / "mend.json").write_text(json.dumps(meta, indent=2, default=str))

    def load(self, model, path: str | Path) -> Path:
        """Load a trained hyper-network; refuse one made for other matrices or another model."""
        from safetensors.torch import load_file

        from safeedit.lm.fingerprint import model_fingerprint

        folder = _resolve_checkpoint(path)
        meta = json.loads((folder / "mend.json").read_text())
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{folder}: MEND checkpoint format {meta.get('format')} (expected {FORMAT})")
        # the saved network's shape and edited matrices win over this config's
        self.config = type(self.config)(**{**asdict(self.config), **meta["architecture"]})
        fingerprint = meta.get("model_fingerprint")
        if fingerprint and fingerprint != model_fingerprint(model):
            raise ConfigError(f"{folder} was trained on another model (fingerprint {fingerprint}, this model "
                              f"{model_fingerprint(model)}); a MEND hyper-network only fits the model it was trained on")
        hyper = self.init_hypernet(model)
        if sorted(hyper.targets) != sorted(meta["targets"]):
            raise ConfigError(f"{folder} edits {sorted(meta['targets'])}, this model has {sorted(hyper.targets)}")
        hyper.load_state_dict(load_file(str(folder / "hypernet.safetensors")))
        hyper.eval()
        self.meta = {k: meta[k] for k in ("model_fingerprint", "train_questions", "iteration", "train_instances") if k in meta}
        return folder

    def fit(self, model, tokenizer, train, *, chat=None, out_dir: Path) -> dict[str, Any]:
        if self.config.checkpoint is not None:
            raise ConfigError("MEND: checkpoint=... reuses a trained hyper-network; drop it to train on --train-data, "
                              "or drop --train-data to use it")
        return train_mend(self, model, tokenizer, train, Path(out_dir), chat=chat, progress=True)

    def load_fitted(self, model, tokenizer, out_dir: Path) -> None:
        self.load(model, out_dir)

    # ------------------------------------------------------------ gradient factors and the edit
    def _runner(self, model, tokenizer, instance: SafeEditInstance, chat, first_layer: int, arch,
                keep: bool = False) -> FastRunner:
        """Edit sequence (0) and locality sequence (1), activations below the edited layers cached."""
        cached = self._runners.get(instance.key) if keep else None
        if cached is not None:
            return cached
        window = self.config.max_length or context_window(model, tokenizer)
        seqs = [build_sequence(tokenizer, self.eval_prompt(instance.adversarial_prompt), instance.safe_response,
                               chat=chat, max_length=window, max_target=self.config.max_target_tokens),
                build_sequence(tokenizer, instance.knowledge_constraint.prompt, instance.knowledge_constraint.answer,
                               chat=chat, max_length=window, max_target=self.config.max_target_tokens)]
        runner = FastRunner(model, seqs, arch, first_layer, keep_logits=False)
        if keep:
            self._runners[instance.key] = runner
        return runner

    @staticmethod
    def factors(runner: FastRunner, targets: dict[str, tuple[nn.Module, int, int]]
                ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
        """{param: (u (T, d_in), δ (T, d_out))} of NLL(safe response) at the current weights, and that NLL."""
        inputs, outputs, handles = {}, {}, []

        def hook(name):
            def grab(_module, args, output):
                inputs[name] = args[0].detach()
                outputs[name] = output
            return grab

        weights = [module.weight for module, _, _ in targets.values()]
        flags = [w.requires_grad for w in weights]
        for name, (module, _, _) in targets.items():
            handles.append(module.register_forward_hook(hook(name)))
        try:
            for w in weights:
                w.requires_grad_(True)  # so the outputs are in the graph; only their grads are taken
            with torch.enable_grad():
                nll = F.cross_entropy(runner.target_logits(0).float(), runner.target_ids(0))
                names = list(targets)
                grads = torch.autograd.grad(nll, [outputs[n] for n in names])
        finally:
            for h in handles:
                h.remove()
            for w, f in zip(weights, flags):
                w.requires_grad_(f)
        out = {}
        for n, g in zip(names, grads):
            u, d = inputs[n], g.detach()
            out[n] = (u.reshape(-1, u.shape[-1]), d.reshape(-1, d.shape[-1]))
        return out, nll.item()

    def deltas(self, targets, factors) -> dict[str, torch.Tensor]:
        return {n: self.hyper.delta(n, u, d, targets[n][0].weight.shape) for n, (u, d) in factors.items()}

    def edit(self, model, tokenizer, instances: Sequence[SafeEditInstance] | SafeEditInstance, *,
             chat: bool | None = None) -> Edit:
        if isinstance(instances, SafeEditInstance):
            instances = [instances]
        if torch.is_inference_mode_enabled():
            raise EditError("MEND needs gradients; call edit() outside torch.inference_mode()")
        if self.hyper is None:
            if self.config.checkpoint is None:
                raise EditError("MEND has no trained hyper-network: train one (`safeedit mend train`, or bench "
                                "--train-data) or pass checkpoint=DIR")
            self.load(model, self.config.checkpoint)
        self._check_leak(instances)
        self.hyper.eval()
        arch = resolve_architecture(model, layers=self.config.layers_module, w_v="mlp.down_proj")
        first, targets = edited_params(model, self.config)
        edit = Edit(model=model, method=self.name)
        try:
            for instance in instances:
                start = time.perf_counter()
                runner = self._runner(model, tokenizer, instance, chat, first, arch)
                with runner:
                    factors, nll_before = self.factors(runner, targets)
                    with torch.no_grad():
                        deltas = self.deltas(targets, factors)
                        for name, delta in deltas.items():
                            weight = targets[name][0].weight
                            edit.remember(name, weight)
                            weight.add_(delta.to(weight.dtype))
                        nll_after = F.cross_entropy(runner.target_logits(0).float(), runner.target_ids(0)).item()
                if not math.isfinite(nll_after):
                    raise EditError(f"non-finite NLL after the MEND edit of {instance.key}; model restored")
                norms = {n: float(d.norm()) for n, d in deltas.items()}
                edit.instances.append(InstanceEdit(
                    key=instance.key, seconds=time.perf_counter() - start,
                    losses=[{"step": 0, "loss": nll_before, "nll": nll_before}, {"step": 1, "loss": nll_after, "nll": nll_after}],
                    details={"nll_before": nll_before, "nll_after": nll_after, "tokens": int(next(iter(factors.values()))[0].shape[0]),
                             "delta_norms": norms, "layers": list(range(first, first + self.config.last_layers))}))
        except BaseException:
            edit.restore()
            raise
        return edit

    def _check_leak(self, instances) -> None:
        trained_on = set(self.meta.get("train_questions") or [])
        if not (trained_on and self.config.refuse_train_questions):
            return
        for inst in instances:
            if _question_hashes([inst])[0] in trained_on:
                raise DataError(f"instance {inst.key} (id={inst.id!r}) asks a harmful question the MEND hyper-network was "
                                "trained on: its edit would be scored on seen data (refuse_train_questions=false to allow)")


# ---------------------------------------------------------------------- meta-training
def _order(n: int, iteration: int, seed: int) -> int:
    """The training instance of ``iteration``: a fresh seeded permutation every epoch (resumable)."""
    epoch, pos = divmod(iteration, n)
    perm = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(perm)
    return perm[pos]


def outer_loss(method: MEND, runner: FastRunner, targets) -> tuple[torch.Tensor, dict[str, float]]:
    """One meta-training example: edit at the unedited weights, then edit and locality losses."""
    cfg = method.config
    factors, nll_pre = method.factors(runner, targets)
    deltas = method.deltas(targets, factors)
    params = {n: targets[n][0].weight + d for n, d in deltas.items()}
    nll_post = F.cross_entropy(runner.target_logits(0, params=params).float(), runner.target_ids(0))
    with torch.no_grad():
        ref = F.log_softmax(runner.target_logits(1).float(), dim=-1)
    post = F.log_softmax(runner.target_logits(1, params=params).float(), dim=-1)
    kl = (ref.exp() * (ref - post)).sum(-1).mean()
    loss = cfg.edit_weight * nll_post + cfg.loc_weight * kl
    return loss, {"loss": loss.item(), "nll_pre": nll_pre, "nll_post": nll_post.item(), "kl": kl.item()}


def evaluate_edits(method: MEND, model, tokenizer, instances, *, chat=None) -> dict[str, float]:
    """Mean NLL(safe response) before (``nll_pre``) and after (``nll_post``) the edit and KL on the
    constraint answer, over ``instances``; nothing is updated."""
    first, targets = edited_params(model, method.config)
    arch = resolve_architecture(model, layers=method.config.layers_module, w_v="mlp.down_proj")
    was_training = method.hyper.training
    method.hyper.eval()
    rows = []
    try:
        for inst in instances:
            runner = method._runner(model, tokenizer, inst, chat, first, arch, keep=True)
            with runner, torch.no_grad():  # the gradient factors still take their own grads
                _, stats = outer_loss(method, runner, targets)
            rows.append(stats)
    finally:
        method.hyper.train(was_training)
    keys = rows[0].keys() if rows else []
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys} | {"n": len(rows)}


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_losses(path: Path, upto: int) -> list[dict]:
    """Lines of losses.jsonl for iterations < ``upto`` (a torn last line is dropped)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("iteration", upto) < upto:
                rows.append(row)
    return rows


def train_mend(method: MEND, model, tokenizer, train: Sequence[SafeEditInstance], out: Path, *, chat=None,
               val: Sequence[SafeEditInstance] = (), progress: bool = True,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Meta-train ``method``'s hyper-network on ``train`` into ``out``, resuming from ``out/latest``.

    The model's parameters are never changed. Returns a JSON-able record (iterations, seconds,
    final losses, edit success on ``val``).
    """
    from tqdm.auto import tqdm

    from safeedit.lm.fingerprint import model_fingerprint

    cfg = method.config
    if not train:
        raise DataError("MEND training needs at least one training instance")
    if torch.is_inference_mode_enabled():
        raise EditError("MEND training needs gradients; call it outside torch.inference_mode()")
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(model)
    train_keys = hashlib.sha256(json.dumps([i.key for i in train]).encode()).hexdigest()[:16]
    identity = {"architecture": cfg.architecture(), "model_fingerprint": fingerprint, "train_keys": train_keys,
                "seed": cfg.seed, "chat": chat}
    first, targets = edited_params(model, cfg)
    arch = resolve_architecture(model, layers=cfg.layers_module, w_v="mlp.down_proj")
    method.init_hypernet(model)
    hyper = method.hyper
    optimizer = torch.optim.Adam([
        {"params": [p for n, p in hyper.named_parameters() if not n.startswith("steps.")], "lr": cfg.lr},
        {"params": list(hyper.steps.parameters()), "lr": cfg.step_lr}])
    start_it, seconds_before = 0, 0.0
    if (out / "latest").is_file():
        folder = _resolve_checkpoint(out)
        meta = json.loads((folder / "mend.json").read_text())
        if meta.get("identity") != identity:
            raise ConfigError(f"{out} holds MEND training with other settings (model, training data, architecture or "
                              "seed); use a new --out folder")
        from safetensors.torch import load_file

        hyper.load_state_dict(load_file(str(folder / "hypernet.safetensors")))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        start_it, seconds_before = int(meta["iteration"]), float(meta.get("seconds", 0.0))
        if log:
            log(f"resuming MEND training from {folder.name} (iteration {start_it})")
    losses_path = out / "losses.jsonl"
    history = _read_losses(losses_path, start_it)
    _write_text_atomic(losses_path, "".join(json.dumps(r) + "\n" for r in history))
    val_path = out / "val.jsonl"
    val_rows = [r for r in _read_losses(val_path, start_it + 1)]  # evaluations up to the checkpoint
    _write_text_atomic(val_path, "".join(json.dumps(r) + "\n" for r in val_rows))
    method.meta = {"model_fingerprint": fingerprint, "train_questions": _question_hashes(train),
                   "train_instances": len(train)}
    t0 = time.perf_counter()

    def validate(iteration: int) -> None:
        scores = evaluate_edits(method, model, tokenizer, val, chat=chat)
        with open(val_path, "a") as vf:
            vf.write(json.dumps({"iteration": iteration, **scores}) + "\n")
        if log:
            log(f"iteration {iteration}: held-out NLL(safe) {scores['nll_pre']:.3f} -> "
                f"{scores['nll_post']:.3f} after the edit, KL {scores['kl']:.4f} (n={scores['n']})")

    if val and not val_rows:
        validate(start_it)  # the untrained (identity) network, for comparison
    hyper.train()
    total = cfg.iterations
    bar = tqdm(total=total, initial=start_it, desc="mend train", disable=not progress)
    last: dict[str, float] = {}

    def checkpoint(iteration: int) -> None:
        name = f"ckpt-{iteration:07d}"
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        method.save(tmp, {"iteration": iteration, "identity": identity,
                          "seconds": seconds_before + time.perf_counter() - t0})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        final = out / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = (out / "latest").read_text().strip() if (out / "latest").is_file() else None
        _write_text_atomic(out / "latest", name + "\n")
        if old and old != name:
            shutil.rmtree(out / old, ignore_errors=True)

    grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():  # only the hyper-network learns; no grads pile up on the model
        p.requires_grad_(False)
    try:
        with open(losses_path, "a") as fh:
            for it in range(start_it, total):
                inst = train[_order(len(train), it, cfg.seed)]
                runner = method._runner(model, tokenizer, inst, chat, first, arch, keep=True)
                with runner:
                    loss, stats = outer_loss(method, runner, targets)
                if not math.isfinite(stats["loss"]):
                    raise EditError(f"non-finite MEND outer loss at iteration {it} (instance {inst.key}); lower lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(hyper.parameters(), cfg.grad_clip)
                optimizer.step()
                last = {"iteration": it, "key": inst.key, **stats, "grad_norm": float(grad_norm),
                        "seconds": round(seconds_before + time.perf_counter() - t0, 3)}
                fh.write(json.dumps(last) + "\n")
                fh.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", nll_post=f"{stats['nll_post']:.3f}", kl=f"{stats['kl']:.4f}")
                done = it + 1
                if done % cfg.checkpoint_every == 0 or done == total:
                    os.fsync(fh.fileno())
                    if val:
                        validate(done)
                        hyper.train()
                    checkpoint(done)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(grad_flags[n])
    bar.close()
    if start_it >= total and not (out / "latest").is_file():
        checkpoint(total)
    hyper.eval()
    seconds = seconds_before + time.perf_counter() - t0
    try:
        plot_curve(out / "losses.jsonl", out / "curve.png")
    except Exception as exc:  # a missing plotting backend must not lose the training
        if log:
            log(f"could not plot the curve: {exc}")
    self_record = {"iterations": total, "seconds": seconds, "final": last, "out": str(out)}
    val_rows = _read_losses(val_path, total + 1)
    if val_rows:
        self_record["val"] = val_rows
    # the artefact of a bench run is this folder; 'latest' names the hyper-network to load
    return self_record


def plot_curve(losses_path: Path, png: Path, window: int = 25) -> None:
    """Outer loss per iteration (and its moving average) with the edit NLL and KL below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in losses_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    its = [r["iteration"] for r in rows]

    def smooth(xs):
        out, acc = [], 0.0
        for i, x in enumerate(xs):
            acc += x
            if i >= window:
                acc -= xs[i - window]
            out.append(acc / min(i + 1, window))
        return out

    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    loss = [r["loss"] for r in rows]
    axes[0].plot(its, loss, alpha=0.3, label="outer loss")
    axes[0].plot(its, smooth(loss), label=f"moving mean ({window})")
    axes[0].set_ylabel("0.1·NLL_post + KL")
    axes[0].legend()
    axes[1].plot(its, smooth([r["nll_pre"] for r in rows]), label="NLL(safe) before edit")
    axes[1].plot(its, smooth([r["nll_post"] for r in rows]), label="NLL(safe) after edit")
    axes[1].plot(its, smooth([r["kl"] for r in rows]), label="KL(pre‖post) locality")
    axes[1].set_xlabel("iteration")
    axes[1].legend()
    fig.suptitle("MEND meta-training (training instances)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


__all__ = ["MEND", "MENDConfig", "HyperNetwork", "evaluate_edits", "plot_curve", "train_mend"]
