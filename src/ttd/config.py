"""The training configuration: one dataclass, read from defaults, a YAML file and flags (flags win).

Kept free of torch so that building the ``ttd`` argument parser (one flag per field) stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import TTDError
from .io import coerce, value_type

__all__ = ["DEFAULT_MODEL", "TTD_ONLY", "PRETRAIN_ONLY", "TrainConfig", "load_config", "resolve_config", "config_to_yaml", "add_config_flags", "config_overrides"]

DEFAULT_MODEL = "ViT-B-16/openai"
# keys that mean nothing to `ttd pretrain` (random weights, every weight trained, InfoNCE)
TTD_ONLY = (
    "model", "quick_gelu", "teacher", "scorer", "tau", "normalize", "keep_argmax", "stopwords", "template", "distance",
    "distill_weight", "tag_weight", "minmax_eps", "finetune", "lora_rank", "lora_alpha", "lora_dropout",
    "lora_targets", "lora_towers", "train_calibration", "calibration_lr",
)
# keys that mean nothing to `ttd train` (the auxiliary dense objective of pretraining)
PRETRAIN_ONLY = ("objective", "dense_weight", "dense_classes", "init", "tcl_weight", "area_weight", "tv_weight",
                 "decoder_only_steps", "masker_layers")
# old names in the config.yaml of runs saved before the knobs took one name each, so they resume
_RENAMED = {"score_norm": "normalize", "tag_template": "template"}


def _opt(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Everything a run needs. YAML keys and ``ttd train`` flags have these names (``--lora-rank``)."""

    # data and model
    data: str = _opt("", "JSONL manifest of (image, caption) or WebDataset shards (folder, glob, {a..b} pattern)")
    out: str = _opt("runs/ttd", "output folder: adapter, checkpoints, log.jsonl, tensorboard/")
    model: str = _opt(DEFAULT_MODEL, "base CLIP weights: a known name or a local file")
    dense: str = _opt("maskclip", "dense variant: clip, maskclip, sclip, clearclip, naclip, tcl (TCL's checkpoint needs tcl)")
    quick_gelu: bool | None = _opt(None, "activation of a local weights file (named weights know theirs)")
    keep: str | None = _opt(None, "keep-list of shard sample keys (from `ttd data prune`)")
    image_size: int | None = _opt(None, "training resolution: short-side resize then centre crop (default: the model's own)")
    workers: int = _opt(min(4, os.cpu_count() or 1), "data-loading processes per training process (0: load in the main process)")
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
    teacher: str = _opt("online", "who selects the tags: online (the current model) or frozen (the model before training)", ("online", "frozen"))
    scorer: str = _opt("pixel", "tag scorer of the selection: pixel (Eq. 2), image (Eq. 1), text (Eq. 7), image-text, nouns (a POS tagger: ttd[nlp]) or a registered one")
    tau: float = _opt(0.5, "selection threshold τ on the tag scores")
    normalize: str = _opt("softmax", "score normalisation across tags", ("softmax", "minmax", "none"))
    keep_argmax: bool = _opt(False, "always select each caption's best-scoring tag")
    stopwords: bool = _opt(False, "drop English stop words from the candidate tags (the paper keeps them)")
    template: str = _opt("{}", "prompt of a tag, e.g. 'a photo of a {}.' ({} = the raw word)")
    distance: str = _opt("mse", "distance d of Eq. 4-5", ("l1", "mse", "bce"))
    distill_weight: float = _opt(1.0, "weight of L_distill (Eq. 4); 0 = the 'L_tag only' ablation")
    tag_weight: float = _opt(1.0, "λ, weight of L_tag (Eq. 5); 0 = the 'L_distill only' ablation")
    tag_average: str = _opt(
        "all", "L_tag's mean over a caption's tags: all (one share per tag) or balanced (selected and unselected: half each)",
        ("all", "balanced"),
    )
    minmax_eps: float = _opt(1e-6, "ε of the min-max normalisation of selected tag heatmaps")
    # what is trained
    finetune: str = _opt("lora", "lora: adapters (+ calibration); full: every weight", ("lora", "full"))
    lora_rank: int = _opt(8, "LoRA rank")
    lora_alpha: float = _opt(8.0, "LoRA alpha (update scale = alpha / rank)")
    lora_dropout: float = _opt(0.0, "dropout on the adapters' input")
    lora_targets: tuple[str, ...] = _opt(("q", "k", "v", "out"), "adapted projections (comma-separated)")
    lora_towers: tuple[str, ...] = _opt(("image", "text"), "adapted encoders (comma-separated)")
    train_calibration: bool = _opt(True, "train the heatmap calibration w, b")
    calibration_lr: float | None = _opt(
        None, "peak learning rate of the calibration w, b (default: lr); Adam moves each scalar by about lr per step"
    )
    # pretraining only
    objective: str = _opt(
        "infonce", "pretrain: infonce (CLIP's contrastive loss, every weight trained) or tcl (TCL's objective: "
        "its masker trained from captions on the frozen CLIP of --init, --dense tcl)", ("infonce", "tcl"),
    )
    tcl_weight: float = _opt(0.1, "pretrain, tcl: weight of TCL's image- and feature-level contrastive losses")
    area_weight: float = _opt(0.4, "pretrain, tcl: weight of TCL's area prior")
    tv_weight: float = _opt(1.0, "pretrain, tcl: weight of TCL's total-variation smoothness terms")
    decoder_only_steps: int = _opt(0, "pretrain, tcl: first steps that train the masker's decoder alone (TCL's UST phase)")
    masker_layers: int = _opt(2, "pretrain, tcl: ×2 upsampling stages of a new masker's decoder (TCL: 2, maps at 4× the patch grid)")
    # pretraining only: auxiliary dense objective from object masks (ttd.method.objectives.DenseLabelObjective)
    dense_weight: float = _opt(0.0, "pretrain: weight of the per-patch class loss on the shards' object masks (0: plain InfoNCE)")
    dense_classes: str = _opt("", "pretrain: classes.txt naming the masks' class ids (default: the mini-world vocabulary)")
    init: str = _opt("", "pretrain: continue from these weights (a file or known name; default: random initialisation)")
    # bookkeeping
    log_every: int = _opt(10, "log (JSONL, TensorBoard, progress bar) every N steps")
    save_every: int = _opt(1000, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _opt(2, "checkpoints kept on disk (the newest)")
    tensorboard: bool = _opt(True, "write TensorBoard events when tensorboard is installed")

    def validate(self) -> TrainConfig:
        """Raise a one-line :class:`TTDError` for the first bad value: the one place a run's
        settings are checked (the trainer adds only what needs the device or the output folder)."""
        if not self.data:
            raise TTDError("no training data: pass --data (a JSONL manifest or WebDataset shards)")
        for name in ("steps", "batch_size", "image_size", "log_every", "save_every", "keep_checkpoints", "shuffle_buffer"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TTDError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("workers", "warmup_steps", "weight_decay", "grad_clip", "distill_weight", "tag_weight", "dense_weight",
                     "tcl_weight", "area_weight", "tv_weight", "decoder_only_steps"):
            if getattr(self, name) < 0:
                raise TTDError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("lr", "calibration_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise TTDError(f"{name} must be positive, got {value}")
        if not 0 <= self.tau <= 1:
            raise TTDError(f"tau must lie in [0, 1], got {self.tau}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise TTDError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.masker_layers < 1:
            raise TTDError(f"masker_layers must be at least 1, got {self.masker_layers}")
        if self.objective == "tcl" and (self.dense != "tcl" or not self.init):
            raise TTDError("the tcl objective trains TCL's masker on a frozen CLIP: pass --dense tcl and --init with "
                           "CLIP weights (e.g. a `ttd pretrain` InfoNCE run's model.safetensors)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TTDError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise TTDError(f"unknown {f.name} {getattr(self, f.name)!r}; choose one of: {', '.join(choices)}")
        from .models.registry import dense_variant

        try:
            dense_variant(self.dense)
        except ValueError as err:
            raise TTDError(str(err)) from None
        self.lora_config()  # validates rank, dropout, targets, towers
        self.selection()  # validates the template
        from .data.pairs import check_data

        check_data(self.data)  # the files last: a bad value above is named without touching the disk
        if self.keep is not None and not Path(self.keep).is_file():
            raise TTDError(f"keep-list not found: {self.keep}")
        return self

    def selection(self):
        """The settings of TTD step 1 (:class:`ttd.method.tags.TagSelection`)."""
        from .method.tags import TagSelection

        return TagSelection(self.scorer, self.tau, self.normalize, self.keep_argmax, self.stopwords, self.template)

    def lora_config(self):
        from .models.lora import LoRAConfig

        return LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets, self.lora_towers)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _coerce(name: str, value, hint):
    """A YAML or flag value → the field's type, or a one-line error naming the key."""
    try:
        return coerce(value, hint)
    except (TypeError, ValueError):
        base = value_type(hint)
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
        keys = (str(k).replace("-", "_") for k in loaded)
        updates.update({_RENAMED.get(k, k): v for k, v in zip(keys, loaded.values())})
    updates.update(overrides)
    unknown = sorted(set(updates) - set(hints))
    if unknown:
        raise TTDError(f"unknown config key {unknown[0]!r}; valid keys: {', '.join(hints)}")
    for key, value in updates.items():
        values[key] = _coerce(key, value, hints[key])
    return TrainConfig(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def resolve_config(
    path: str | os.PathLike | None, overrides: dict, resume: bool = False, defaults: dict | None = None
) -> TrainConfig:
    """The configuration of one ``ttd train`` call: the defaults (updated by ``defaults``; on
    ``resume``, the run's saved configuration), then the YAML file at ``path``, then the flags in
    ``overrides``."""
    from .checkpoints import latest_checkpoint
    from .distributed import is_main_process

    fresh = load_config(**(defaults or {}))
    base = fresh
    if resume:
        out = overrides.get("out") or load_config(path, base=fresh).out
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise TTDError(f"no checkpoint under {out} to resume; drop --resume to start a new run")
        base = load_config(checkpoint / "config.yaml")
    config = load_config(path, base=base, **overrides)
    if resume:
        changed = [k for k, v in config.to_dict().items() if base.to_dict()[k] != v]
        if changed and is_main_process():
            print(f"ttd: resuming with changed settings: {', '.join(changed)}", file=sys.stderr)
    return config


def config_to_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per config field (``lora_rank`` → ``--lora-rank``); unset flags stay absent so a
    YAML file or a resumed run's saved configuration is not overwritten by defaults."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        kind = value_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = ",".join(default) if isinstance(default, tuple) else default
        choices = f.metadata.get("choices")
        note = f"; one of {', '.join(choices)}" if choices else ""
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{f.metadata['help']} (default: {shown}{note})"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = str if typing.get_origin(kind) is tuple else kind
            kwargs["metavar"] = f.name.upper()
            if choices:
                kwargs["choices"] = choices
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_overrides(args: argparse.Namespace) -> dict:
    """The config fields the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
