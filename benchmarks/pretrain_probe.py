"""How good is a pretrained mini-world CLIP as a TTD test bed? Figures of one model on a val split.

    python benchmarks/pretrain_probe.py --model runs/pre/model.safetensors --world /path/to/mw64
    python benchmarks/pretrain_probe.py --model runs/pre/checkpoints/step_00000500 --world ...

* tag selection over each caption's candidate words (``ttd.method.tags.candidate_tags``) against the
  depicted words: image-level scores (Eq. 1) and pixel-level scores (Eq. 2), softmax at 100,
  τ = 0.5 → micro P / R / F1, and the threshold-free AUC of depicted vs absent words (sklearn);
* the same AUCs over the 76 vocabulary nouns instead of the caption's words ("noun AUC": depicted
  vs absent nouns, the stricter figure: on the caption's words most absent words are not nouns
  at all — only about half of the captions mention one undepicted noun — so a word-type prior
  alone scores well there);
* zero-shot top-1: the global embedding's nearest class name is one of the depicted classes;
* localisation of each depicted word on the dense (MaskCLIP) map, upsampled to the image:
  pointing (its maximum lies inside its mask), IoU of the calibrated heatmap > 0.5 with its mask,
  and mIoU of the argmax over the class names (+ "background") on the segmentation masks.

With ``--heldout WORLD``: the open-vocabulary mIoU (the ``miniworld`` protocol, as in
``reproduce_miniworld.py``) on that world's ``test-seen`` and ``test`` splits, the same scenes drawn
with training and with held-out clip-art files, and their ratio (issue 10's generalisation goal:
test ≥ 0.7 × test-seen). Point it at a tuning build, not the reported one, when choosing a recipe.

Single tag bias (issue 6's goal): image-level recall ≤ ½ pixel-level recall, pixel AUC ≥ 0.8.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

import ttd
from ttd.data.manifest import read_manifest
from ttd.images import load_image, preprocess
from ttd.method.tags import candidate_tags, image_tag_scores, pixel_tag_scores


def load(path: str, dense: str):
    """A weights file (``load_model``), a known name, or a pretraining checkpoint folder."""
    p = Path(path)
    if p.is_dir() and (p / "trainer.pt").is_file():
        run = p.parent.parent
        config = ttd.CLIPConfig(**json.loads((run / "clip_config.json").read_text()))
        model = ttd.create_model(config, dense=dense)
        state = torch.load(p / "trainer.pt", map_location="cpu", weights_only=True)["trainable"]
        model.load_state_dict(state, strict=False)
        return model
    return ttd.load_model(path, dense=dense, device="cpu")


def class_names(world: Path) -> tuple[list[str], dict[str, int]]:
    lines = (world / "seg" / "val" / "classes.txt").read_text().splitlines()
    word_to_id = {w: i for i, line in enumerate(lines) for w in line.split(",")}
    return [line.split(",")[0] for line in lines], word_to_id


@torch.no_grad()
def evaluate(model, world: Path, limit: int | None = None, batch: int = 50) -> dict:
    model.eval()
    size = model.config.image_size
    records = read_manifest(world / "val" / "tags.jsonl")[:limit]
    names, word_to_id = class_names(world)
    name_emb = model.encode_text(names)  # index 0 = "background"
    labels_img, scores_img, scores_pix = [], [], []
    zero_shot, pointing, heat_iou = [], [], []
    noun_truth, noun_img, noun_pix = [], [], []
    inter, union = np.zeros(len(names)), np.zeros(len(names))
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        images = torch.stack([preprocess(load_image(r.image), size) for r in chunk])
        global_emb, dense = model.encode_image(images)
        # zero-shot over the nouns (background excluded)
        top = (global_emb @ name_emb[1:].T).argmax(dim=1) + 1
        # segmentation over the vocabulary
        cos_names = F.interpolate(model.similarity(dense, name_emb), size=(size, size), mode="bilinear", align_corners=False)
        predicted = cos_names.argmax(dim=1).numpy()
        noun_img.append(image_tag_scores(global_emb, name_emb[1:].expand(len(chunk), -1, -1)))
        noun_pix.append(pixel_tag_scores(model.similarity(dense, name_emb[1:])))
        for b, rec in enumerate(chunk):
            stem = Path(rec.image).stem
            seg = np.asarray(Image.open(world / "seg" / "val" / "masks" / f"{stem}.png"))
            depicted_ids = {word_to_id[t] for t in rec.tags}
            noun_truth.append([c in depicted_ids for c in range(1, len(names))])
            zero_shot.append(int(top[b]) in depicted_ids)
            for c in np.union1d(np.unique(seg), np.unique(predicted[b])):
                inter[c] += np.logical_and(seg == c, predicted[b] == c).sum()
                union[c] += np.logical_or(seg == c, predicted[b] == c).sum()
            words = candidate_tags(rec.caption)
            if not words:
                continue
            tag_emb = model.encode_text(words)
            truth = [w in rec.tags for w in words]
            scores_img += image_tag_scores(global_emb[b], tag_emb).tolist()
            cos = model.similarity(dense[b : b + 1], tag_emb)[0]  # (N, h, w)
            scores_pix += pixel_tag_scores(cos).tolist()
            labels_img += truth
            up = F.interpolate(cos[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            heat = model.calibration(up) > 0.5
            for k, w in enumerate(words):
                if w not in rec.tag_masks:
                    continue
                mask = np.asarray(Image.open(rec.tag_masks[w])) > 0
                if not mask.any():
                    continue
                flat = int(up[k].argmax())
                pointing.append(bool(mask.reshape(-1)[flat]))
                h = heat[k].numpy()
                heat_iou.append(np.logical_and(h, mask).sum() / max(np.logical_or(h, mask).sum(), 1))
    y = np.array(labels_img)
    out = {"images": len(records), "logit_scale": float(model.logit_scale)}
    for name, s in (("image", np.array(scores_img)), ("pixel", np.array(scores_pix))):
        sel = s >= 0.5
        tp = (sel & y).sum()
        p, r = tp / max(sel.sum(), 1), tp / max(y.sum(), 1)
        out[name] = {"P": p, "R": r, "F1": 2 * p * r / max(p + r, 1e-12), "AUC": roc_auc_score(y, s)}
    truth = np.array(noun_truth).ravel()
    out["noun_auc"] = {
        "image": roc_auc_score(truth, torch.cat(noun_img).flatten().numpy()),
        "pixel": roc_auc_score(truth, torch.cat(noun_pix).flatten().numpy()),
    }
    present = union > 0
    out.update(
        zero_shot=float(np.mean(zero_shot)),
        pointing=float(np.mean(pointing)),
        heatmap_iou=float(np.mean(heat_iou)),
        miou=float(np.mean(inter[present] / union[present])),
        miou_objects=float(np.mean(inter[1:][present[1:]] / union[1:][present[1:]])),
        bias_ratio=out["image"]["R"] / max(out["pixel"]["R"], 1e-12),
    )
    return out


def heldout_generalisation(model, world: Path, limit: int | None = None) -> dict:
    """mIoU on held-out drawings (``test``) against the same scenes with training ones (``test-seen``)."""
    from ttd.data.segmentation import load_segmentation_dataset
    from ttd.evaluate.miniworld import miniworld_protocol
    from ttd.evaluate.segmentation import evaluate_segmentation

    model.eval()
    miou = {
        split: evaluate_segmentation(model, load_segmentation_dataset("generic", world / "seg" / split), miniworld_protocol(),
                                     limit=limit, figures=0, use_cache=False, progress=False)["mIoU"]
        for split in ("test-seen", "test")
    }
    return {**miou, "ratio": miou["test"] / max(miou["test-seen"], 1e-12)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="weights file, known name, or a checkpoint folder")
    ap.add_argument("--world", help="a mini-world built by `ttd data miniworld` (its val split)")
    ap.add_argument("--heldout", help="a mini-world with test and test-seen splits: the generalisation figures")
    ap.add_argument("--dense", default="maskclip")
    ap.add_argument("--limit", type=int, default=None, help="only the first N val images")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not (args.world or args.heldout):
        ap.error("give --world, --heldout or both")
    model = load(args.model, args.dense)
    figures = evaluate(model, Path(args.world), args.limit) if args.world else {}
    if args.heldout:
        figures["heldout"] = heldout_generalisation(model, Path(args.heldout), args.limit)
    text = json.dumps(figures, indent=1, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
