"""Evaluation protocols as plain data: named presets a user can print, override and reproduce.

Numbers in open-vocabulary segmentation depend on many small knobs (resize, windows, templates,
background rule …) that other code bases hide per dataset. Here every knob is a field of
:class:`Protocol`, the presets live in ``ttd/assets/protocols/*.yaml`` with their per-dataset
values (a ``datasets:`` section), and :func:`load_protocol` resolves
``preset → dataset values → user overrides`` in that order.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import yaml

from .errors import TTDError
from .io import coerce, read_named_or_file

__all__ = ["PRESETS", "TEMPLATE_SETS", "CAPTION_THRESHOLD", "Protocol", "load_protocol", "load_templates", "parse_overrides"]

PRESETS = ("tcl", "ttd", "sclip", "miniworld")
CAPTION_THRESHOLD = 0.40  # the paper's text-level segmentation threshold (a caption's heatmap ≥ it)
TEMPLATE_SETS = ("tcl9", "openai80", "identity")
BACKGROUND_RULES = ("threshold", "softmax")
INTERPOLATIONS = ("bilinear", "bicubic")
CAPTION_NORMALIZATIONS = ("none", "minmax")


@dataclass(frozen=True)
class Protocol:
    """Every knob of a segmentation evaluation (see ``docs/segmentation.md`` for each one)."""

    name: str
    description: str = ""
    # geometry
    short_side: int | None = 448  # None: keep the image size
    max_long_side: int | None = 2048
    resize_interpolation: str = "bilinear"
    crop_size: int | None = 448  # None: one forward over the whole (resized) image
    stride: int | None = 224
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    pixel_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    # text
    templates: str = "tcl9"  # a template set name or a file with one template per line
    synonyms: bool = False  # False: only the first name of each class is queried
    # background rule and scores
    background: str = "threshold"  # "threshold": constant channel; "softmax": sclip's probabilities
    background_threshold: float = 0.5
    logit_scale: float = 40.0
    prob_threshold: float = 0.0
    area_threshold: float | None = None
    caption_normalize: str = "none"  # "minmax": a caption map is min-max normalised per image before the threshold
    kp_weight: float = 0.0  # TCL only: share of its frozen CLIP's MaskCLIP mask mixed into its masks, after PAMR (TCL's kp_w)
    # PAMR refinement
    pamr: bool = False
    pamr_iterations: int = 10
    pamr_dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    pamr_scale: float = 0.25  # PAMR resolution relative to the resized (scale 1.0) image
    dataset: str | None = None  # the dataset whose preset values were applied, if any

    def __post_init__(self):
        _validate(self)

    def replace(self, **changes) -> Protocol:
        """A copy with some knobs changed (validated like the original)."""
        return dataclasses.replace(self, **{k: _coerce(k, v) for k, v in changes.items()})

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=120)

    def template_list(self) -> list[str]:
        return load_templates(self.templates)


KNOBS = tuple(f.name for f in fields(Protocol) if f.name != "dataset")
_HINTS = typing.get_type_hints(Protocol)


def _validate(p: Protocol) -> None:
    def fail(knob: str, why: str):
        raise TTDError(f"protocol {p.name!r}: {knob}={getattr(p, knob)!r} is invalid ({why})")

    if p.background not in BACKGROUND_RULES:
        fail("background", f"choose one of {', '.join(BACKGROUND_RULES)}")
    if p.caption_normalize not in CAPTION_NORMALIZATIONS:
        fail("caption_normalize", f"choose one of {', '.join(CAPTION_NORMALIZATIONS)}")
    if p.resize_interpolation not in INTERPOLATIONS:
        fail("resize_interpolation", f"choose one of {', '.join(INTERPOLATIONS)}")
    for knob in ("short_side", "max_long_side", "crop_size", "stride"):
        value = getattr(p, knob)
        if value is not None and value <= 0:
            fail(knob, "must be positive or null")
    if p.crop_size is not None and p.stride is not None and p.stride > p.crop_size:
        fail("stride", f"larger than crop_size={p.crop_size} would leave pixels without a window")
    if not p.scales or any(s <= 0 for s in p.scales):
        fail("scales", "need at least one positive scale")
    if len(p.pixel_mean) != 3 or len(p.pixel_std) != 3 or any(s <= 0 for s in p.pixel_std):
        fail("pixel_std" if len(p.pixel_mean) == 3 else "pixel_mean", "need 3 values, std positive")
    for knob in ("background_threshold", "prob_threshold", "kp_weight"):
        if not 0.0 <= getattr(p, knob) <= 1.0:
            fail(knob, "must lie in [0, 1]")
    if p.area_threshold is not None and not 0.0 <= p.area_threshold <= 1.0:
        fail("area_threshold", "must lie in [0, 1] or be null")
    if p.logit_scale <= 0:
        fail("logit_scale", "must be positive")
    if p.pamr_iterations < 0:
        fail("pamr_iterations", "must be >= 0")
    if not p.pamr_dilations or any(d <= 0 for d in p.pamr_dilations):
        fail("pamr_dilations", "need at least one positive dilation")
    if not 0.0 < p.pamr_scale <= 4.0:
        fail("pamr_scale", "must lie in (0, 4]")


# --- parsing ---------------------------------------------------------------------------------
_OPTIONAL_INTS = {"short_side", "max_long_side", "crop_size", "stride"}  # 0 also means none


def _coerce(knob: str, value):
    """A knob's value from YAML or a ``--set`` string, in the type the dataclass expects."""
    if knob not in KNOBS and knob != "dataset":
        raise TTDError(f"unknown protocol knob {knob!r}; knobs: {', '.join(KNOBS)}")
    hint = _HINTS[knob]
    if str in typing.get_args(hint) or hint is str:
        return None if value is None else str(value).strip()
    optional = type(None) in typing.get_args(hint)
    if optional and (value in ("none", "null") or (knob in _OPTIONAL_INTS and value in (0, "0"))):
        return None
    try:
        return coerce(value, hint)
    except (TypeError, ValueError) as err:
        raise TTDError(f"protocol knob {knob}={value!r} cannot be read ({err})") from None


def parse_overrides(items: Sequence[str] | Mapping | None) -> dict:
    """``["pamr=true", "scales=1,0.5"]`` (the CLI's ``--set``) or a dict → {knob: typed value}."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return {k: _coerce(k, v) for k, v in items.items()}
    out = {}
    for item in items:
        knob, sep, value = item.partition("=")
        if not sep or not knob.strip():
            raise TTDError(f"--set {item!r}: expected knob=value, e.g. --set pamr=true")
        out[knob.strip()] = _coerce(knob.strip(), value.strip())
    return out


def _read_yaml(name_or_path: str | os.PathLike) -> dict:
    text, source = read_named_or_file(name_or_path, PRESETS, "protocols", ".yaml", "protocol", "preset", "a YAML file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TTDError(f"protocol {source} is not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(data, dict) or "name" not in data:
        raise TTDError(f"protocol {source} must be a YAML mapping with at least a 'name'")
    return data


def load_protocol(
    name_or_path: str | os.PathLike | Protocol = "tcl",
    dataset: str | None = None,
    overrides: Sequence[str] | Mapping | None = None,
) -> Protocol:
    """A preset (``tcl``, ``ttd``, ``sclip``) or YAML file, with the values its ``datasets:``
    section gives ``dataset``, then ``overrides`` (``knob=value`` strings or a dict) on top."""
    if isinstance(name_or_path, Protocol):
        base = name_or_path.to_dict()
        per_dataset = {}
    else:
        base = _read_yaml(name_or_path)
        per_dataset = base.pop("datasets", None) or {}
        if not isinstance(per_dataset, dict):
            raise TTDError(f"protocol {name_or_path}: 'datasets' must map dataset names to knob values")
    values = {k: _coerce(k, v) for k, v in base.items()}
    if dataset is not None:
        values.update({k: _coerce(k, v) for k, v in (per_dataset.get(dataset) or {}).items()})
        values["dataset"] = dataset
    values.update(parse_overrides(overrides))
    return Protocol(**values)


def load_templates(spec: str | os.PathLike) -> list[str]:
    """A template set by name (``tcl9``, ``openai80``, ``identity``) or from a text file with one
    template per line, each containing ``{}`` where the class name goes."""
    text, source = read_named_or_file(spec, TEMPLATE_SETS, "templates", ".txt", "templates", "template set", "a text file")
    templates = [line.strip() for line in text.splitlines() if line.strip()]
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        example = bad[0] if bad else "no lines"
        raise TTDError(f"{source}: every line must be a template containing '{{}}' (got {example!r})")
    return templates
