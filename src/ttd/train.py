"""The training loop: one or many processes (``torchrun``), exact checkpoint/resume, logging.

The loop is generic over an *objective* (``(model, batch) -> (loss, metrics)``, see
:mod:`ttd.objectives`); TTD (:func:`train`) is one objective and CLIP pretraining another.

Data parallelism: each process takes ``batch_size / world`` samples of every global batch; after
the backward pass ONE all-reduce sums the gradients weighted by each process's batch size (plus
two small bookkeeping entries), so every process applies the same update: the gradient of the
mean loss over the global batch. ``DistributedDataParallel`` is not used because TTD leaves some
adapters out of the graph depending on the dense variant and scorer (MaskCLIP's dense path skips
the last block's q and k), which DDP only tolerates with an extra graph search every step; the
adapters' gradients are small, so one flat all-reduce costs less than DDP's buckets. (Full
fine-tuning therefore does not overlap communication with the backward pass.)

A checkpoint (``OUT/checkpoints/step_XXXXXXXX/``) holds the trainable parameters, the optimiser
and scheduler, the configuration, and per process the RNG states of Python, NumPy, torch and CUDA
plus the data position; it is written to a temporary folder and renamed, so it is complete or
absent. ``resume`` continues from the newest one exactly: the parameters after step N of a
resumed run equal those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
import typing
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .errors import TTDError
from .io import atomic_write_bytes, default_device
from .models.dense import DENSE_VARIANTS, DenseCLIP

__all__ = [
    "TrainConfig",
    "load_config",
    "config_to_yaml",
    "WarmupCosine",
    "Distributed",
    "Trainer",
    "TrainResult",
    "train",
    "latest_checkpoint",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16/openai"
CHECKPOINTS = "checkpoints"


def _opt(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Everything a run needs. YAML keys and ``ttd train`` flags have these names (``--lora-rank``)."""

    # data and model
    data: str = _opt("", "JSONL manifest of (image, caption) or WebDataset shards (folder, glob, {a..b} pattern)")
    out: str = _opt("runs/ttd", "output folder: adapter, checkpoints, log.jsonl, tensorboard/")
    model: str = _opt(DEFAULT_MODEL, "base CLIP weights: a known name or a local file")
    dense: str = _opt("maskclip", "dense variant", tuple(DENSE_VARIANTS))
    quick_gelu: bool | None = _opt(None, "activation of a local weights file (named weights know theirs)")
    keep: str | None = _opt(None, "keep-list of shard sample keys (from `ttd data prune`)")
    image_size: int = _opt(224, "training resolution: short-side resize then centre crop")
    workers: int = _opt(4, "data-loading processes per training process (0: load in the main process)")
    shuffle_buffer: int = _opt(1000, "shards: samples shuffled within a shard through a buffer of this size")
    # optimisation
    steps: int = _opt(10_000, "optimiser steps in total")
    batch_size: int = _opt(64, "GLOBAL batch size, split evenly across processes")
    lr: float = _opt(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = _opt(0.01, "AdamW weight decay (matrices only; not biases, norms, scalars)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.999, "AdamW beta2")
    warmup_steps: int = _opt(500, "linear warm-up steps, then cosine decay")
    min_lr_ratio: float = _opt(0.0, "learning rate at the end, as a fraction of the peak")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: off)")
    precision: str = _opt("auto", "auto: bf16 autocast on CUDA, fp32 on CPU", ("auto", "fp32", "bf16"))
    seed: int = _opt(0, "seed of adapter initialisation, data order and dropout")
    device: str | None = _opt(None, "cpu, cuda … (default: cuda when present; torchrun: cuda:LOCAL_RANK)")
    # TTD (METHOD §4-§5)
    scorer: str = _opt("pixel", "tag scorer of the online selection: pixel (Eq. 2) or image (Eq. 1)")
    tau: float = _opt(0.5, "selection threshold τ on the tag scores")
    score_norm: str = _opt("softmax", "score normalisation across tags", ("softmax", "minmax", "none"))
    keep_argmax: bool = _opt(False, "always select each caption's best-scoring tag")
    tag_template: str = _opt("{}", "prompt of a tag, e.g. 'a photo of a {}.' ({} = the raw word)")
    distance: str = _opt("l1", "distance d of Eq. 4-5", ("l1", "mse", "bce"))
    distill_weight: float = _opt(1.0, "weight of L_distill (Eq. 4); 0 = the 'L_tag only' ablation")
    tag_weight: float = _opt(1.0, "λ, weight of L_tag (Eq. 5); 0 = the 'L_distill only' ablation")
    minmax_eps: float = _opt(1e-6, "ε of the min-max normalisation of selected tag heatmaps")
    # what is trained
    finetune: str = _opt("lora", "lora: adapters (+ calibration); full: every weight", ("lora", "full"))
    lora_rank: int = _opt(8, "LoRA rank")
    lora_alpha: float = _opt(8.0, "LoRA alpha (update scale = alpha / rank)")
    lora_dropout: float = _opt(0.0, "dropout on the adapters' input")
    lora_targets: tuple[str, ...] = _opt(("q", "k", "v", "out"), "adapted projections (comma-separated)")
    lora_towers: tuple[str, ...] = _opt(("image", "text"), "adapted encoders (comma-separated)")
    train_calibration: bool = _opt(True, "train the heatmap calibration w, b")
    # bookkeeping
    log_every: int = _opt(10, "log (JSONL, TensorBoard, progress bar) every N steps")
    save_every: int = _opt(1000, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _opt(2, "checkpoints kept on disk (the newest)")
    tensorboard: bool = _opt(True, "write TensorBoard events when tensorboard is installed")

    def validate(self) -> TrainConfig:
        """Raise a one-line :class:`TTDError` for the first bad value."""
        if not self.data:
            raise TTDError("no training data: pass --data (a JSONL manifest or WebDataset shards)")
        for name in ("steps", "batch_size", "image_size", "log_every", "save_every", "keep_checkpoints", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise TTDError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("workers", "warmup_steps", "weight_decay", "grad_clip", "distill_weight", "tag_weight"):
            if getattr(self, name) < 0:
                raise TTDError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.lr > 0:
            raise TTDError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.tau <= 1:
            raise TTDError(f"tau must lie in [0, 1], got {self.tau}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TTDError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise TTDError(f"unknown {f.name} {getattr(self, f.name)!r}; choose one of: {', '.join(choices)}")
        self.lora_config()  # validates rank, dropout, targets, towers
        return self

    def lora_config(self):
        from .models.lora import LoRAConfig

        return LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets, self.lora_towers)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _coerce(name: str, value, hint):
    """A YAML or flag value → the field's type (YAML reads ``1e-4`` as a string)."""
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = hint if not args or typing.get_origin(hint) is tuple else args[0]
    try:
        if typing.get_origin(base) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(v).strip() for v in items if str(v).strip())
        if base is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return base(value)
    except (TypeError, ValueError):
        raise TTDError(f"config key {name!r}: cannot read {value!r} as {getattr(base, '__name__', base)}") from None


def load_config(path: str | os.PathLike | None = None, base: TrainConfig | None = None, **overrides) -> TrainConfig:
    """``base`` (default: the defaults), updated by the YAML file at ``path``, then by ``overrides``."""
    values = (base or TrainConfig()).to_dict()
    hints = typing.get_type_hints(TrainConfig)
    updates = {}
    if path is not None:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise TTDError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise TTDError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise TTDError(f"config file {path} must hold a mapping of keys to values")
        updates.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    updates.update(overrides)
    unknown = sorted(set(updates) - set(hints))
    if unknown:
        raise TTDError(f"unknown config key {unknown[0]!r}; valid keys: {', '.join(hints)}")
    for key, value in updates.items():
        values[key] = _coerce(key, value, hints[key])
    return TrainConfig(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def config_to_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)


class WarmupCosine:
    """Learning-rate factor: linear warm-up from 0, then cosine decay to ``min_ratio``."""

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.0):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --- processes --------------------------------------------------------------------------------
@dataclass
class Distributed:
    """This process's place in a (possibly one-process) run; started from torchrun's variables."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @classmethod
    def setup(cls, device: str | None = None) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if device is None and world > 1 and torch.cuda.is_available():
            device = f"cuda:{local_rank}"
        dev = default_device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        owns = False
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            owns = True
        if dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        return cls(rank, world, local_rank, dev, owns)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1 and dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def reduce_gradients(params: list[torch.nn.Parameter], weight: float, extra: list[float], dist_env: Distributed) -> list[float]:
    """Make every process's gradients ``Σ_r w_r·g_r / Σ_r w_r`` with ONE all-reduce.

    ``weight`` is this process's sample count; a parameter keeps no gradient only when it has
    none on every process. ``extra`` values are summed alongside; returned with ``Σ w`` first.
    """
    if not dist_env.active:
        return [weight, *extra]
    device = params[0].device
    chunks = [p.grad.flatten().float() * weight if p.grad is not None else torch.zeros(p.numel(), device=device) for p in params]
    flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    tail = torch.tensor([weight, *extra], dtype=torch.float32, device=device)
    flat = torch.cat([*chunks, flags, tail])
    dist.all_reduce(flat)
    sums = flat[-len(tail) :].tolist()
    total = max(sums[0], 1e-12)
    offset = 0
    for p, has in zip(params, flat[-len(tail) - len(params) : -len(tail)].tolist()):
        n = p.numel()
        p.grad = (flat[offset : offset + n] / total).view_as(p).to(p.dtype) if has else None
        offset += n
    return sums


# --- checkpoints ------------------------------------------------------------------------------
def _step_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"step_{step:08d}"


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``out`` (None when there is none)."""
    root = Path(out) / CHECKPOINTS
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _save_torch(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_torch(path: Path):
    if not path.is_file():
        raise TTDError(f"checkpoint file missing: {path} (was the run written by a different number of processes?)")
    return torch.load(path, map_location="cpu", weights_only=True)


# --- the trainer ------------------------------------------------------------------------------
@dataclass
class TrainResult:
    step: int
    adapter: Path | None
    checkpoint: Path | None
    metrics: dict[str, float]
    stopped_early: bool


class Trainer:
    """Runs ``objective`` on ``model`` with the data, schedule and bookkeeping of ``config``.

    ``model``: an in-memory dense model (tests, notebooks); by default ``config.model`` is loaded.
    ``resume``: continue from the newest checkpoint in ``config.out``.
    """

    def __init__(self, config: TrainConfig, objective, model: DenseCLIP | None = None, resume: bool = False):
        from .data.pairs import PairLoader
        from .models.lora import base_fingerprint, inject_lora, set_trainable

        self.config = config.validate()
        self.objective = objective
        self.dist = Distributed.setup(config.device)
        self.out = Path(config.out)
        checkpoint = latest_checkpoint(self.out)
        if resume and checkpoint is None:
            raise TTDError(f"no checkpoint under {self.out} to resume; drop --resume to start a new run")
        if not resume and checkpoint is not None:
            raise TTDError(f"{self.out} already holds a run (checkpoint {checkpoint.name}); pass --resume to continue it or choose another --out")
        if config.precision == "bf16" and self.dist.device.type != "cuda":
            raise TTDError("bf16 mixed precision runs on CUDA only; use --precision fp32 (or auto) on CPU")
        self.autocast = self.dist.device.type == "cuda" and config.precision in ("auto", "bf16")

        _seed_everything(config.seed)  # identical adapter initialisation in every process
        if model is None:
            from .models import load_model

            model = load_model(config.model, dense=config.dense, device=str(self.dist.device), quick_gelu=config.quick_gelu)
        self.model = model.to(self.dist.device)
        self.model.base_fingerprint = base_fingerprint(self.model)
        if config.finetune == "lora":
            inject_lora(self.model, config.lora_config())
        self.names = set_trainable(self.model, config.finetune, config.train_calibration)
        named = dict(self.model.named_parameters())
        self.params = [named[n] for n in self.names]
        if self.dist.active:
            for p in self.params:
                dist.broadcast(p.data, src=0)
        self.model.train()

        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
            betas=(config.beta1, config.beta2),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(config.warmup_steps, config.steps, config.min_lr_ratio)
        )
        self.step = 0
        data_state = None
        if resume:
            data_state = self._load_checkpoint(checkpoint)
        if not resume:  # per-process streams (dropout); a resumed run restores them instead
            _seed_everything(config.seed + self.dist.rank)
        self.loader = PairLoader(
            config.data,
            config.batch_size,
            image_size=config.image_size,
            seed=config.seed,
            rank=self.dist.rank,
            world=self.dist.world,
            workers=config.workers,
            shuffle_buffer=config.shuffle_buffer,
            keep=config.keep,
            state=data_state,
            pin_memory=self.dist.device.type == "cuda",
        )
        self._stop_requested = False

    # --- checkpoints ---
    def _load_checkpoint(self, path: Path) -> dict:
        state = _load_torch(path / "trainer.pt")
        if state["world"] != self.dist.world:
            raise TTDError(f"checkpoint {path} was written by {state['world']} process(es); resume with the same number (now {self.dist.world})")
        missing = sorted(set(self.names) ^ set(state["trainable"]))
        if missing:
            raise TTDError(f"checkpoint {path} does not fit this run's trainable parameters (e.g. {missing[0]!r}); resume with the same finetune/LoRA settings")
        self.model.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        mine = _load_torch(path / f"rank{self.dist.rank}.pt")
        _set_rng_state(mine["rng"])
        return mine["data"]

    def save_checkpoint(self) -> Path:
        from .models.lora import save_adapter

        final = _step_dir(self.out, self.step)
        tmp = final.with_name(final.name + ".tmp")
        if self.dist.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.dist.barrier()
        _save_torch({"rng": _rng_state(), "data": self.loader.state_dict()}, tmp / f"rank{self.dist.rank}.pt")
        if self.dist.main:
            trainable = {n: p.detach().cpu() for n, p in zip(self.names, self.params)}
            _save_torch(
                {
                    "step": self.step,
                    "world": self.dist.world,
                    "trainable": trainable,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "config": self.config.to_dict(),
                },
                tmp / "trainer.pt",
            )
            atomic_write_bytes(tmp / "config.yaml", config_to_yaml(self.config).encode())
            save_adapter(self.model, tmp / "adapter.safetensors")
        self.dist.barrier()
        if self.dist.main:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            done = sorted(p for p in final.parent.glob("step_*") if not p.name.endswith(".tmp"))
            for old in done[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return final

    # --- logging ---
    def _open_logs(self):
        if not self.dist.main:
            return None, None
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out / "config.yaml", config_to_yaml(self.config).encode())
        log_path = self.out / "log.jsonl"
        if log_path.is_file():  # drop entries past the checkpoint a resumed run restarts from
            kept = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= self.step]
            atomic_write_bytes(log_path, "".join(line + "\n" for line in kept).encode())
        writer = None
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step + 1 if self.step else None)
            except ImportError:
                log.info("tensorboard is not installed: no TensorBoard events")
        return log_path.open("a", encoding="utf-8"), writer

    def _on_signal(self, signum, frame) -> None:
        if self._stop_requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.dist.main:
            print(f"\nsignal {signum}: stopping after this step with a checkpoint (again to abort)", file=sys.stderr)

    # --- the loop ---
    def _batches(self) -> Iterator:
        while True:
            yield from self.loader

    def fit(self, stop_after: int | None = None, progress: bool = True) -> TrainResult:
        """Train until ``config.steps`` (or until step ``stop_after``, or a SIGINT/SIGTERM), with
        checkpoints every ``save_every`` steps and at the end; returns where it stopped."""
        from tqdm.auto import tqdm

        from .models.lora import save_adapter

        cfg, model = self.config, self.model
        target = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        if self.dist.main:
            print(f"ttd train: {type(self.objective).__name__}, {self.dist.world} process(es) on {self.dist.device}, "
                  f"{sum(p.numel() for p in self.params):,} trainable parameters\n{config_to_yaml(cfg)}", end="", flush=True)
        log_file, writer = self._open_logs()
        names = ("loss", *self.objective.metrics)
        sums, samples, tick = torch.zeros(len(names)), 0.0, time.perf_counter()
        last: dict[str, float] = {}
        checkpoint = None
        handlers = {}
        if _in_main_thread():
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (progress and self.dist.main), unit="step", dynamic_ncols=True)
        batches = self._batches()
        try:
            while self.step < target:
                batch = next(batches)
                n = len(batch)
                local = torch.zeros(len(names))
                if n:
                    images = batch.images.to(self.dist.device, non_blocking=True)
                    with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                        loss, metrics = self.objective(model, dataclasses.replace(batch, images=images))
                    loss.backward()
                    local = torch.tensor([float(loss.detach()), *(float(metrics[k]) for k in self.objective.metrics)])
                total, stop = reduce_gradients(self.params, float(n), [float(self._stop_requested)], self.dist)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip) if cfg.grad_clip else None
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                sums += local * n
                samples += total
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == target:
                    last = self._log(names, sums, samples, time.perf_counter() - tick, grad_norm, log_file, writer, bar)
                    sums, samples, tick = torch.zeros(len(names)), 0.0, time.perf_counter()
                if stop:
                    break
                if self.step % cfg.save_every == 0 and self.step < target:
                    checkpoint = self.save_checkpoint()
            checkpoint = self.save_checkpoint()
            adapter = None
            if self.step >= cfg.steps and self.dist.main:
                adapter = save_adapter(model, self.out / "adapter.safetensors")
            self.dist.barrier()
        finally:
            bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
            if log_file:
                log_file.close()
            if writer:
                writer.close()
        return TrainResult(self.step, adapter, checkpoint, last, self.step < target)

    def _log(self, names, sums, samples, seconds, grad_norm, log_file, writer, bar) -> dict[str, float]:
        reduced = sums.clone()
        if self.dist.active:
            reduced = reduced.to(self.dist.device)
            dist.all_reduce(reduced)
            reduced = reduced.cpu()
        means = (reduced / max(samples, 1e-12)).tolist()
        entry = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **dict(zip(names, means))}
        if grad_norm is not None:
            entry["grad_norm"] = float(grad_norm)
        skipped = torch.tensor([float(self.loader.skipped)])
        if self.dist.active:
            skipped = skipped.to(self.dist.device)
            dist.all_reduce(skipped)
        entry.update(samples_per_s=samples / max(seconds, 1e-9), skipped=int(skipped.item()))
        if self.dist.main:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
            if writer is not None:
                for key, value in entry.items():
                    if key != "step":
                        writer.add_scalar(f"train/{key}", value, self.step)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", sps=f"{entry['samples_per_s']:.1f}", skipped=entry["skipped"])
        return entry


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def ttd_objective(config: TrainConfig):
    from .objectives import TTDObjective

    return TTDObjective(
        scorer=config.scorer,
        tau=config.tau,
        score_norm=config.score_norm,
        keep_argmax=config.keep_argmax,
        tag_template=config.tag_template,
        distance=config.distance,
        distill_weight=config.distill_weight,
        tag_weight=config.tag_weight,
        eps=config.minmax_eps,
    )


def train(
    config: TrainConfig,
    model: DenseCLIP | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """TTD fine-tuning (METHOD §5): adapters trained on ``config.data``, written to ``config.out``."""
    trainer = Trainer(config, ttd_objective(config), model=model, resume=resume)
    try:
        return trainer.fit(stop_after=stop_after, progress=progress)
    finally:
        trainer.dist.close()
