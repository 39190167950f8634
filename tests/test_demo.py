"""``ttd demo`` without a browser: what the page offers, what it computes, and its messages."""

from __future__ import annotations

import sys

import pytest
from PIL import Image

from ttd.cli import main
from ttd.demo import analyse, embedded_adapters, embedded_models, embedded_samples
from ttd.errors import TTDError
from ttd.method.tags import candidate_tags

ADAPTER = "miniworld/ttd_adapter"
DEFAULT_ADAPTER = "miniworld/ttd_adapter_infonce"  # the default model's (miniworld-clip)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTD_CACHE", str(tmp_path / "cache"))


def test_choices_come_from_the_embedded_registry():
    assert embedded_models()[:2] == ["miniworld-clip", "miniworld"]  # the quickstart's default first
    adapters = embedded_adapters("miniworld")
    assert ADAPTER in adapters and adapters[ADAPTER].is_file()
    assert embedded_adapters("ViT-B-16/openai") == {}  # shipped adapters belong to their base only
    samples = embedded_samples()
    assert len(samples) == 32 and all(s.image.is_file() and s.caption for s in samples)


def test_a_sample_before_and_after_ttd():
    sample = embedded_samples()[0]  # "one weird bear and one odd owl around an odd guitar and that house, …"
    result = analyse(sample.image, sample.caption, model="miniworld", adapter=embedded_adapters("miniworld")[ADAPTER])
    assert result.stages == ["without TTD", "with TTD"]
    assert result.words == candidate_tags(sample.caption)
    assert result.headers() == ["tag", "score without TTD", "selected without TTD", "score with TTD", "selected with TTD"]
    rows = {row[0]: row for row in result.table()}
    assert rows["bear"][2] == rows["bear"][4] == "yes"  # depicted: selected by both
    assert rows["weird"][2] == rows["weird"][4] == ""  # names nothing: selected by neither
    assert all(0.0 <= row[1] <= 1.0 for row in rows.values())
    assert "selected with TTD: **" in result.summary() and "bear" in result.summary()
    for figure in (result.chart, result.caption_heatmaps, result.tag_heatmaps, result.overlay):
        assert isinstance(figure, Image.Image) and figure.width >= 384


def test_the_default_model_takes_its_own_readout_and_adapter():
    sample = embedded_samples()[0]
    result = analyse(sample.image, sample.caption, adapter=embedded_adapters("miniworld-clip")[DEFAULT_ADAPTER])
    assert result.stages == ["without TTD", "with TTD"]  # the adapter loaded: same base, its readout (clip)
    assert result.caption_heatmaps.width >= 384


def test_class_names_alone_segment_without_tags():
    sample = embedded_samples()[0]
    result = analyse(sample.image, "", "bear, owl")
    assert result.stages == ["without TTD"] and result.words == [] and result.table() == []
    assert result.chart is None and result.caption_heatmaps is None
    assert result.overlay.width >= 384 and "class names" in result.summary()


def test_bad_input_is_one_clear_line(tmp_path):
    sample = embedded_samples()[0]
    with pytest.raises(TTDError, match="type a caption"):
        analyse(sample.image, "   ", "")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(TTDError, match="cannot read image"):
        analyse(broken, "a pig")
    huge = tmp_path / "huge.png"
    Image.new("1", (6000, 5000)).save(huge)
    with pytest.raises(TTDError, match="over the limit"):
        analyse(huge, "a pig")
    with pytest.raises(TTDError, match="has no words to tag"):
        analyse(sample.image, "?!")


def test_uploads_are_brought_to_the_models_input_size(tmp_path):
    photo = tmp_path / "wide.png"
    Image.new("RGB", (1000, 500), (200, 40, 40)).save(photo)
    result = analyse(photo, "a red apple")
    assert result.image.size == (128, 64)  # short side at the mini CLIP's 64 px


def test_without_gradio_the_command_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio → ImportError
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ttd demo: error: the demo needs gradio: pip install 'ttd[demo]'"


def test_ten_concurrent_requests_give_the_serial_answer():
    """The page serves requests in threads that share the cached models (and their text caches)."""
    from concurrent.futures import ThreadPoolExecutor

    sample = embedded_samples()[1]
    adapter = embedded_adapters("miniworld")[ADAPTER]
    expected = analyse(sample.image, sample.caption, model="miniworld", adapter=adapter).table()
    with ThreadPoolExecutor(10) as pool:
        tables = list(pool.map(lambda _: analyse(sample.image, sample.caption, model="miniworld", adapter=adapter).table(),
                               range(10)))
    assert tables == [expected] * 10
