"""The hostile-upload battery through the real page: Voilà as served, headless Chromium, real file picks."""
from __future__ import annotations

import time

import pytest

from conftest import UI_TIMEOUT_MS, open_app, upload
from hostile_files import hostile_files
from smilekit.app.ui import MAX_FILES_PER_UPLOAD

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _answered(page, names: list[str]) -> list[str]:
    """The names (first 40 characters) not yet answered by a photo panel or a message."""
    text = page.inner_text(".smilekit-app")
    return [n for n in names if n[:40] not in text]


def test_every_hostile_upload_gets_a_clear_answer(browser, server, tmp_path, celeba_dir):
    from playwright.sync_api import expect

    face_jpeg = (celeba_dir / "img" / "0.jpg").read_bytes()
    battery = hostile_files(face_jpeg)
    paths = []
    for name, data in battery.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    page = open_app(browser, server, 1280)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for start in range(0, len(paths), MAX_FILES_PER_UPLOAD):
        batch = paths[start:start + MAX_FILES_PER_UPLOAD]
        upload(page, batch)
        deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
        while (missing := _answered(page, [p.name for p in batch])) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert missing == [], f"no answer on the page for {missing}"
        body = page.inner_text("body")
        assert "Traceback" not in body and "went wrong" not in body
    assert dialogs == []  # no file name or content ran as script

    # the page still works: a plain photo gets its card
    cards = page.locator(".smilekit-face")
    before = cards.count()
    upload(page, [celeba_dir / "img" / "0.jpg"])
    expect(cards).to_have_count(before + 1)
    page.close()


def test_too_many_files_are_refused_in_the_browser(browser, server, tmp_path, celeba_dir):
    from playwright.sync_api import expect

    face = (celeba_dir / "img" / "0.jpg").read_bytes()
    paths = []
    for n in range(MAX_FILES_PER_UPLOAD + 1):
        paths.append(tmp_path / f"face-{n}.jpg")
        paths[-1].write_bytes(face)
    page = open_app(browser, server, 390)
    upload(page, paths)
    expect(page.locator(".smilekit-error")).to_contain_text(f"upload at most {MAX_FILES_PER_UPLOAD} at a time")
    assert page.locator(".smilekit-photo").count() == 0
    page.close()
