"""The app as a person uses it: Voilà started like scripts/serve, driven in headless Chromium."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smilekit.store.feedback import FeedbackStore
from smilekit.app.ui import MAX_FILE_BYTES
from conftest import COLLAGE_IDS, UI_TIMEOUT_MS, group_photo, make_collage, open_app, upload

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def files(tmp_path_factory, celeba_dir) -> dict[str, Path]:
    """A one-face photo, a four-face collage, a 30-face class photo, a file that is not an image, and a 15 MB one-face photo."""
    folder = tmp_path_factory.mktemp("uploads")
    out = {"face": celeba_dir / "img" / "0.jpg", "collage": folder / "group.jpg",
           "not_image": folder / "holiday.jpg", "big": folder / "big.png", "too_big": folder / "panorama.jpg"}
    with out["too_big"].open("wb") as f:  # over the limit per photo (sparse: costs no disk)
        f.truncate(MAX_FILE_BYTES + 2**20)
    out["collage"].write_bytes(make_collage(celeba_dir))
    out["class"] = folder / "class.jpg"
    out["class"].write_bytes(group_photo(celeba_dir, 6, 5))  # 30 faces
    out["not_image"].write_text("this is a text file, not a photo")
    # the face enlarged to 7 MP with sensor-like noise, so PNG cannot shrink it
    face = Image.open(out["face"]).convert("RGB").resize((2400, 2940), Image.BICUBIC)
    noisy = np.asarray(face).astype(np.int16) + np.random.default_rng(0).integers(-20, 21, size=(2940, 2400, 3))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out["big"], format="PNG", compress_level=1)
    assert out["big"].stat().st_size > 12 * 2**20  # above tornado's default 10 MiB websocket cap
    return out


@pytest.fixture(autouse=True)
def _patient_expect():
    """Checks on the page wait as long as page actions do (a 12 MB upload on a busy 2-core machine takes over 5 s)."""
    expect = pytest.importorskip("playwright.sync_api").expect
    expect.set_options(timeout=UI_TIMEOUT_MS)
    yield
    expect.set_options(timeout=5_000)


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

    page = open_app(browser, server, 1280)
    upload(page, [files["face"], files["collage"]])
    cards = page.locator(".smilekit-face")
    expect(cards).to_have_count(1 + len(COLLAGE_IDS))
    for text in cards.all_inner_texts():
        assert "Smiling" in text or "Not smiling" in text
        assert "%" in text

    cards.nth(0).locator(".smilekit-correct").click()
    expect(cards.nth(0)).to_contain_text("Saved: correct")
    cards.nth(1).locator(".smilekit-incorrect").click()
    expect(cards.nth(1)).to_contain_text("Saved: incorrect")
    rows = _wait_for_rows(server.db_url, lambda r: len(r) == 2, "two verdicts")
    assert sorted(r["verdict"] for r in rows) == ["correct", "incorrect"]
    assert all(r["crop_png"] is None for r in rows)  # consent not given

    # changing one's mind updates the row instead of adding one
    cards.nth(0).locator(".smilekit-incorrect").click()
    rows = _wait_for_rows(server.db_url, lambda r: len(r) == 2 and all(x["verdict"] == "incorrect" for x in r),
                          "the changed verdict")
    expect(page.locator(".smilekit-metrics")).to_contain_text("Feedback given: 2")

    # a file that is not a photo: a plain message, and the app keeps working
    upload(page, [files["not_image"]])
    error = page.locator(".smilekit-error")
    expect(error).to_contain_text("holiday.jpg")
    expect(error).to_contain_text("not an image")
    assert "Traceback" not in page.inner_text("body")
    upload(page, [files["face"]])
    expect(cards).to_have_count(2 + len(COLLAGE_IDS))
    expect(error).to_have_count(0)

    # over the size limit: refused in the browser with a message, and the connection survives
    upload(page, [files["too_big"]])
    expect(error).to_contain_text("panorama.jpg")
    expect(error).to_contain_text(f"over the limit of {MAX_FILE_BYTES >> 20}.0 MB")
    upload(page, [files["collage"]])
    expect(cards).to_have_count(2 + 2 * len(COLLAGE_IDS))
    expect(error).to_have_count(0)
    page.screenshot(path=str(screenshots / "app-1280.png"), full_page=True)
    page.close()


def test_phone_layout_and_bigupload(browser, server, files, screenshots):
    from playwright.sync_api import expect

    page = open_app(browser, server, 390)
    upload(page, [files["collage"]])
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
    upload(page, [files["big"]])
    expect(page.locator(".smilekit-photo")).to_have_count(2)
    expect(page.locator(".smilekit-photo").first).to_contain_text("big.png")
    expect(page.locator(".smilekit-photo").first).to_contain_text("1 face found")
    expect(cards).to_have_count(len(COLLAGE_IDS) + 1)
    page.close()


def test_group_photo_on_a_phone(browser, server, files, screenshots):
    """30 faces on a 390 px screen: every card and button fits and can be tapped, and the last face takes a verdict."""
    import re

    from playwright.sync_api import expect

    page = open_app(browser, server, 390)
    start = time.monotonic()
    upload(page, [files["class"]])
    summary = page.locator(".smilekit-summary")
    expect(summary).to_contain_text("faces found")
    count = int(re.match(r"(\d+) faces found", summary.inner_text()).group(1))
    cards = page.locator(".smilekit-face")
    expect(cards).to_have_count(count)
    expect(cards.last.locator("img")).to_be_visible()
    print(f"group photo, {count} faces: upload to cards {time.monotonic() - start:.2f} s (2 shared cores)")
    assert count >= 24
    assert re.search(r"(\d+ of \d+ smiling|everyone is smiling|no one is smiling)$", summary.inner_text())
    for i in range(count):
        card = cards.nth(i)
        box = card.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, f"face card {i} sticks out of a 390 px screen: {box}"
        assert f"Face {i + 1}" in card.inner_text()  # the grid reads in the photo's numbers
        for button in (".smilekit-correct", ".smilekit-incorrect"):
            size = card.locator(button).bounding_box()
            assert size["height"] >= 32 and size["x"] + size["width"] <= 390, f"{button} of card {i} is hard to tap: {size}"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing scrolls sideways
    assert page.locator(".smilekit-photo img").first.bounding_box()["width"] <= 390
    page.screenshot(path=str(screenshots / "app-group-390.png"), full_page=True)

    before = len(_wait_for_rows(server.db_url, lambda r: True, "the database"))
    cards.last.locator(".smilekit-correct").click()
    expect(cards.last).to_contain_text("Saved: correct")
    rows = _wait_for_rows(server.db_url, lambda r: len(r) == before + 1, "the verdict on the last face")
    assert rows[-1]["verdict"] == "correct"
    page.close()


def test_locked_database_is_said_quickly_and_the_click_is_kept(browser, server, files):
    """Another writer holds the SQLite lock: the card says so within seconds, and the verdict is saved later."""
    import sqlite3

    from playwright.sync_api import expect

    page = open_app(browser, server, 1280)
    upload(page, [files["face"]])
    card = page.locator(".smilekit-face").last
    expect(card).to_contain_text("Was the model right?")
    before = len(_wait_for_rows(server.db_url, lambda r: True, "the database"))
    lock = sqlite3.connect(server.db_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        card.locator(".smilekit-correct").click()
        expect(card).to_contain_text("busy")
        print(f"locked database: message after {time.monotonic() - start:.1f} s (2 shared cores)")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    page.locator(".smilekit-app .widget-button", has_text="Refresh").click()  # saves the kept click
    expect(card).to_contain_text("Saved: correct")
    _wait_for_rows(server.db_url, lambda r: len(r) == before + 1, "the kept verdict")
    page.close()
