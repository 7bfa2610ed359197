"""Camera mode in headless Chromium with a fake camera playing real faces: a smiling CelebA test photo, then
a not-smiling one, three seconds each (a YUV4MPEG2 video built here, see benchmarks/bench_camera.py).

The meter must follow the video, the smile shutter fire on the smiling stretch, feedback on the captured
face be stored as from the camera, switching the mode off stop the camera, and a refused or missing
camera give a clear message.
"""
from __future__ import annotations

import time

import pytest

from smilekit.store.feedback import FeedbackStore

from conftest import CHROMIUM, CHROMIUM_ARGS, load_benchmark, open_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
bench = load_benchmark("bench_camera")


@pytest.fixture(scope="module")
def fake_camera(celeba_dir, model_path, tmp_path_factory):
    from smilekit.predict import Predictor

    photos = bench.pick_photos(Predictor(model_path), celeba_dir)
    return bench.write_fake_camera(tmp_path_factory.mktemp("fake-camera") / "smile-then-not.y4m", photos)


def launch(browser, extra_args: list[str]):
    """Another Chromium from the session's Playwright, with extra flags."""
    return browser.browser_type.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + extra_args)


@pytest.fixture(scope="module")
def camera_browser(browser, fake_camera):
    """A Chromium whose camera plays the fake video and is allowed without asking."""
    chromium = launch(browser, bench.fake_camera_args(fake_camera))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def camera_page(camera_browser, server):
    """The app on a desktop, camera mode on."""
    page = open_app(camera_browser, server, 1280)
    bench.start_camera(page)
    yield page
    page.close()


def test_meter_follows_the_video(camera_page, server):
    first = camera_page.locator(".smilekit-meter").first.get_attribute("data-frame")
    time.sleep(2 * 2 * bench.STRETCH_S + 1)  # the video's loop twice
    samples = [s for s in bench.trace(camera_page) if s["p"] is not None]
    by_stretch = bench.meter_by_stretch(samples)
    assert len(by_stretch[True]) >= 20 and len(by_stretch[False]) >= 20, by_stretch
    smiling, not_smiling = sorted(by_stretch[True]), sorted(by_stretch[False])
    assert smiling[len(smiling) // 2] > 0.8 and not_smiling[len(not_smiling) // 2] < 0.2
    assert sum(p >= 0.5 for p in smiling) >= 0.8 * len(smiling) and sum(p < 0.5 for p in not_smiling) >= 0.8 * len(not_smiling)
    assert int(samples[-1]["frame"]) > int(first) + 10  # the meter keeps being updated
    # one frame at a time: the page never gets ahead of the kernel's answers
    assert all(s["sent"] - s["frame"] <= 2 for s in samples), [(s["sent"], s["frame"]) for s in samples if s["sent"] - s["frame"] > 2]
    assert camera_page.locator(".smilekit-meter").count() == 1  # one face, one meter
    loaded = camera_page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith((server.url, "data:", "blob:")) for url in loaded)  # no CDN, camera module included


def test_shutter_fires_on_the_smile_and_feedback_is_stored_as_camera(camera_page, server, screenshots):
    bench.shutter_delay(camera_page)  # armed on the not-smiling stretch; waits for the picture
    fired = [s for s in bench.trace(camera_page) if s["fired"]]
    assert fired and fired[0]["smiling"]  # the first sample after the shutter fired still shows the smiling face
    shutter = camera_page.eval_on_selector(".smilekit-shutter select", "s => s.options[s.selectedIndex].text")
    assert shutter.replace("\xa0", " ") == "Smile shutter: off"  # one picture per arming (ipywidgets shows spaces as nbsp)
    panel = camera_page.locator(".smilekit-photo").filter(has=camera_page.locator(".smilekit-capture")).first
    assert "Camera picture" in panel.inner_text()
    card = panel.locator(".smilekit-face")
    assert card.count() == 1 and "Smiling" in card.inner_text() and "Not smiling" not in card.inner_text()
    assert panel.locator("a.smilekit-download").get_attribute("href").startswith("data:image/jpeg;base64,")
    card.locator(".smilekit-correct").click()
    card.filter(has_text="Saved: correct").wait_for()
    camera_page.screenshot(path=str(screenshots / "app-camera-1280.png"), full_page=True)
    store = FeedbackStore(server.db_url)
    rows = store.rows()
    store.close()
    assert [(r["source"], r["verdict"], r["true_smiling"]) for r in rows] == [("camera", "correct", True)]


def test_switching_the_mode_off_stops_the_camera(camera_page):
    live = "(() => { const v = document.querySelector('.smilekit-camera-view video'); " \
           "return !!(v && v.srcObject && v.srcObject.getTracks().some(t => t.readyState === 'live')); })()"
    assert camera_page.evaluate(live)
    camera_page.click(".smilekit-camera")
    camera_page.wait_for_function(f"!{live}")
    camera_page.wait_for_selector(".smilekit-camera-panel", state="hidden")
    assert camera_page.locator(".smilekit-meter").count() == 0
    camera_page.click(".smilekit-camera")  # and on again
    camera_page.wait_for_function(live)
    camera_page.wait_for_selector(".smilekit-meter")


def test_refused_permission_says_so(browser, server):
    chromium = launch(browser, ["--use-fake-device-for-media-stream"])  # a camera, but the permission prompt is refused
    try:
        page = open_app(chromium, server, 390)
        page.click(".smilekit-camera")
        message = page.locator(".smilekit-camera-message.smilekit-camera-error")
        message.wait_for()
        assert "Camera permission was refused" in message.inner_text()
        assert page.locator(".smilekit-meter").count() == 0
    finally:
        chromium.close()


def test_no_camera_says_so(browser, server):
    page = open_app(browser, server, 390)  # the session's Chromium has no camera at all
    page.click(".smilekit-camera")
    message = page.locator(".smilekit-camera-message.smilekit-camera-error")
    message.wait_for()
    assert "No camera was found" in message.inner_text()
    page.locator(".smilekit-upload").wait_for()  # uploading still works
    page.close()


def test_phone_fits_and_switches_to_the_back_camera(camera_browser, server, screenshots):
    page = open_app(camera_browser, server, 390)
    try:
        bench.start_camera(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert page.locator(".smilekit-camera-view video").evaluate("v => v.classList.contains('smilekit-mirrored')")  # the front camera
        page.click(".smilekit-flip")
        page.wait_for_function("!document.querySelector('.smilekit-camera-view video').classList.contains('smilekit-mirrored')")
        frame = int(page.wait_for_selector(".smilekit-meter").get_attribute("data-frame"))
        page.wait_for_function(f"Number((document.querySelector('.smilekit-meter') || {{dataset: {{}}}}).dataset.frame) > {frame + 5}")
        meter = page.locator(".smilekit-meter").bounding_box()
        assert meter["x"] >= 0 and meter["x"] + meter["width"] <= 390
        page.screenshot(path=str(screenshots / "app-camera-390.png"))
    finally:
        page.close()
