"""TTD step 1: candidates, scores (Eq. 1, 2, 7), selection, batching, evaluation and CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from helpers import tiny_model
from PIL import Image

from ttd import cli
from ttd.errors import TTDError
from ttd.images import preprocess
from ttd.metrics import TagMetrics
from ttd.method.tags import (
    TagScore,
    TagSelection,
    TagSelector,
    candidate_tags,
    english_stopwords,
    normalize_scores,
    pixel_tag_scores,
    select_tags,
    tag_candidates,
)
from ttd.models import tokenize

CAPTIONS = [
    "a red stop sign on a stone road",
    "woman spends time in a jacuzzi",
    "dog",
    "Two dogs, a cat and a frisbee on the grass.",
]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(3, 32, 32, generator=g) for _ in CAPTIONS]


def _reference(model, image, caption, template=None):
    """Eq. 1, 2 and 7 written out directly from the model's raw embeddings, one caption."""
    words = candidate_tags(caption)
    prompts = [w if template is None else template.format(w) for w in words]
    with torch.no_grad():
        glob, dense = model.encode_image(image[None])
        tags = model.encode_tokens(tokenize(prompts))
        cap = model.encode_tokens(tokenize([caption]))[0]
    cos_maps = torch.einsum("chw,nc->nhw", dense[0], tags)
    per_location = torch.softmax(100 * cos_maps, dim=0)
    return {
        "pixel": per_location.flatten(1).max(dim=1).values,
        "image": torch.softmax(100 * tags @ glob[0], dim=0),
        "text": torch.softmax(100 * tags @ cap, dim=0),
        "per_location": per_location,
    }


# --- candidates -----------------------------------------------------------------------------
def test_candidate_tags_paper_default():
    assert candidate_tags("A Dog, a dog's BALL… and “the” end!") == ["a", "dog", "dogs", "ball", "and", "the", "end"]


@pytest.mark.parametrize("caption", ["", "   ", "?!... — …", "\n\t"])
def test_caption_without_words_is_an_error(caption):
    with pytest.raises(TTDError) as err:
        tag_candidates(caption)
    assert str(err.value) == f"caption {caption!r} has no words to tag (empty or only punctuation); give a caption with words"


def test_long_caption_is_quoted_short_in_errors():
    with pytest.raises(TTDError, match=r"^caption '\.{59}…' has no words"):
        tag_candidates("." * 500)
    with pytest.raises(TTDError, match=r"^a caption must be a string, got int$"):
        tag_candidates(3)


def test_stopwords_option_removes_exactly_the_listed_words():
    caption = "The dog and a cat sit on the mat with their owner, who is not here."
    assert tag_candidates(caption, stopwords=True) == ["dog", "cat", "sit", "mat", "owner"]
    stop = english_stopwords()
    every = " ".join(sorted(stop))
    assert tag_candidates(every, stopwords=True) == []
    assert tag_candidates(every + " dog", stopwords=True) == ["dog"]
    assert set(tag_candidates(every)) == stop  # the list is spelled the way candidates are cleaned
    assert {"dog", "sign", "road", "woman", "stop"}.isdisjoint(stop)


# --- pure score functions -------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["softmax", "minmax", "none"])
def test_padding_does_not_change_scores(mode):
    g = torch.Generator().manual_seed(2)
    cos = torch.rand(3, 5, 4, generator=g) * 0.4
    padded = torch.cat([cos, torch.full((2, 5, 4), 7.0), torch.full((1, 5, 4), -7.0)])
    valid = torch.tensor([True] * 3 + [False] * 3)
    out = pixel_tag_scores(padded, mode, valid)
    assert torch.allclose(out[:3], pixel_tag_scores(cos, mode), atol=1e-6)
    assert torch.all(out[3:] == 0)
    logits = torch.rand(4, generator=g)
    row = torch.cat([logits, torch.tensor([9.0, -9.0])])
    mask = torch.tensor([True] * 4 + [False] * 2)
    assert torch.allclose(normalize_scores(row, mode, valid=mask)[:4], normalize_scores(logits, mode), atol=1e-6)


def test_minmax_and_none_normalisation():
    logits = torch.tensor([0.1, 0.3, 0.2])
    assert torch.allclose(normalize_scores(logits, "minmax"), torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(normalize_scores(logits, "none"), logits)
    with pytest.raises(TTDError, match=r"^unknown score normalisation 'l2'; choose softmax, minmax or none$"):
        normalize_scores(logits, "l2")


def test_select_tags_threshold_argmax_and_padding():
    scores = torch.tensor([[0.2, 0.5, 0.49, 0.0], [0.1, 0.3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]).bool()
    assert select_tags(scores, 0.5, valid=valid).tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert select_tags(scores, 0.5, True, valid).tolist() == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    # a threshold at or below 0 never selects padding
    assert select_tags(scores, -1.0, valid=valid).tolist() == valid.tolist()
    assert select_tags(torch.empty(2, 0), 0.5, True).shape == (2, 0)


# --- scores on a model ----------------------------------------------------------------------
def test_scores_match_the_equations(model, images):
    selector = TagSelector(model)
    scored = selector.score_batch(images, CAPTIONS, ["pixel", "image", "text", "image-text"])
    for i, (image, caption) in enumerate(zip(images, CAPTIONS)):
        ref = _reference(model, image, caption)
        assert scored.words[i] == candidate_tags(caption)
        for name in ("pixel", "image", "text"):
            assert torch.allclose(scored.row(name, i), ref[name], atol=1e-5), name
        assert torch.allclose(scored.row("image-text", i), ref["image"] - ref["text"], atol=1e-5)
        # softmax scores of a caption sum to 1; a pixel score is the max of its per-location softmax
        assert scored.row("image", i).sum().item() == pytest.approx(1.0, abs=1e-5)
        assert scored.row("text", i).sum().item() == pytest.approx(1.0, abs=1e-5)
        pixel = scored.row("pixel", i)
        assert torch.all(pixel[:, None, None] >= ref["per_location"] - 1e-5)
        assert torch.allclose(ref["per_location"].sum(0), torch.ones(()), atol=1e-5)
        assert torch.all(scored.scores["pixel"][i, len(scored.words[i]):] == 0)


def test_template_prompts_each_tag(model, images):
    template = "a photo of a {}."
    scored = TagSelector(model, scorer="image", template=template).score_batch(images[:1], CAPTIONS[:1])
    assert torch.allclose(scored.row("image", 0), _reference(model, images[0], CAPTIONS[0], template)["image"], atol=1e-5)
    raw = TagSelector(model, scorer="image").score_batch(images[:1], CAPTIONS[:1])
    assert not torch.allclose(scored.row("image", 0), raw.row("image", 0))


@pytest.mark.parametrize("template", ["a photo of a", "{} and {}", "a {0} photo {}", "{x}"])
def test_bad_template(model, template):
    with pytest.raises(TTDError) as err:
        TagSelector(model, template=template)
    assert str(err.value) == (
        f"tag template {template!r} must contain '{{}}' exactly once and no other braces, e.g. 'a photo of a {{}}.'"
    )


@pytest.mark.parametrize("scoring", ["pixel", "image", "text", "image-text"])
@pytest.mark.parametrize("normalize", ["softmax", "minmax"])
def test_batch_equals_one_by_one(model, images, scoring, normalize):
    selector = TagSelector(model, scorer=scoring, normalize=normalize, tau=0.2, keep_argmax=True)
    batched = selector.select_batch(images, CAPTIONS, batch_size=3)
    for image, caption, result in zip(images, CAPTIONS, batched):
        single = selector.select(image, caption)
        assert [t.word for t in result] == [t.word for t in single] == candidate_tags(caption)
        assert [t.score for t in result] == pytest.approx([t.score for t in single], abs=1e-5)
        assert [t.selected for t in result] == [t.selected for t in single]
        assert any(t.selected for t in result)  # keep_argmax


def test_selection_follows_threshold(model, images):
    selector = TagSelector(model, tau=0.3)
    for tag in selector.select(images[0], CAPTIONS[0]):
        assert isinstance(tag, TagScore) and tag.selected == (tag.score >= 0.3)


def test_each_string_and_image_encoded_once(model, images, monkeypatch):
    """One encode_image call per batch; the same image twice is encoded once; every distinct
    string goes through the text tower once, cached across batches."""
    model.clear_text_cache()
    token_rows, image_rows = [], []
    encode_tokens, encode_image = model.encode_tokens, model.encode_image
    monkeypatch.setattr(model, "encode_tokens", lambda t: token_rows.append(len(t)) or encode_tokens(t))
    monkeypatch.setattr(model, "encode_image", lambda x: image_rows.append(len(x)) or encode_image(x))
    pil = Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy())
    captions = ["a dog and a cat", "the cat on a mat", "a dog on a mat"]
    selector = TagSelector(model)
    selector.score_batch([pil, pil, images[0]], captions, ["pixel", "image", "text", "image-text"])
    assert image_rows == [2]
    distinct = set(w for c in captions for w in candidate_tags(c)) | set(captions)
    assert sum(token_rows) == len(distinct)
    selector.score_batch([pil], ["a dog"], ["pixel", "text"])
    assert sum(token_rows) == len(distinct) + 1  # only the new caption "a dog"
    assert image_rows == [2, 1]


def test_image_inputs_pil_path_tensor_agree(model, tmp_path):
    pil = Image.fromarray((torch.rand(50, 40, 3) * 255).byte().numpy())
    path = tmp_path / "img.png"
    pil.save(path)
    selector = TagSelector(model)
    caption = CAPTIONS[0]
    expected = [t.score for t in selector.select(preprocess(pil, 32), caption)]
    for image in (pil, path, str(path)):
        assert [t.score for t in selector.select(image, caption)] == pytest.approx(expected, abs=1e-6)


def test_stopwords_option_in_selector(model, images):
    scored = TagSelector(model, stopwords=True).score_batch(images[:2], ["the a of", CAPTIONS[0]])
    assert scored.words == [[], ["red", "stop", "sign", "stone", "road"]]
    assert scored.row("pixel", 1).sum().item() <= 5.0


def test_long_caption_warns_and_is_truncated(model, images):
    caption = " ".join(f"word{i}" for i in range(60))
    selector = TagSelector(model, scorer="text")
    with pytest.warns(UserWarning) as record:
        scored = selector.score_batch(images[:1], [caption])
    (warning,) = [w for w in record if "text context" in str(w.message)]
    assert str(warning.message).startswith("caption 'word0 word1 word2")
    assert "tokens, more than the text context of 77: its embedding is truncated" in str(warning.message)
    assert len(scored.words[0]) == 60
    # the caption embedding is that of its first 77 tokens
    with torch.no_grad():
        tags = model.encode_tokens(tokenize(scored.words[0]))
        truncated = model.encode_tokens(tokenize([caption]))[0]
    assert torch.allclose(scored.row("text", 0), torch.softmax(100 * tags @ truncated, 0), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pixel scoring never embeds the caption: nothing to say
        TagSelector(model).score_batch(images[:1], [caption])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scorer": "global"}, "unknown tag scoring 'global'; choose from pixel, image, text, image-text"),
        ({"normalize": "l1"}, "unknown score normalisation 'l1'; choose softmax, minmax or none"),
    ],
)
def test_bad_selector_options(model, kwargs, message):
    with pytest.raises(TTDError) as err:
        TagSelector(model, **kwargs)
    assert str(err.value) == message


def test_bad_image_inputs(model, images, tmp_path):
    selector = TagSelector(model)
    cases = [
        (lambda: selector.select_batch(images[:2], CAPTIONS[:3]), "got 2 images for 3 captions; give one image per caption"),
        (lambda: selector.select_batch(torch.zeros(2, 1, 32, 32), ["a", "b"]), "an image tensor must be (3, H, W) or (B, 3, H, W), got (2, 1, 32, 32)"),
        (lambda: selector.select(torch.zeros(1, 32, 32), "a dog"), "a preprocessed image tensor must be (3, H, W), got (1, 32, 32)"),
        (lambda: selector.select_batch([torch.zeros(4, 32, 32)], ["a dog"]), "a preprocessed image tensor must be (3, H, W), got (4, 32, 32)"),
        (lambda: selector.select(3, "a dog"), "an image must be a PIL image, a path or a (3, H, W) tensor, got int"),
        (lambda: selector.select_batch([torch.zeros(3, 32, 32), torch.zeros(3, 64, 64)], ["a", "b"]),
         "images of one batch must share one size after preprocessing, got [(3, 32, 32), (3, 64, 64)]"),
        (lambda: selector.select(tmp_path / "missing.png", "a dog"), f"image not found: {tmp_path / 'missing.png'}"),
        (lambda: selector.select(images[0], "..."), "caption '...' has no words to tag (empty or only punctuation); give a caption with words"),
    ]
    for call, message in cases:
        with pytest.raises(TTDError) as err:
            call()
        assert str(err.value) == message


# --- evaluation -----------------------------------------------------------------------------
@pytest.fixture
def manifest(tmp_path):
    from ttd.data import write_manifest

    g = torch.Generator().manual_seed(3)
    rows = []
    for i, (caption, tags) in enumerate(
        [(CAPTIONS[0], ["sign", "road"]), (CAPTIONS[1], ["woman", "jacuzzi"]), (CAPTIONS[3], ["dogs", "cat", "Frisbee", "grass", "ball"])]
    ):
        Image.fromarray((torch.rand(36, 44, 3, generator=g) * 255).byte().numpy()).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": caption, "tags": tags})
    rows.append({"image": "2.png", "caption": "a dog", "tags": []})  # same image twice, no positive
    return write_manifest(rows, tmp_path / "tags.jsonl")


def test_evaluate_matches_selector_and_metrics(model, manifest, monkeypatch):
    from ttd.data import read_manifest
    from ttd.evaluate.tags import evaluate_tags, tags_table

    records = read_manifest(manifest)
    calls = []
    encode_image = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: calls.append(len(x)) or encode_image(x))
    scorers = ["pixel", "image", "text", "image-text"]
    result = evaluate_tags(records, model, scorers, selection=TagSelection(tau=0.3), batch_size=2, progress=False)
    assert calls == [2, 1]  # one call per batch for all four scorers; batch 2 holds 2.png twice
    assert result["truth_tags_not_candidates"] == 1  # "ball"
    for name in scorers:
        selector = TagSelector(model, scorer=name, tau=0.3)
        expected = TagMetrics()
        for rec, tags in zip(records, selector.select_batch([r.image for r in records], [r.caption for r in records])):
            truth = torch.tensor([t.word in {w.lower() for w in rec.tags} for t in tags])
            expected.update(torch.tensor([t.score for t in tags]), torch.tensor([t.selected for t in tags]), truth)
        assert result["rows"][name] == pytest.approx(expected.compute(), abs=1e-6)
        assert result["rows"][name]["map_captions"] == 3
    table = tags_table(result)
    assert table.splitlines()[0] == "| scoring | P | R | F1 | Acc | mAP |"
    assert [line.split(" | ")[0] for line in table.splitlines()[2:6]] == [
        "| s_pixel (Eq. 2)", "| s_image (Eq. 1)", "| s_text (Eq. 7)", "| s_image − s_text"
    ]


def test_evaluate_needs_tags(model, tmp_path):
    from ttd.data import read_manifest, write_manifest
    from ttd.evaluate.tags import evaluate_tags

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = write_manifest([{"image": "a.png", "caption": "a dog", "tags": ["dog"]}, {"image": "a.png", "caption": "a cat"}], tmp_path / "m.jsonl")
    with pytest.raises(TTDError) as err:
        evaluate_tags(read_manifest(path), model, ["pixel"], manifest=path, progress=False)
    assert str(err.value) == f"{path}:2: field 'tags' is required for this task but missing"
    path = write_manifest([{"image": "a.png", "caption": "?!", "tags": []}], tmp_path / "m.jsonl")
    with pytest.raises(TTDError) as err:
        evaluate_tags(read_manifest(path), model, ["pixel"], manifest=path, progress=False)
    assert str(err.value) == f"{path}:1: caption '?!' has no words to tag (empty or only punctuation); give a caption with words"
    with pytest.raises(TTDError, match=r"^nothing to evaluate: give at least one scorer or tagger$"):
        evaluate_tags(read_manifest(path), model, [], progress=False)
    with pytest.raises(TTDError, match=r"^scorers need a model; pass one \(or evaluate taggers only\)$"):
        evaluate_tags(read_manifest(path), None, ["pixel"], progress=False)


# --- CLI --------------------------------------------------------------------------------------
@pytest.fixture
def cli_model(model, monkeypatch):
    """Real weights cannot be downloaded here: the CLI gets the tiny random model."""
    monkeypatch.setattr(cli.common, "load_model_from_args", lambda args: model)
    return model


def test_cli_tags_json(cli_model, tmp_path, capsys):
    pil = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    pil.save(tmp_path / "i.png")
    caption = "a red stop sign on a stone road"
    argv = ["tags", str(tmp_path / "i.png"), caption, "--scoring", "pixel,image", "--tau", "0.2", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    expected = TagSelector(cli_model, scorer="image", tau=0.2).select(pil, caption)
    assert [c["word"] for c in out["candidates"]] == [t.word for t in expected]
    assert [c["scores"]["image"] for c in out["candidates"]] == pytest.approx([t.score for t in expected], abs=1e-6)
    assert out["selected"]["image"] == [t.word for t in expected if t.selected]
    assert set(out["selected"]) == {"pixel", "image"}


def test_cli_tags_text(cli_model, tmp_path, capsys):
    Image.new("RGB", (40, 40), "red").save(tmp_path / "i.png")
    assert cli.main(["tags", str(tmp_path / "i.png"), "The dog on the grass", "--stopwords", "--keep-argmax"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["word", "pixel", "image", "text", "image-text"]  # every scoring by default
    assert [line.split()[0] for line in lines[1:4]] == ["dog", "grass", "selected"]
    assert lines[3].startswith("selected (pixel, threshold 0.5): ")
    assert lines[6].startswith("selected (image-text, threshold 0.5): ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["x.png", "..."], "caption '...' has no words to tag (empty or only punctuation); give a caption with words"),
        (["x.png", "a dog", "--scoring", "pixel,global"], "unknown tag scoring 'global'; choose from pixel, image, text, image-text"),
        (["missing.png", "a dog"], "image not found: missing.png"),
    ],
)
def test_cli_tags_errors(cli_model, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert cli.main(["tags", *argv]) == 2
    assert capsys.readouterr().err == f"ttd tags: error: {message}\n"


def test_cli_eval_tags(cli_model, manifest, tmp_path, capsys):
    pytest.importorskip("spacy")
    out = tmp_path / "out"
    argv = ["eval", "tags", "--data", str(manifest), "--scorers", "pixel,image", "--taggers", "nouns",
            "--out", str(out), "--batch-size", "3", "--tau", "0.3"]
    assert cli.main(argv) == 0
    result = json.loads((out / "tags.json").read_text())
    assert list(result["rows"]) == ["pixel", "image", "nouns"]
    assert result["rows"]["nouns"]["map"] is None
    # nouns: stop sign stone road | woman time jacuzzi | dogs cat frisbee grass | dog
    # → tp 2 + 2 + 4, fp 2 + 1 + 0 + 1, fn 0 ("ball" is no candidate)
    nouns = result["rows"]["nouns"]
    assert (nouns["precision"], nouns["recall"]) == pytest.approx((8 / 12, 1.0))
    table = (out / "tags.md").read_text()
    assert table == capsys.readouterr().out.split("wrote ")[0]
    nouns_row = [line for line in table.splitlines() if line.startswith("| nouns")][0]
    assert nouns_row.endswith(" | – |")


def test_cli_eval_tags_errors(cli_model, manifest, tmp_path, capsys):
    base = ["eval", "tags", "--data", str(manifest), "--out", str(tmp_path / "o")]
    assert cli.main([*base, "--taggers", "verbs"]) == 2
    assert capsys.readouterr().err == "ttd eval: error: unknown tagger 'verbs'; choose from nouns, llm\n"
    assert cli.main([*base, "--scorers", "", "--taggers", ""]) == 2
    assert capsys.readouterr().err == "ttd eval: error: nothing to evaluate: give at least one scorer or tagger\n"
