"""The app as a person uses it: Voilà started like scripts/serve, driven in headless Chromium."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smilekit.feedback import FeedbackStore
from test_ui import COLLAGE_IDS, dev_model, make_collage

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: generous limits for a loaded 2-core machine; they bound waits, they are not performance targets
START_TIMEOUT_S = 180
UI_TIMEOUT_MS = 90_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory, celeba_dir) -> dict[str, Path]:
    """A one-face photo, a four-face collage, a file that is not an image, and a 15 MB one-face photo."""
    folder = tmp_path_factory.mktemp("uploads")
    out = {"face": celeba_dir / "img" / "0.jpg", "collage": folder / "group.jpg",
           "not_image": folder / "holiday.jpg", "big": folder / "big.png", "too_big": folder / "panorama.jpg"}
    with out["too_big"].open("wb") as f:  # 60 MB, over the 50 MB limit (sparse: costs no disk)
        f.truncate(60 * 2**20)
    out["collage"].write_bytes(make_collage(celeba_dir))
    out["not_image"].write_text("this is a text file, not a photo")
    # the face enlarged to 7 MP with sensor-like noise, so PNG cannot shrink it
    face = Image.open(out["face"]).convert("RGB").resize((2400, 2940), Image.BICUBIC)
    noisy = np.asarray(face).astype(np.int16) + np.random.default_rng(0).integers(-20, 21, size=(2940, 2400, 3))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out["big"], format="PNG", compress_level=1)
    assert out["big"].stat().st_size > 12 * 2**20  # above tornado's default 10 MiB websocket cap
    return out


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """scripts/serve on a free loopback port with a temporary database and Jupyter state."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed at /usr/bin/chromium (apt-get install chromium); browser tests skipped")
    pytest.importorskip("playwright.sync_api")
    model = dev_model(request, tmp_path_factory)
    state = tmp_path_factory.mktemp("voila-state")
    port = _free_port()
    db_url = f"sqlite:///{state / 'feedback.db'}"
    env = dict(os.environ, SMILEKIT_PORT=str(port), SMILEKIT_DB_URL=db_url, SMILEKIT_MODEL=str(model),
               SMILEKIT_MODELS_DIR=str(state / "models"), SMILEKIT_VENV=str(Path(os.sys.executable).parent.parent))
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        (state / var).mkdir()
        env[var] = str(state / var)
    log = (state / "voila.log").open("wb")
    proc = subprocess.Popen([str(ROOT / "scripts" / "serve")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"Voilà exited with {proc.returncode}: {(state / 'voila.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"Voilà did not answer at {url}: {(state / 'voila.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield {"url": url, "db_url": db_url, "log": state / "voila.log"}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ["SMILEKIT_SCREENSHOTS"]) if os.environ.get("SMILEKIT_SCREENSHOTS") else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open_app(browser, server, width: int):
    page = browser.new_page(viewport={"width": width, "height": 2400})
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(server["url"])
    page.wait_for_selector(".smilekit-upload")
    return page


def _upload(page, paths) -> None:
    with page.expect_file_chooser() as chooser:
        page.click(".smilekit-upload")
    chooser.value.set_files([str(p) for p in paths])


def _wait_for_rows(db_url: str, check, what: str) -> list[dict]:
    store = FeedbackStore(db_url)
    try:
        deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
        while True:
            rows = store.rows()
            if check(rows):
                return rows
            if time.monotonic() > deadline:
                pytest.fail(f"database never showed {what}: {rows}")
            time.sleep(0.2)
    finally:
        store.close()


def test_upload_label_and_feedback_desktop(browser, server, files, screenshots):
    from playwright.sync_api import expect

    page = _open_app(browser, server, 1280)
    _upload(page, [files["face"], files["collage"]])
    cards = page.locator(".smilekit-face")
    expect(cards).to_have_count(1 + len(COLLAGE_IDS))
    for text in cards.all_inner_texts():
        assert "Smiling" in text or "Not smiling" in text
        assert "%" in text

    cards.nth(0).locator(".smilekit-correct").click()
    expect(cards.nth(0)).to_contain_text("Saved: correct")
    cards.nth(1).locator(".smilekit-incorrect").click()
    expect(cards.nth(1)).to_contain_text("Saved: incorrect")
    rows = _wait_for_rows(server["db_url"], lambda r: len(r) == 2, "two verdicts")
    assert sorted(r["verdict"] for r in rows) == ["correct", "incorrect"]
    assert all(r["crop_png"] is None for r in rows)  # consent not given

    # changing one's mind updates the row instead of adding one
    cards.nth(0).locator(".smilekit-incorrect").click()
    rows = _wait_for_rows(server["db_url"], lambda r: len(r) == 2 and all(x["verdict"] == "incorrect" for x in r),
                          "the changed verdict")
    expect(page.locator(".smilekit-metrics")).to_contain_text("Feedback given: 2")

    # a file that is not a photo: a plain message, and the app keeps working
    _upload(page, [files["not_image"]])
    error = page.locator(".smilekit-error")
    expect(error).to_contain_text("holiday.jpg")
    expect(error).to_contain_text("not an image")
    assert "Traceback" not in page.inner_text("body")
    _upload(page, [files["face"]])
    expect(cards).to_have_count(2 + len(COLLAGE_IDS))
    expect(error).to_have_count(0)

    # over the size limit: refused in the browser with a message, and the connection survives
    _upload(page, [files["too_big"]])
    expect(error).to_contain_text("panorama.jpg")
    expect(error).to_contain_text("over the limit of 50.0 MB")
    _upload(page, [files["collage"]])
    expect(cards).to_have_count(2 + 2 * len(COLLAGE_IDS))
    expect(error).to_have_count(0)
    page.screenshot(path=str(screenshots / "app-1280.png"), full_page=True)
    page.close()


def test_phone_layout_and_big_upload(browser, server, files, screenshots):
    from playwright.sync_api import expect

    page = _open_app(browser, server, 390)
    _upload(page, [files["collage"]])
    cards = page.locator(".smilekit-face")
    expect(cards).to_have_count(len(COLLAGE_IDS))
    for i in range(len(COLLAGE_IDS)):
        box = cards.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, f"face card {i} sticks out of a 390 px screen: {box}"
    for selector in (".smilekit-app", ".smilekit-metrics"):
        box = page.locator(selector).bounding_box()
        assert box["x"] + box["width"] <= 390, f"{selector} is wider than the screen: {box}"
    page.screenshot(path=str(screenshots / "app-390.png"), full_page=True)

    # above Voilà's default 10 MiB websocket cap: works only because voila.json raises it
    _upload(page, [files["big"]])
    expect(page.locator(".smilekit-photo")).to_have_count(2)
    expect(page.locator(".smilekit-photo").first).to_contain_text("big.png")
    expect(page.locator(".smilekit-photo").first).to_contain_text("1 face found")
    expect(cards).to_have_count(len(COLLAGE_IDS) + 1)
    page.close()
