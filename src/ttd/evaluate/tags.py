"""Multi-tag selection, the paper's Table 2: every scorer and tagger asked for, in one pass.

Each candidate word of each caption is one binary decision against the manifest's ``tags``
(the depicted words). Images are read and encoded once per batch and shared by every scorer;
taggers (nouns, LLM) see only the captions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.manifest import ManifestRecord
from ..errors import TTDError
from ..io import markdown_table, save_json
from ..method.tags import SCORINGS, TagSelection, TagSelector, check_scorings, clean_word, tag_candidates
from ..metrics import TagMetrics
from ..taggers import Tagger

__all__ = ["SCORER_LABELS", "evaluate_tags", "tags_table", "write_tags_report"]

SCORER_LABELS = {
    "image": "s_image (Eq. 1)",
    "text": "s_text (Eq. 7)",
    "image-text": "s_image − s_text",
    "pixel": "s_pixel (Eq. 2)",
}


def _candidates(record: ManifestRecord, stopwords: bool, manifest: str) -> list[str]:
    record.require("tags", manifest)
    try:
        return tag_candidates(record.caption, stopwords)
    except TTDError as err:
        raise TTDError(f"{manifest}:{record.line}: {err}") from None


def evaluate_tags(
    records: Sequence[ManifestRecord],
    model=None,
    scorers: Sequence[str] = SCORINGS,
    taggers: Sequence[Tagger] = (),
    selection: TagSelection | None = None,
    batch_size: int = 32,
    manifest: str | os.PathLike = "manifest",
    progress: bool = True,
) -> dict:
    """P / R / F1 / Acc / mAP of each scorer (on ``model``) and each tagger over ``records``.

    Returns ``{"rows": {name: metrics}, "settings": …, "captions": …, …}``; metrics are fractions
    (see :class:`ttd.metrics.TagMetrics`). Manifest tags that are not candidates of their caption
    (other spellings, multi-word tags, stop words under ``stopwords``) cannot be decided and are
    counted in ``truth_tags_not_candidates``. ``selection`` holds τ and the other settings; every one
    of ``scorers`` is decided with them (its own ``scorer`` is not used).
    """
    manifest = str(manifest)
    selection = selection or TagSelection()
    scorers = check_scorings(scorers) if scorers else ()
    if not scorers and not taggers:
        raise TTDError("nothing to evaluate: give at least one scorer or tagger")
    if scorers and model is None:
        raise TTDError("scorers need a model; pass one (or evaluate taggers only)")
    if batch_size < 1:
        raise TTDError(f"batch size must be at least 1, got {batch_size}")
    words = [_candidates(r, selection.stopwords, manifest) for r in records]
    depicted = [{clean_word(t) for t in r.tags} - {""} for r in records]
    truth = [torch.tensor([w in d for w in ws], dtype=torch.bool) for d, ws in zip(depicted, words)]
    missed = sum(len(d - set(ws)) for d, ws in zip(depicted, words))

    selector = None
    if scorers:
        selector = TagSelector(model, selection, scorer=scorers[0])
    names = [*scorers, *(t.name for t in taggers)]
    metrics = {name: TagMetrics() for name in names}

    with tqdm(total=len(records), unit="caption", desc="tags", disable=not progress) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            captions = [r.caption for r in batch]
            if selector is not None:
                scored = selector.score_batch([r.image for r in batch], captions, scorers)
                for name in scorers:
                    chosen = selection.decide(scored.scores[name], scored.valid)
                    for i in range(len(batch)):
                        n = len(scored.words[i])
                        metrics[name].update(scored.row(name, i), chosen[i, :n], truth[start + i])
            for tagger in taggers:
                for i, picked in enumerate(tagger.tag_batch(captions)):
                    picked = set(picked)
                    selected = torch.tensor([w in picked for w in words[start + i]], dtype=torch.bool)
                    metrics[tagger.name].update(None, selected, truth[start + i])
            bar.update(len(batch))

    return {
        "task": "tags",
        "manifest": manifest,
        "captions": len(records),
        "truth_tags_not_candidates": missed,
        "settings": {
            "tau": selection.tau,
            "normalize": selection.normalize,
            "keep_argmax": selection.keep_argmax,
            "stopwords": selection.stopwords,
            "template": selection.template,
            "model": getattr(model, "source", None),
            "dense": getattr(model, "name", None),
        },
        "rows": {name: metrics[name].compute() for name in names},
        "labels": {**{s: SCORER_LABELS[s] for s in scorers}, **{t.name: t.label for t in taggers}},
    }


def tags_table(result: dict) -> str:
    """The Markdown table of :func:`evaluate_tags`, laid out like the paper's Table 2 (in %)."""
    rows = []
    for name, m in result["rows"].items():
        percent = [100.0 * m[k] for k in ("precision", "recall", "f1", "accuracy")]
        rows.append([result["labels"][name], *percent, "–" if m["map"] is None else 100.0 * m["map"]])
    s = result["settings"]
    note = (
        f"{result['captions']} captions; τ = {s['tau']}, normalisation {s['normalize']}"
        + (", keep arg-max" if s["keep_argmax"] else "")
        + (", stop words removed" if s["stopwords"] else "")
        + (f", template {s['template']!r}" if s["template"] else "")
    )
    return markdown_table(["scoring", "P", "R", "F1", "Acc", "mAP"], rows) + f"\n{note}\n"


def write_tags_report(result: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``tags.json`` (all figures) and ``tags.md`` (the table) in ``out_dir``, written atomically."""
    from ..io import atomic_write_bytes

    out_dir = Path(out_dir)
    json_path = save_json(result, out_dir / "tags.json")
    md_path = atomic_write_bytes(out_dir / "tags.md", tags_table(result).encode("utf-8"))
    return json_path, md_path
