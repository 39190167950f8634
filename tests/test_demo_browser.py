"""``ttd demo`` in a real browser: headless Chromium submits a bundled sample with a caption and
reads the tag table and the heatmap image back from the page, then sends bad input.

Skips (with the reason) only when gradio, selenium, Chromium or chromedriver is missing;
``.ci/run`` installs all four.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

pytest.importorskip("gradio", reason="gradio is not installed: pip install 'ttd[demo]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install 'ttd[dev]'")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y chromium"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="no chromedriver: apt-get install -y chromium-driver"),
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),  # gradio's own pandas calls
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,2000"]
WAIT = 60  # seconds for one result on a busy CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The demo served on a free local port, and a headless Chromium looking at it."""
    from ttd.demo import build_demo

    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        env.setenv("TTD_CACHE", str(tmp_path_factory.mktemp("cache")))
        demo = build_demo()
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                                quiet=True, ssr_mode=False)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.get(url)
            WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#run"))
            yield driver
        finally:
            driver.quit()
            demo.close()


def _text(driver, selector: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, selector).text


def _image_width(driver, selector: str) -> int:
    """naturalWidth of the image rendered inside the component (0 while none is loaded)."""
    images = driver.find_elements(By.CSS_SELECTOR, f"{selector} img")
    return max((driver.execute_script("return arguments[0].complete ? arguments[0].naturalWidth : 0", i) for i in images),
               default=0)


def test_a_bundled_sample_gives_a_tag_table_and_heatmaps(page):
    start = time.perf_counter()
    menu = page.find_element(By.CSS_SELECTOR, "#sample input")
    menu.click()
    menu.send_keys(Keys.CONTROL, "a")
    menu.send_keys("000000000")
    WebDriverWait(page, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sample ul li, ul.options li"))
    menu.send_keys(Keys.ENTER)
    caption = page.find_element(By.CSS_SELECTOR, "#caption textarea")
    WebDriverWait(page, WAIT).until(lambda d: "bear" in caption.get_attribute("value"))
    caption.clear()
    caption.send_keys("a bear and an owl")
    page.find_element(By.CSS_SELECTOR, "#run").click()
    WebDriverWait(page, WAIT).until(lambda d: "owl" in _text(d, "#tags") and _image_width(d, "#caption-heatmap") > 0)
    table = _text(page, "#tags")
    for word in ("tag", "score with TTD", "bear", "and", "owl", "yes"):
        assert word in table
    assert "selected with TTD" in _text(page, "#status") and "bear" in _text(page, "#status")
    assert _image_width(page, "#caption-heatmap") >= 384  # the heatmaps of 64 px images, enlarged
    WebDriverWait(page, WAIT).until(lambda d: _image_width(d, "#segmentation") >= 384)
    loaded = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    origin = page.current_url.rstrip("/")
    assert loaded and all(u.startswith((origin, "data:", "blob:")) for u in loaded), "the page fetched from elsewhere"
    if os.environ.get("TTD_DEMO_SCREENSHOT"):  # how docs/images/demo.png is made
        page.save_screenshot(os.environ["TTD_DEMO_SCREENSHOT"])
    print(f"browser round trip: {time.perf_counter() - start:.1f} s")


def test_an_empty_caption_gets_a_message_on_the_page(page):
    caption = page.find_element(By.CSS_SELECTOR, "#caption textarea")
    caption.clear()
    caption.send_keys(" ")
    page.find_element(By.CSS_SELECTOR, "#run").click()
    WebDriverWait(page, WAIT).until(lambda d: "type a caption" in _text(d, "#status"))
    assert _text(page, "#status") == "Error: type a caption (or class names) to look for in the image"
    assert "Traceback" not in page.page_source


def test_an_unreadable_upload_gets_a_message_on_the_page(page, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    page.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(broken))
    WebDriverWait(page, WAIT).until(lambda d: "cannot read image" in _text(d, "#status"))
    assert _text(page, "#status").startswith("Error: cannot read image")
    assert "Traceback" not in page.page_source
