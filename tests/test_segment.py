import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _seg_fixtures import PixelDense
from helpers import tiny_model
from ttd.cache import class_embeddings, weights_fingerprint
from ttd.errors import TTDError
from ttd.images import normalize, resize_short_side
from ttd.protocols import load_protocol
from ttd.segment import Segmenter, apply_background_rule, window_boxes
from ttd.vocabulary import Vocabulary


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTD_CACHE", str(tmp_path / "cache"))


def _image(h=40, w=56, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("h, w, crop, stride", [(100, 130, 48, 32), (40, 200, 64, 16), (30, 30, 48, 24), (96, 96, 32, 32)])
def test_windows_cover_the_image_inside_its_bounds(h, w, crop, stride):
    boxes = window_boxes(h, w, crop, stride)
    covered = torch.zeros(h, w)
    for y1, y2, x1, x2 in boxes:
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        assert y2 - y1 == min(crop, h) and x2 - x1 == min(crop, w)
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    assert window_boxes(h, w, None, None) == [(0, h, 0, w)]


def test_one_window_equals_a_hand_written_whole_image_forward():
    model = tiny_model()
    protocol = load_protocol("tcl", overrides={"short_side": 48, "crop_size": 96, "stride": 48, "pamr": False})
    seg = Segmenter(model, protocol, ["cat", "dog"])
    x = _image(40, 56)
    ours = seg.query_scores(x, seg.query_embeddings, calibrated=True)
    resized = resize_short_side(x, 48, 2048, mode="bilinear")
    with torch.no_grad():
        _, dense = model.encode_image(normalize(resized, protocol.pixel_mean, protocol.pixel_std)[None])
        heat = model.heatmap(dense, seg.query_embeddings)
    heat = F.interpolate(heat, size=resized.shape[-2:], mode="bilinear", align_corners=False)
    expected = F.interpolate(heat, size=(40, 56), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(ours, expected, atol=1e-5)
    whole = Segmenter(model, protocol.replace(crop_size=None, stride=None), ["cat", "dog"])
    assert torch.allclose(whole.query_scores(x, seg.query_embeddings, calibrated=True), ours, atol=1e-6)


def _naive_scores(model, protocol, x, text, calibrated):
    """Reference: one window per forward, plain loops, views averaged at the original size."""
    total = torch.zeros(len(text), *x.shape[-2:])
    views = 0
    for scale in protocol.scales:
        resized = resize_short_side(x, protocol.short_side * scale, protocol.max_long_side * scale, mode="bilinear")
        img = normalize(resized, protocol.pixel_mean, protocol.pixel_std)
        for flip in [False, True] if protocol.flip else [False]:
            view = img.flip(-1) if flip else img
            canvas = torch.zeros(len(text), *view.shape[-2:])
            count = torch.zeros(1, *view.shape[-2:])
            for y1, y2, x1, x2 in window_boxes(*view.shape[-2:], protocol.crop_size, protocol.stride):
                with torch.no_grad():
                    _, dense = model.encode_image(view[None, :, y1:y2, x1:x2])
                    s = model.heatmap(dense, text) if calibrated else model.similarity(dense, text)
                canvas[:, y1:y2, x1:x2] += F.interpolate(s, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
                count[:, y1:y2, x1:x2] += 1
            merged = F.interpolate((canvas / count)[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
            total += merged.flip(-1) if flip else merged
            views += 1
    return total / views


def test_batched_windows_scales_and_flips_equal_the_naive_loop():
    model = tiny_model()
    protocol = load_protocol("ttd", overrides={"short_side": 32, "crop_size": 24, "stride": 16, "scales": "1,0.75", "pamr": False})
    x = _image(36, 50, seed=3)
    reference = None
    for window_batch in (1, 5, 16):
        seg = Segmenter(model, protocol, ["cat", "dog", "grass"], window_batch=window_batch)
        if reference is None:
            reference = _naive_scores(model, protocol, x, seg.query_embeddings, calibrated=False)
        ours = seg.query_scores(x, seg.query_embeddings, calibrated=False)
        assert torch.allclose(ours, reference, atol=1e-5), window_batch


def test_flip_averaging_is_exact_for_a_mirror_equivariant_model():
    model = PixelDense()  # patch features depend only on the patch's pixels: f(flip x) = flip f(x)
    half = torch.rand(3, 32, 24, generator=torch.Generator().manual_seed(4))
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)  # 32 × 48, whole patches
    other = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(5))
    base = load_protocol("tcl", overrides={"short_side": None, "crop_size": None})
    for x in (symmetric, other):
        single = Segmenter(model, base, ["a", "b", "c"]).predict(x)
        flipped = Segmenter(model, base.replace(flip=True), ["a", "b", "c"]).predict(x)
        assert torch.allclose(flipped.scores, single.scores, atol=1e-6)
        assert torch.equal(flipped.labels, single.labels)


def test_flip_average_is_the_mean_of_the_view_and_the_mirrored_view():
    model = tiny_model()  # positional embeddings: not mirror-equivariant
    base = load_protocol("tcl", overrides={"short_side": None, "crop_size": None})
    x = _image(32, 48, seed=6)
    one = Segmenter(model, base, ["cat", "dog"])
    both = Segmenter(model, base.replace(flip=True), ["cat", "dog"])
    text = one.query_embeddings
    expected = (one.query_scores(x, text, True) + one.query_scores(x.flip(-1), text, True).flip(-1)) / 2
    assert torch.allclose(both.query_scores(x, text, True), expected, atol=1e-6)
    assert not torch.allclose(one.query_scores(x, text, True), expected, atol=1e-4)


def test_threshold_rule_constant_background_and_synonym_max():
    vocab = Vocabulary.from_lines(["background", "cat, kitten", "dog"])
    protocol = load_protocol("tcl", overrides={"background_threshold": 0.5, "synonyms": True})
    queries, owners = vocab.queries(True, "threshold")
    assert queries == ["cat", "kitten", "dog"]
    q = torch.tensor([[[0.2, 0.6]], [[0.7, 0.1]], [[0.4, 0.55]]])  # (3 queries, 1, 2)
    labels, scores = apply_background_rule(q, owners, vocab, protocol)
    assert torch.allclose(scores[:, 0], torch.tensor([[0.5, 0.5], [0.7, 0.6], [0.4, 0.55]]))
    assert labels.tolist() == [[1, 1]]
    labels, _ = apply_background_rule(q * 0.5, owners, vocab, protocol)
    assert labels.tolist() == [[0, 0]]  # everything under the threshold


def test_softmax_rule_probability_threshold_and_area_filter():
    vocab = Vocabulary.from_lines(["background, sky", "cat", "dog"])
    protocol = load_protocol("sclip", overrides={"logit_scale": 10.0, "prob_threshold": 0.5})
    queries, owners = vocab.queries(True, "softmax")
    cos = torch.tensor([[0.0, 0.0, 0.0, 0.3], [0.3, 0.0, 0.1, 0.0], [0.0, 0.05, 0.1, 0.0]]).view(3, 1, 4)
    labels, probs = apply_background_rule(cos, owners, vocab, protocol)
    expected = (10 * cos).softmax(0)
    assert torch.allclose(probs, expected)
    assert labels.tolist() == [[1, 0, 0, 0]]  # pixels 1-2 are unsure (< 0.5), pixel 3 is sky = background
    area = protocol.replace(prob_threshold=0.0, area_threshold=0.6)
    cos2 = torch.tensor([[0.0] * 5, [0.3, 0.3, 0.3, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 0.3]]).view(3, 1, 5)
    labels, _ = apply_background_rule(cos2, owners, vocab, area)
    assert labels.tolist() == [[1, 1, 1, 1, 0]]  # "dog" covers 1/5 of the foreground < 0.6: dropped


def test_predict_outputs_and_inputs():
    model = tiny_model()
    protocol = load_protocol("sclip", "voc21", ["short_side=48", "crop_size=32", "stride=16", "templates=identity"])
    seg = Segmenter(model, protocol, Vocabulary.builtin("voc21"))
    pil = Image.fromarray((torch.rand(30, 44, 3) * 255).byte().numpy())
    result = seg.predict(pil)
    assert result.labels.shape == (30, 44) and result.scores.shape == (21, 30, 44)
    assert ((result.scores >= 0) & (result.scores <= 1)).all()  # probabilities under the softmax rule
    assert result.labels.dtype == torch.int64 and result.classes[0] == "background"
    as_uint8 = seg.predict(torch.from_numpy(np.array(pil)).permute(2, 0, 1))
    assert torch.equal(as_uint8.labels, result.labels)
    with pytest.raises(TTDError, match="expected a PIL image"):
        seg.predict(torch.rand(4, 4))
    with pytest.raises(TTDError, match="no vocabulary"):
        Segmenter(model).predict(pil)


def test_pamr_runs_at_the_reduced_resolution(monkeypatch):
    import ttd.segment as segment_module

    sizes = []
    real = segment_module.pamr
    monkeypatch.setattr(segment_module, "pamr", lambda img, s, *a: sizes.append(tuple(s.shape[-2:])) or real(img, s, *a))
    protocol = load_protocol("tcl", overrides={"short_side": 64, "crop_size": 32, "stride": 16, "pamr": True, "pamr_scale": 0.25})
    result = Segmenter(tiny_model(), protocol, ["cat", "dog"]).predict(_image(40, 56))
    assert sizes == [(16, 22)]  # 0.25 × the 64 × 90 resized image
    assert result.scores.shape == (2, 40, 56)


def test_caption_mode_thresholds_the_heatmap():
    model = tiny_model()
    seg = Segmenter(model, load_protocol("tcl", overrides={"short_side": 48, "crop_size": 32, "stride": 16}))
    x = _image()
    out = seg.predict_caption(x, "a small dog sleeping on a red sofa", threshold=0.45)
    assert out.mask.shape == out.heatmap.shape == (40, 56)
    assert torch.equal(out.mask, out.heatmap > 0.45)
    assert 0.0 <= out.heatmap.min() and out.heatmap.max() <= 1.0
    with pytest.raises(TTDError, match="caption is empty"):
        seg.predict_caption(x, "  ")


def _count_text_forwards(model):
    calls = []
    real = model.encode_tokens
    model.encode_tokens = lambda tokens: calls.append(len(tokens)) or real(tokens)
    return calls


def test_text_cache_hit_on_second_evaluation_with_the_same_weights():
    protocol = load_protocol("sclip", "voc21")  # 80 templates, synonyms, background queries
    vocab = Vocabulary.from_lines(["background, sky", "cat, kitten", "dog"])
    first = tiny_model()
    calls = _count_text_forwards(first)
    emb1 = Segmenter(first, protocol, vocab).query_embeddings
    assert sum(calls) == len(set(vocab.queries(True, "softmax")[0])) * 80
    second = tiny_model()  # a new process would hold a fresh model with the same weights
    calls2 = _count_text_forwards(second)
    emb2 = Segmenter(second, protocol, vocab).query_embeddings
    assert calls2 == [] and torch.allclose(emb1, emb2)
    # another vocabulary, template set or changed weights miss the cache
    Segmenter(second, protocol, ["zebra"])
    assert sum(calls2) == 80
    with torch.no_grad():
        second.clip.text_projection.mul_(1.01)
    calls2.clear()
    Segmenter(second, protocol, ["zebra"])
    assert sum(calls2) == 80


def test_fingerprint_sees_adapters_and_calibration():
    model = tiny_model()
    before = weights_fingerprint(model)
    assert weights_fingerprint(model) == before
    with torch.no_grad():
        model.calibration.bias.add_(0.1)
    calibrated = weights_fingerprint(model)
    assert calibrated != before
    model.extra = torch.nn.Linear(2, 2)  # an adapter module adds state-dict entries
    assert weights_fingerprint(model) not in (before, calibrated)


def test_templates_are_averaged_then_renormalised():
    model = tiny_model()
    templates = ["a photo of a {}.", "art of the {}."]
    emb = class_embeddings(model, ["cat"], templates, use_cache=False)
    with torch.no_grad():
        each = model.encode_text(["a photo of a cat.", "art of the cat."])
    expected = F.normalize(each.mean(0, keepdim=True), dim=-1)
    assert torch.allclose(emb, expected, atol=1e-6)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(1))


@pytest.mark.parametrize(
    "overrides",
    [
        {"short_side": None, "crop_size": None, "stride": None},  # one forward over each image
        {"short_side": 48, "crop_size": None, "stride": None, "flip": True, "scales": "1,0.5", "pamr": True},
        {"short_side": 48, "crop_size": 32, "stride": 16},  # windows: one image at a time
    ],
)
def test_batched_predictions_equal_one_image_at_a_time(overrides):
    model = tiny_model()
    protocol = load_protocol("tcl", overrides=overrides)
    seg = Segmenter(model, protocol, ["background", "cat", "dog", "tree"], window_batch=4)
    images = [_image(40, 56, seed=i) for i in range(5)] + [_image(33, 47, seed=9)]  # two sizes, 5 > window_batch
    single = [seg.predict(x) for x in images]
    batched = seg.predict_batch(images)
    for a, b, c in zip(single, batched, seg.predict_batch(images, keep_scores=False)):
        assert torch.allclose(a.scores, b.scores, atol=1e-5)
        assert torch.equal(a.labels, b.labels) and torch.equal(b.labels, c.labels) and c.scores is None
    captions = [f"a photo of thing {i}" for i in range(len(images))]
    single = [seg.predict_caption(x, c) for x, c in zip(images, captions)]
    for a, b in zip(single, seg.predict_caption_batch(images, captions, batch_size=3)):
        assert torch.allclose(a.heatmap, b.heatmap, atol=1e-5) and a.caption == b.caption


def test_batched_softmax_rule_rules_each_image_alone():
    vocab = Vocabulary.from_lines(["background, sky", "cat", "dog"])
    protocol = load_protocol("sclip", overrides={"logit_scale": 10.0, "area_threshold": 0.6})
    _, owners = vocab.queries(True, "softmax")
    cos = torch.rand(4, 3, 1, 5, generator=torch.Generator().manual_seed(0)) * 0.3
    labels, scores = apply_background_rule(cos, owners, vocab, protocol)
    for i in range(4):
        one_labels, one_scores = apply_background_rule(cos[i], owners, vocab, protocol)
        assert torch.equal(labels[i], one_labels) and torch.equal(scores[i], one_scores)


@pytest.mark.parametrize("classes", [["background", "cat", "dog"], ["cat", "dog", "tree"]])
def test_labels_without_class_scores_equal_the_background_rule(classes):
    seg = Segmenter(tiny_model(), load_protocol("tcl", overrides={"background_threshold": 0.5}), classes)
    q = torch.rand(2, len(seg.owners), 6, 7, generator=torch.Generator().manual_seed(1))
    q[0, :, 0, 0] = 0.5  # a tie with the background channel: background wins
    q[1, :, 0, 0] = 0.7  # a tie between queries: the first class wins
    assert seg._labels_alone()
    assert torch.equal(seg._threshold_labels(q), apply_background_rule(q, seg.owners, seg.vocabulary, seg.protocol)[0])


def test_caption_maps_are_normalised_map_by_map():
    from ttd.segment import normalize_caption_map

    maps = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(2)) * torch.tensor([0.2, 1.0, 0.5]).view(3, 1, 1)
    batched = normalize_caption_map(maps, "minmax")
    for m, b in zip(maps, batched):
        assert torch.equal(normalize_caption_map(m, "minmax"), b)
        assert b.min() == 0 and b.max() == pytest.approx(1.0)
    assert normalize_caption_map(maps, "none") is maps


def test_batches_are_bounded_by_their_score_maps(monkeypatch):
    import ttd.segment as segment_module

    protocol = load_protocol("tcl", overrides={"short_side": None, "crop_size": None, "stride": None})
    seg = Segmenter(tiny_model(), protocol, ["cat", "dog"], window_batch=8)
    images = [_image(20, 30, seed=i) for i in range(5)]
    monkeypatch.setattr(segment_module, "BATCH_SCORE_ELEMENTS", 2 * 2 * 20 * 30)  # two images of 2 queries
    assert [len(i) for i, _ in seg._groups(images, None)] == [2, 2, 1]
    monkeypatch.setattr(segment_module, "BATCH_SCORE_ELEMENTS", 1 << 26)
    assert [len(i) for i, _ in seg._groups(images, 4)] == [4, 1]
