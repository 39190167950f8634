"""The training loop: one or many processes (``torchrun``), exact checkpoint/resume, logging.

The loop is generic over an *objective* (``(model, batch) -> (loss, metrics)``, see
:mod:`ttd.method.objectives`); TTD (:func:`train`) is one objective and CLIP pretraining another.

``pretrain`` runs CLIP's contrastive objective from random weights with the same machinery.

Data parallelism: each process takes ``batch_size / world`` samples of every global batch; after
the backward pass ONE all-reduce sums the gradients weighted by each process's batch size (plus
two small bookkeeping entries), so every process applies the same update: the gradient of the
mean loss over the global batch. ``DistributedDataParallel`` is not used because TTD leaves some
adapters out of the graph depending on the dense variant and scorer (MaskCLIP's dense path skips
the last block's q and k), which DDP only tolerates with an extra graph search every step; the
adapters' gradients are small, so one flat all-reduce costs less than DDP's buckets. (Full
fine-tuning therefore does not overlap communication with the backward pass.)

Checkpoints (:mod:`ttd.checkpoints`) hold everything a run needs to continue: ``resume`` continues
from the newest one exactly, the parameters after step N of a resumed run equal those of an
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoints import (
    complete_checkpoints,
    load_torch,
    publish_checkpoint,
    rng_state,
    save_torch,
    seed_everything,
    set_rng_state,
    step_dir,
)
from .config import TrainConfig, config_to_yaml
from .distributed import Distributed, is_main_process, reduce_gradients
from .errors import Interrupted, TTDError, TTDFailure
from .io import atomic_write_bytes
from .locks import output_lock
from .method.objectives import ContrastiveObjective, DenseLabelObjective, TTDObjective
from .models.dense import DenseCLIP

__all__ = [
    "WarmupCosine",
    "Trainer",
    "TrainResult",
    "train",
    "pretrain",
    "ttd_objective",
]

log = logging.getLogger(__name__)


class WarmupCosine:
    """Learning-rate factor: linear warm-up from 0, then cosine decay to ``min_ratio``."""

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.0):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --- the trainer ------------------------------------------------------------------------------
@dataclass
class TrainResult:
    step: int
    adapter: Path | None
    checkpoint: Path | None
    metrics: dict[str, float]
    stopped_early: bool
    signal: int = 0  # the signal (SIGINT, SIGTERM) that stopped the run early; 0 if none


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
        checkpoints = complete_checkpoints(self.out)
        if resume and not checkpoints:
            raise TTDError(f"no checkpoint under {self.out} to resume; drop --resume to start a new run")
        if not resume and checkpoints:
            raise TTDError(f"{self.out} already holds a run (checkpoint {checkpoints[0].name}); pass --resume to continue it or choose another --out")
        if config.precision == "bf16" and self.dist.device.type != "cuda":
            raise TTDError("bf16 mixed precision runs on CUDA only; use --precision fp32 (or auto) on CPU")
        self.autocast = self.dist.device.type == "cuda" and config.precision in ("auto", "bf16")

        seed_everything(config.seed)  # identical adapter initialisation in every process
        if model is None:
            from .models import load_model

            model = load_model(config.model, dense=config.dense, device=str(self.dist.device), quick_gelu=config.quick_gelu)
        self.model = model.to(self.dist.device)
        if config.image_size is None:  # train at the resolution the model was built for
            self.config = config = dataclasses.replace(config, image_size=model.config.image_size)
        self.model.config.check_input_size(config.image_size)
        self.model.base_fingerprint = base_fingerprint(self.model)
        if config.finetune == "lora":
            inject_lora(self.model, config.lora_config())
        if hasattr(objective, "prepare"):
            objective.prepare(self.model)  # before any update, and before a checkpoint loads
        if hasattr(objective, "trainable"):  # an objective that trains its own part of the model (TCL's masker)
            self.names = objective.trainable(self.model)
        else:
            self.names = set_trainable(self.model, config.finetune, config.train_calibration)
        named = dict(self.model.named_parameters())
        self.params = [named[n] for n in self.names]
        if self.dist.active:
            for p in self.params:
                dist.broadcast(p.data, src=0)
        self.model.train()

        self.optimizer = torch.optim.AdamW(self._param_groups(config), lr=config.lr, betas=(config.beta1, config.beta2))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(config.warmup_steps, config.steps, config.min_lr_ratio)
        )
        self.step = 0
        self._interval: dict | None = None  # metric sums since the last log
        if resume:  # restores the RNG streams too
            data_state = self._resume(checkpoints)
            if self.dist.main:
                print(f"ttd train: resuming from step {self.step}", file=sys.stderr)
        else:
            data_state = None
            seed_everything(config.seed + self.dist.rank)  # per-process streams (dropout)
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
            labels=getattr(objective, "needs_labels", False),
        )
        self._stop_signal = 0  # the signal that asked for a stop (0: none yet)

    def _param_groups(self, config: TrainConfig) -> list[dict]:
        """Matrices decay, vectors and scalars do not; the calibration's two scalars may take
        their own learning rate (Adam moves each by about lr per step, so at a LoRA learning rate
        a short run leaves them where they started)."""
        named = dict(zip(self.names, self.params))
        calibration = [p for n, p in named.items() if n.startswith("calibration.")]
        rest = [p for n, p in named.items() if not n.startswith("calibration.")]
        groups = [
            {"params": [p for p in rest if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0},
        ]
        if calibration:
            groups.append({"params": calibration, "weight_decay": 0.0, "lr": config.calibration_lr or config.lr})
        return groups

    # --- checkpoints ---
    def _resume(self, checkpoints: list[Path]) -> dict:
        """Load the newest intact checkpoint (a torn or truncated newer one is passed over, and said so)."""
        damaged = []
        for path in checkpoints:
            try:
                state, mine = self._read_checkpoint(path)
            except TTDError as err:
                damaged.append(f"{path.name}: {err}")
                continue
            if damaged and self.dist.main:
                print(f"ttd train: warning: resuming from {path.name}; passed over the damaged {'; '.join(damaged)}",
                      file=sys.stderr)
            return self._load_checkpoint(path, state, mine)
        raise TTDFailure(f"no intact checkpoint under {self.out} ({damaged[0]}); start again with another --out")

    def _read_checkpoint(self, path: Path) -> tuple[dict, dict]:
        """Both files of a checkpoint, checked for the entries a resume needs before anything is applied."""
        state = load_torch(path / "trainer.pt")
        mine = load_torch(path / f"rank{self.dist.rank}.pt")
        need = (("trainer.pt", state, ("world", "trainable", "optimizer", "scheduler", "step")),
                (f"rank{self.dist.rank}.pt", mine, ("rng", "data", "log_interval")))
        for name, entry, keys in need:
            if not isinstance(entry, dict) or not set(keys) <= set(entry):
                raise TTDError(f"checkpoint file {path / name} lacks entries a resume needs")
        return state, mine

    def _load_checkpoint(self, path: Path, state: dict, mine: dict) -> dict:
        if state["world"] != self.dist.world:
            raise TTDError(f"checkpoint {path} was written by {state['world']} process(es); resume with the same number (now {self.dist.world})")
        missing = sorted(set(self.names) ^ set(state["trainable"]))
        if missing:
            raise TTDError(f"checkpoint {path} does not fit this run's trainable parameters (e.g. {missing[0]!r}); resume with the same finetune/LoRA settings")
        self.model.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        set_rng_state(mine["rng"])
        self._interval = mine["log_interval"]  # so the first log after resuming averages the same steps
        return mine["data"]

    def save_checkpoint(self) -> Path:
        from .models.lora import save_adapter

        final = step_dir(self.out, self.step)
        tmp = final.with_name(final.name + ".tmp")
        if self.dist.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.dist.barrier()
        mine = {"rng": rng_state(), "data": self.loader.state_dict(), "log_interval": self._interval}
        save_torch(mine, tmp / f"rank{self.dist.rank}.pt")
        if self.dist.main:
            trainable = {n: p.detach().cpu() for n, p in zip(self.names, self.params)}
            save_torch(
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
            publish_checkpoint(tmp, final, self.config.keep_checkpoints)
        self.dist.barrier()
        return final

    # --- logging ---
    def _open_logs(self):
        if not self.dist.main:
            return None, None
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out / "config.yaml", config_to_yaml(self.config).encode())
        log_path = self.out / "log.jsonl"
        if log_path.is_file():  # drop entries past the checkpoint a resumed run restarts from, and a torn last line
            kept = [line for line in log_path.read_text(errors="replace").splitlines() if _log_step(line) <= self.step]
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
        if self._stop_signal:  # a second signal: stop now
            raise Interrupted(signum)
        self._stop_signal = signum
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
        if self.dist.main and cfg.warmup_steps >= cfg.steps and self.step == 0:
            print(f"ttd train: warning: steps ({cfg.steps}) ≤ warmup_steps ({cfg.warmup_steps}): the learning rate "
                  "never reaches its peak; lower --warmup-steps", flush=True)
        if self.dist.main:
            print(f"ttd train: {type(self.objective).__name__}, {self.dist.world} process(es) on {self.dist.device}, "
                  f"{sum(p.numel() for p in self.params):,} trainable parameters; {cfg.steps} steps × batch {cfg.batch_size} "
                  f"at {cfg.image_size} px, lr {cfg.lr:g}; every setting: {self.out / 'config.yaml'}", flush=True)
        log_file, writer = self._open_logs()
        names = ("loss", *self.objective.metrics)
        if self._interval is None:
            self._interval = {"sums": torch.zeros(len(names)), "samples": 0.0}
        timed, tick = 0.0, time.perf_counter()  # throughput of this invocation only
        start, seen = self.step, 0.0  # samples trained on by all processes in this invocation
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
                if hasattr(self.objective, "begin_step"):
                    self.objective.begin_step(self.step)
                if n:
                    images = batch.images.to(self.dist.device, non_blocking=True)
                    with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                        loss, metrics = self.objective(model, dataclasses.replace(batch, images=images))
                    loss.backward()
                    local = torch.tensor([float(loss.detach()), *(float(metrics[k]) for k in self.objective.metrics)])
                nonfinite = float(not math.isfinite(local[0]))
                total, stop, nonfinite = reduce_gradients(self.params, float(n), [float(bool(self._stop_signal)), nonfinite], self.dist)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip or math.inf)
                if nonfinite or not math.isfinite(grad_norm):
                    self._diverged()
                seen += total
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self._interval["sums"] += local * n
                self._interval["samples"] += total
                timed += total
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rate = timed / max(time.perf_counter() - tick, 1e-9)
                    last = self._log(names, grad_norm if cfg.grad_clip else None, rate, log_file, writer, bar)
                    timed, tick = 0.0, time.perf_counter()
                if stop:
                    break
                if self.step % cfg.save_every == 0 and self.step < target:
                    self._check_seen(start, seen)
                    checkpoint = self.save_checkpoint()
            self._check_seen(start, seen)
            checkpoint = self.save_checkpoint()
            skipped = self._skipped()
            if skipped and self.dist.main:
                print(f"ttd train: skipped {skipped:,} unreadable sample(s) (see 'skipped' in log.jsonl)", file=sys.stderr)
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
        return TrainResult(self.step, adapter, checkpoint, last, self.step < cfg.steps, self._stop_signal)

    def _skipped(self) -> int:
        """Unreadable samples skipped so far, summed over all processes."""
        skipped = torch.tensor([float(self.loader.skipped)])
        if self.dist.active:
            skipped = skipped.to(self.dist.device)
            dist.all_reduce(skipped)
        return int(skipped.item())

    def _check_seen(self, start: int, seen: float) -> None:
        """Steps since ``start`` that saw no sample at all would publish an untrained adapter as a result."""
        if self.step > start and not seen:
            raise TTDFailure(f"no readable sample in {self.config.data} ({self._skipped():,} skipped); "
                             "check the image paths and files it names")

    def _diverged(self) -> None:
        """Stop before a non-finite update reaches the weights; the checkpoints on disk stay good."""
        good = complete_checkpoints(self.out)
        keep = f"the last good checkpoint is {good[0]} (--resume continues from it)" if good else "no checkpoint was written"
        raise TTDFailure(f"training diverged at step {self.step + 1}: non-finite loss or gradients; "
                         f"lower --lr or set --grad-clip; {keep}")

    def _log(self, names, grad_norm, rate, log_file, writer, bar) -> dict[str, float]:
        """Means over the steps since the last log (all processes), then a fresh interval."""
        reduced, samples = self._interval["sums"].clone(), self._interval["samples"]
        self._interval = {"sums": torch.zeros(len(names)), "samples": 0.0}
        if self.dist.active:
            reduced = reduced.to(self.dist.device)
            dist.all_reduce(reduced)
            reduced = reduced.cpu()
        means = (reduced / max(samples, 1e-12)).tolist()
        entry = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **dict(zip(names, means))}
        if grad_norm is not None:
            entry["grad_norm"] = float(grad_norm)
        entry.update(samples_per_s=rate, skipped=self._skipped())
        if self.dist.main:
            log_file.write(json.dumps(entry, allow_nan=False) + "\n")  # strict JSON: a non-finite value stops the run first
            log_file.flush()
            if writer is not None:
                for key, value in entry.items():
                    if key != "step":
                        writer.add_scalar(f"train/{key}", value, self.step)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", sps=f"{entry['samples_per_s']:.1f}", skipped=entry["skipped"])
        return entry


def _log_step(line: str) -> float:
    """The step of a log line; a torn or foreign line sorts past every checkpoint, so it is dropped."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(
    config: TrainConfig,
    model: DenseCLIP | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """TTD fine-tuning (METHOD §5): adapters trained on ``config.data``, written to ``config.out``
    (locked against a second writer for the run)."""
    with output_lock(config.out, "train", is_main_process()):
        trainer = Trainer(config, ttd_objective(config), model=model, resume=resume)
        try:
            return trainer.fit(stop_after=stop_after, progress=progress)
        finally:
            trainer.dist.close()


def pretrain(
    config: TrainConfig,
    clip_config=None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Pretraining with the same data formats, checkpoints and processes as :func:`train`.

    ``objective: infonce`` (default): CLIP's contrastive loss from random weights, every weight
    trained (with ``dense_weight`` > 0 plus a per-patch class loss on the shards' masks, an
    ablation that sees masks). ``clip_config``: the architecture (:class:`ttd.CLIPConfig`, default
    ViT-B/16) at ``config.image_size``; a resumed run reuses the one saved in ``config.out``. With
    ``config.init`` the run starts from those weights instead (continued pretraining), and takes
    their architecture. At the end ``OUT/model.safetensors`` holds the CLIP weights under OpenAI's
    names.

    ``objective: tcl``: TCL's objective (:mod:`ttd.method.tcl`): a new TCL masker on the frozen
    CLIP of ``config.init``, trained from captions alone; at the end ``OUT/tcl.pth`` holds the
    model in the layout of TCL's released checkpoint (``--model OUT/tcl.pth`` loads it).
    ``config.out`` is locked against a second writer for the run.
    """
    from .io import save_json
    from .models import CLIPConfig, create_model, load_model
    from .models.tcl import save_tcl
    from .models.weights import save_weights

    with output_lock(config.out, "pretrain", is_main_process()):
        config = dataclasses.replace(config, finetune="full").validate()  # a bad setting is named before weights load
        saved_arch = Path(config.out) / "clip_config.json"
        if resume and saved_arch.is_file():
            saved = CLIPConfig.from_file(saved_arch)
            if clip_config is not None and clip_config != saved:
                raise TTDError(f"{config.out} was pretraining another architecture ({saved_arch}); resume without a new one")
            clip_config = saved
        if config.init:
            if clip_config is not None and not resume:
                raise TTDError("--init takes the architecture from its weights; drop --clip-config")
            model = load_model(config.init, dense=config.dense, device="cpu")  # a resumed run then loads its checkpoint over it
            clip_config = model.config
        else:
            clip_config = clip_config or CLIPConfig()
            if config.image_size is not None:
                clip_config = dataclasses.replace(clip_config, image_size=config.image_size)
            seed_everything(config.seed)  # the same random initialisation in every process
            model = create_model(clip_config, dense=config.dense)
        objective = _pretraining_objective(config, model)
        trainer = Trainer(config, objective, model=model, resume=resume)
        try:
            if trainer.dist.main:
                save_json(clip_config.to_dict(), saved_arch)
            result = trainer.fit(stop_after=stop_after, progress=progress)
            if not result.stopped_early and trainer.dist.main:
                out = Path(config.out)
                if config.objective == "tcl":
                    scales = trainer.model.tcl_loss_scales
                    save_tcl(trainer.model, out / "tcl.pth", {"tcli": scales.tcli, "tclf": scales.tclf})
                else:
                    save_weights(trainer.model, out / "model.safetensors")
            return result
        finally:
            trainer.dist.close()


def _pretraining_objective(config: TrainConfig, model: DenseCLIP):
    """The objective ``config`` names; TCL's starts a new masker on a plain CLIP (``masker_layers``
    stages) and continues the masker of a TCL checkpoint."""
    if config.objective == "tcl":
        from .method.tcl import TCLObjective
        from .models.tcl import Masker, is_tcl_checkpoint

        if not is_tcl_checkpoint(config.init):
            seed_everything(config.seed)  # the same new masker in every process
            model.masker = Masker(model.clip, n_layers=config.masker_layers).to(model.device)
        return TCLObjective(config.tcl_weight, config.area_weight, config.tv_weight, config.decoder_only_steps)
    if config.dense_weight > 0:
        return DenseLabelObjective(_dense_class_names(config.dense_classes), config.dense_weight)
    return ContrastiveObjective()


def _dense_class_names(classes_file: str) -> list[str]:
    """The mask ablation's class names: a classes.txt (line i names class id i, first name per
    line) or the mini-world vocabulary's nouns after ``background``."""
    if classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise TTDError(f"dense_classes file not found: {path}")
        return [line.split(",")[0].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    from .data.miniworld import load_vocabulary

    return ["background", *(noun.name for noun in load_vocabulary())]


def ttd_objective(config: TrainConfig) -> TTDObjective:
    """TTD with the settings of ``config``; ``scorer: nouns`` takes the tags from a part-of-speech
    noun tagger (:mod:`ttd.taggers`) instead of the model."""
    from .method.tags import TAG_SCORERS, register_tag_scorer

    if config.scorer == "nouns" and "nouns" not in TAG_SCORERS:
        from .taggers import create_tagger, tagger_scorer

        register_tag_scorer("nouns", tagger_scorer(create_tagger("nouns")))
    return TTDObjective(
        config.selection(),
        distance=config.distance,
        distill_weight=config.distill_weight,
        tag_weight=config.tag_weight,
        eps=config.minmax_eps,
        teacher=config.teacher,
        tag_average=config.tag_average,
    )
