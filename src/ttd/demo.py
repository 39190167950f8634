"""``ttd demo``: a local web page (gradio) that shows TTD at work on one image, offline.

Pick a bundled mini-world sample or upload an image, type a caption (or class names) and choose
an embedded model, an adapter and a dense variant; the page shows the caption's candidate tags
with their pixel scores and the selected ones, the caption's heatmap and each tag's heatmap, and
a segmentation overlay, without and with TTD side by side when an adapter is chosen.

Everything here is glue over the package's own APIs (:class:`ttd.method.tags.TagSelector`,
:class:`ttd.segment.Segmenter`, :mod:`ttd.viz`); the choices come from the package's registry
of embedded weights (:data:`ttd.models.weights.KNOWN_WEIGHTS` entries that are ``packaged``) and
the adapters shipped beside them, so a new embedded model shows up by itself. :func:`analyse` is
the whole computation and needs no gradio; gradio is imported only by :func:`build_demo`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from .errors import TTDError

__all__ = [
    "Analysis", "MAX_PIXELS", "Sample", "analyse", "build_demo", "embedded_adapters", "embedded_models",
    "embedded_samples", "run_demo",
]

MAX_PIXELS = 25_000_000  # uploads above this are refused: they would only be shrunk anyway
LONG_SIDE_FACTOR = 4  # an image's long side is at most this many times the model's input size
NO_ADAPTER = "none"
INSTALL_HINT = "pip install 'ttd[demo]'"


# --- what the page offers -------------------------------------------------------------------
def embedded_models() -> list[str]:
    """Names of the weights shipped inside the package (they load without any download), the
    default (:data:`ttd.evaluate.miniworld.EMBEDDED_MODEL`) first."""
    from .evaluate.miniworld import EMBEDDED_MODEL
    from .models.weights import embedded_models as registry

    return sorted(registry(), key=lambda name: name != EMBEDDED_MODEL)


def embedded_adapters(model: str) -> dict[str, Path]:
    """The TTD adapter shipped for ``model``, by a short label (empty for other weights)."""
    from .models.weights import KNOWN_WEIGHTS, embedded_adapter

    path = embedded_adapter(model)
    return {str(Path(KNOWN_WEIGHTS[model].adapter).with_suffix("")): path} if path else {}


@dataclass(frozen=True)
class Sample:
    label: str
    image: Path
    caption: str


@lru_cache(maxsize=1)
def embedded_samples() -> tuple[Sample, ...]:
    """The captioned sample images shipped with the embedded models (``assets/*/samples``)."""
    from .data.manifest import read_manifest

    from .io import asset

    samples = []
    for manifest in sorted(asset().glob("*/samples/tags.jsonl")):
        for record in read_manifest(manifest):
            samples.append(Sample(f"{manifest.parts[-3]}/{record.image.stem}: {record.caption}", record.image, record.caption))
    return tuple(samples)


# --- the computation ----------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _model(name: str, dense: str, adapter: str | None):
    """One loaded model per (weights, dense variant, adapter): the page switches among them freely."""
    from .models import load_model
    from .models.lora import load_adapter

    model = load_model(name, dense=dense)
    return (load_adapter(model, adapter) if adapter else model).eval()


def _prepare(path: str | os.PathLike, size: int) -> Image.Image:
    """The image as the models see it: its short side at the model's input size (the embedded
    models segment whole images at their own size), the long side at most 4 × that."""
    from .images import load_image

    image = load_image(path, max_pixels=MAX_PIXELS)
    scale = min(size / min(image.size), LONG_SIDE_FACTOR * size / max(image.size))
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if target == image.size else image.resize(target, Image.BICUBIC if scale > 1 else Image.LANCZOS)


@dataclass
class Analysis:
    """What the page shows; figures are ``None`` where the input asks for nothing to show."""

    image: Image.Image
    stages: list[str]  # "without TTD" and, with an adapter, "with TTD"
    words: list[str] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # per stage, per word
    selected: dict[str, list[bool]] = field(default_factory=dict)
    chart: Image.Image | None = None
    caption_heatmaps: Image.Image | None = None
    tag_heatmaps: Image.Image | None = None
    overlay: Image.Image | None = None

    def table(self) -> list[list]:
        """One row per candidate tag: the word, then score and selected? for each stage."""
        return [
            [word, *(v for s in self.stages for v in (round(self.scores[s][k], 3), "yes" if self.selected[s][k] else ""))]
            for k, word in enumerate(self.words)
        ]

    def headers(self) -> list[str]:
        return ["tag", *(h for s in self.stages for h in (f"score {s}", f"selected {s}"))]

    def summary(self) -> str:
        if not self.words:
            return "Segmented by the class names (no caption, so no tags)."
        parts = [f"selected {s}: **{', '.join(w for w, on in zip(self.words, self.selected[s]) if on) or 'none'}**"
                 for s in self.stages]
        return "; ".join(parts) + "."


def analyse(
    image: str | os.PathLike,
    caption: str = "",
    classes: str = "",
    model: str | None = None,
    dense: str | None = None,
    adapter: str | os.PathLike | None = None,
    threshold: float = 0.5,
) -> Analysis:
    """Tags, heatmaps and segmentation of one image, without and (given ``adapter``) with TTD.

    Tags are the caption's words scored by pixel scoring (Eq. 2) and selected at ``threshold``;
    the overlay segments by ``classes`` (comma-separated) when given, else by each stage's
    selected tags. Segmentation follows the ``miniworld`` protocol the embedded models are
    evaluated with (the whole image in one forward). ``model`` defaults to the quickstart's;
    ``dense`` and the caption map's normalisation to those the embedded ``model`` is meant for
    (:func:`ttd.models.weights.default_readout`). Bad input raises a one-line :class:`TTDError`.
    """
    from .evaluate.miniworld import EMBEDDED_MODEL, miniworld_protocol
    from .models.weights import default_readout
    from .segment import Segmenter
    from .method.tags import TagSelector
    from .viz import heatmap_grid, panels, score_bars, stack

    model = model or EMBEDDED_MODEL
    registered_dense, normalize = default_readout(model)
    dense = dense or registered_dense
    caption, names = caption.strip(), [n.strip() for n in classes.split(",") if n.strip()]
    if not caption and not names:
        raise TTDError("type a caption (or class names) to look for in the image")
    models = {"without TTD": _model(model, dense, None)}
    if adapter:
        models["with TTD"] = _model(model, dense, str(adapter))
    picture = _prepare(image, models["without TTD"].config.image_size)
    protocol = miniworld_protocol(caption_normalize=normalize)
    result = Analysis(picture, list(models))
    caption_maps, heat_grids, overlays = [], [], []
    for stage, m in models.items():
        if caption:
            tags = TagSelector(m, scorer="pixel", tau=threshold).select(picture, caption)
            result.words = [t.word for t in tags]
            result.scores[stage] = [t.score for t in tags]
            result.selected[stage] = [t.selected for t in tags]
            caption_maps.append(Segmenter(m, protocol, use_cache=False).predict_caption(picture, caption).heatmap)
        segmenter = Segmenter(m, protocol, use_cache=False)
        shown = names or result.words
        segmenter.set_vocabulary(shown)
        heat = segmenter.predict(picture).scores.clamp(0, 1)
        titles = shown if names else [f"{w} ({s:.2f})" for w, s in zip(shown, result.scores[stage])]
        heat_grids.append(_titled(stage, heatmap_grid(picture, heat, titles, columns=4, cell=192, show_image=False)))
        wanted = names or [w for w, on in zip(result.words, result.selected[stage]) if on]
        overlays.append(_segmentation(segmenter, picture, shown, wanted))
    if caption:
        result.chart = score_bars(result.words, result.scores, result.selected, threshold)
        scale = ", min-max per image" if normalize == "minmax" else ""
        titles = [f"caption heatmap, {s}{scale}" for s in models]
        result.caption_heatmaps = heatmap_grid(picture, torch.stack(caption_maps), titles, columns=3)
    result.tag_heatmaps = stack(heat_grids)
    result.overlay = panels(overlays, [f"segmentation, {s}" for s in models])
    return result


def _titled(title: str, figure: Image.Image) -> Image.Image:
    from .viz import stack, text_block

    return stack([text_block([title], figure.width, font_size=16), figure])


def _segmentation(segmenter, picture: Image.Image, shown: list[str], wanted: list[str]) -> Image.Image:
    """``picture`` segmented into ``wanted`` and background; a word keeps its colour (its place
    among all ``shown`` words) whichever subset a stage selects."""
    from .viz import overlay, palette, with_legend
    from .vocabulary import Vocabulary

    if not wanted:
        return with_legend(picture, ["nothing selected"], [(255, 255, 255)])
    colors = palette(len(shown) + 1, background=True)
    vocabulary = Vocabulary.from_names(wanted, background=True)
    own = [colors[0]] + [colors[1 + shown.index(w)] for w in vocabulary.display_names[1:]]
    segmenter.set_vocabulary(vocabulary)
    labels = segmenter.predict(picture, keep_scores=False).labels
    present = sorted(labels.unique().tolist())
    return with_legend(
        overlay(picture, labels, own, skip=(0,)),
        [vocabulary.display_names[k] for k in present],
        [own[k] for k in present],
    )


# --- the page -------------------------------------------------------------------------------------
def _gradio():
    """gradio, imported on first use with its telemetry off (the page works offline)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise TTDError(f"the demo needs gradio: {INSTALL_HINT}") from None
    return gradio


def _adapter_choices(model: str) -> tuple[list[str], str]:
    """The adapter menu for ``model`` and its default: the first shipped adapter, if any."""
    labels = list(embedded_adapters(model))
    return [NO_ADAPTER, *labels], (labels[0] if labels else NO_ADAPTER)


def _adapter_dense(model: str, label: str, current: str) -> str:
    """The dense variant an adapter was trained with (the only one it loads on)."""
    from .models.weights import default_readout

    return default_readout(model)[0] if label in embedded_adapters(model) else current


def build_demo():
    """The gradio Blocks of the page (not yet launched)."""
    gr = _gradio()
    from .models.registry import DENSE_VARIANTS
    from .viz import enlarge

    samples = {s.label: s for s in embedded_samples()}
    models = embedded_models()
    first = next(iter(samples.values()), None)
    adapters, adapter = _adapter_choices(models[0])

    def preview(path):
        return enlarge(_prepare(path, _model(models[0], "maskclip", None).config.image_size))

    def pick_sample(label):
        sample = samples[label]
        return preview(sample.image), sample.caption, None, ""

    def pick_upload(path):
        if path is None:
            return gr.update(), ""
        try:
            return preview(path), ""
        except TTDError as err:
            return None, f"**Error:** {err}"

    def pick_model(name):
        choices, value = _adapter_choices(name)
        return gr.update(choices=choices, value=value)

    def run(label, upload, caption, classes, model, adapter, dense, threshold):
        image = upload or (samples[label].image if label in samples else None)
        try:
            if image is None:
                raise TTDError("choose a bundled sample or upload an image")
            path = embedded_adapters(model).get(adapter)
            result = analyse(image, caption or "", classes or "", model, dense, path, threshold)
        except TTDError as err:
            return f"**Error:** {err}", None, None, None, None, None
        table = {"headers": result.headers(), "data": result.table()} if result.words else None
        return (result.summary(), table, result.chart, result.caption_heatmaps, result.tag_heatmaps, result.overlay)

    def figure(label, elem_id):
        return gr.Image(label=label, show_label=False, type="pil", format="png", interactive=False, elem_id=elem_id)

    with gr.Blocks(title="ttd demo", analytics_enabled=False) as demo:
        gr.Markdown(
            "## TTD: Text-Tag Self-Distillation\n"
            "Which words of a caption does the image depict (pixel-tag scoring), where are they, "
            "and what does TTD change? Runs offline on the embedded mini-world models."
        )
        with gr.Row():
            with gr.Column(scale=1):
                sample = gr.Dropdown(list(samples), value=first and first.label, label="bundled sample", elem_id="sample")
                upload = gr.File(label="or upload an image", file_types=["image"], type="filepath", elem_id="upload")
                shown = gr.Image(value=first and preview(first.image), label="input, as the model sees it",
                                 type="pil", format="png", interactive=False, elem_id="input")
                caption = gr.Textbox(value=first and first.caption, label="caption", elem_id="caption")
                classes = gr.Textbox(label="class names to segment (optional, comma-separated; default: the selected tags)",
                                     elem_id="classes")
                model = gr.Dropdown(models, value=models[0], label="model", elem_id="model")
                adapter_menu = gr.Dropdown(adapters, value=adapter, label="TTD adapter", elem_id="adapter")
                dense = gr.Dropdown(list(DENSE_VARIANTS), value=_adapter_dense(models[0], adapter, "maskclip"),
                                    label="dense variant", elem_id="dense")
                threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="tag threshold τ", elem_id="threshold")
                button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                table = gr.Dataframe(label="candidate tags: pixel score and selection", interactive=False, elem_id="tags")
                chart = figure("tag scores", "chart")
                caption_heat = figure("caption heatmap", "caption-heatmap")
                tag_heat = figure("each tag's heatmap", "tag-heatmaps")
                segmentation = figure("segmentation", "segmentation")
        sample.input(pick_sample, sample, [shown, caption, upload, status])
        upload.change(pick_upload, upload, [shown, status])
        model.input(pick_model, model, adapter_menu)
        adapter_menu.change(_adapter_dense, [model, adapter_menu, dense], dense)
        inputs = [sample, upload, caption, classes, model, adapter_menu, dense, threshold]
        outputs = [status, table, chart, caption_heat, tag_heat, segmentation]
        button.click(run, inputs, outputs)
        caption.submit(run, inputs, outputs)
    return demo


def run_demo(host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """Serve the page until interrupted; ``share`` also opens a public gradio.live link."""
    demo = build_demo()
    try:
        _, url, share_url = demo.launch(server_name=host, server_port=port, share=share, ssr_mode=False, quiet=True,
                                        prevent_thread_lock=True)
    except OSError as err:
        raise TTDError(f"cannot serve on {host}:{port}: {str(err).split('. ')[0]}; pass another --port") from None
    print(f"ttd demo: {url}" + (f" and {share_url}" if share_url else "") + " (Ctrl+C stops it)", flush=True)
    demo.block_thread()
