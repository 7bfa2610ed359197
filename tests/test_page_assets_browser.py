"""The served page itself: every asset from the server (no CDN), and a visible "Connection lost" banner.

scripts/serve renders the app with the smilekit Voilà template (share/jupyter/voila/templates/smilekit).
Times to the banner are printed (run with -s to see them); the asserted bounds are generous because the
test machine is loaded, the target is 2 s.
"""
from __future__ import annotations

import json
import os
import signal
import time
from urllib.parse import urlsplit

import pytest

from conftest import UI_TIMEOUT_MS, VoilaServer, kernel_process, page_kernel_id, upload

pytestmark = pytest.mark.browser

BANNER = ".smilekit-connection-lost"
BANNER_TEXT = "Connection lost \u2014 reload the page to continue"
#: bounds on a loaded 2-core machine; the measured times are printed
KERNEL_DEATH_BOUND_S = 10
SERVER_DEATH_BOUND_S = 10
SERVER_HUNG_BOUND_S = 30


class Visit:
    """A page on the app that records every request, websocket and failed response it makes."""

    def __init__(self, browser, server: VoilaServer, width: int, height: int = 900):
        self.host = urlsplit(server.url).netloc
        self.requests: list[str] = []
        self.bad_responses: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.page.set_default_timeout(UI_TIMEOUT_MS)
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("websocket", lambda ws: self.requests.append(ws.url))
        self.page.on("response", lambda r: self.bad_responses.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        self.page.goto(server.url)
        self.page.wait_for_selector(".smilekit-upload")

    def foreign(self) -> list[str]:
        """Requests to any host but the server (data: and blob: URLs never leave the browser)."""
        return [u for u in self.requests if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != self.host]

    def kernel_id(self) -> str:
        return page_kernel_id(self.page)

    def clock(self) -> tuple[float, float]:
        """(page's performance.now() in s, this process's monotonic time in s), taken together."""
        before = time.monotonic()
        page_now = self.page.evaluate("performance.now()") / 1000
        return page_now, (before + time.monotonic()) / 2

    def wait_for_banner(self, clock: tuple[float, float], event_at: float, bound_s: float) -> float:
        """Seconds from the event (monotonic ``event_at``) to the page declaring the connection lost."""
        self.page.wait_for_function("window.smilekitConnection && window.smilekitConnection.lost", polling=50,
                                    timeout=bound_s * 1000)
        lost_at = self.page.evaluate("window.smilekitConnection.lostAt") / 1000
        self.page.wait_for_selector(BANNER, state="visible", timeout=5000)
        return (lost_at - clock[0]) - (event_at - clock[1])


def _check_banner(page, width: int) -> None:
    banner = page.locator(BANNER)
    assert banner.inner_text().count(BANNER_TEXT) == 1, banner.inner_text()
    button = page.locator(f"{BANNER} .smilekit-reload")
    box = button.bounding_box()
    assert box["height"] >= 40, f"reload button too small to tap: {box}"
    card = page.locator(".smilekit-connection-lost-card").bounding_box()
    assert card["x"] >= 0 and card["x"] + card["width"] <= width, f"banner sticks out of a {width} px screen: {card}"
    assert card["y"] >= 0 and card["y"] + card["height"] <= page.viewport_size["height"], f"banner off screen: {card}"
    on_top = page.evaluate("([x, y]) => document.elementFromPoint(x, y).classList.contains('smilekit-reload')",
                           [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
    assert on_top, "something covers the reload button"


def test_every_asset_comes_from_the_server_and_icons_load(browser, server, celeba_dir):
    from playwright.sync_api import expect

    visit = Visit(browser, server, 1280)
    page = visit.page
    upload(page, [celeba_dir / "img" / "0.jpg"])  # face cards bring the "check" and "times" buttons
    expect(page.locator(".smilekit-face")).to_have_count(1)
    page.evaluate("document.fonts.ready")
    page.wait_for_load_state("networkidle")

    assert visit.foreign() == [], f"the page asked other hosts: {visit.foreign()}"
    assert visit.bad_responses == [], f"the server refused some of the page's requests: {visit.bad_responses}"

    faces = page.evaluate("[...document.fonts].filter(f => f.family.replace(/\"/g, '').startsWith('Font Awesome'))"
                          ".map(f => [f.family.replace(/\"/g, ''), f.weight, f.status])")
    assert any(status == "loaded" for _, _, status in faces), f"no FontAwesome font loaded: {faces}"
    for selector, icon in ((".smilekit-correct", "check"), (".smilekit-incorrect", "times"), (".smilekit-app", "refresh")):
        glyph = page.evaluate(
            """([selector, icon]) => {
                 const i = document.querySelector(`${selector} i.fa-${icon}`);
                 if (!i) return null;
                 const before = getComputedStyle(i, '::before');
                 const family = before.fontFamily.replace(/"/g, '');
                 return {family, content: before.content,
                         loaded: document.fonts.check(`${before.fontWeight} 16px "${family}"`)
                                 && [...document.fonts].some(f => f.family.replace(/"/g, '') === family
                                                                  && f.status === 'loaded')};
               }""", [selector, icon])
        assert glyph is not None, f"no fa-{icon} icon in {selector}"
        assert glyph["family"].startswith("Font Awesome"), glyph
        assert glyph["content"] not in ("none", "normal", '""'), f"fa-{icon} has no glyph: {glyph}"
        assert glyph["loaded"], f"fa-{icon}'s font did not load: {glyph}"
    page.close()


def test_no_banner_when_the_websocket_reconnects_and_legacy_status_messages(browser, server, celeba_dir):
    """A dropped websocket the client reopens to the same kernel is not a lost connection; status messages
    in the legacy JSON protocol are read like binary ones, and only a restarting/dead kernel counts."""
    from playwright.sync_api import expect

    visit = Visit(browser, server, 1280)
    page = visit.page
    kernel_id = visit.kernel_id()
    page.evaluate("id => { window.droppedSocket = window.smilekitConnection.kernels[id].sockets[0];"
                  " window.droppedSocket.close(); }", kernel_id)
    page.wait_for_function("id => { const k = window.smilekitConnection.kernels[id];"
                           " return k.open === 1 && k.sockets.length === 1 && k.sockets[0] !== window.droppedSocket; }",
                           arg=kernel_id, polling=100)
    upload(page, [celeba_dir / "img" / "0.jpg"])
    expect(page.locator(".smilekit-face")).to_have_count(1)
    page.locator(".smilekit-face .smilekit-correct").click()
    expect(page.locator(".smilekit-face")).to_contain_text("Saved: correct")
    page.wait_for_timeout(1500)  # past the close check's confirmation
    assert page.evaluate("window.smilekitConnection.lost") is False
    assert page.locator(BANNER).count() == 0

    def legacy(msg_type: str, content: dict) -> None:
        message = {"header": {"msg_type": msg_type, "msg_id": "x", "session": "s", "username": "", "date": "",
                              "version": "5.4"}, "parent_header": {}, "metadata": {}, "content": content,
                   "buffers": [], "channel": "iopub"}
        page.evaluate("""([id, text]) => window.smilekitConnection.kernels[id].sockets[0]
                           .dispatchEvent(new MessageEvent('message', {data: text}))""", [kernel_id, json.dumps(message)])

    page.on("pageerror", lambda error: None)  # Voilà's own client cannot read these frames; only the watcher matters
    legacy("status", {"execution_state": "busy"})
    legacy("stream", {"name": "stdout", "text": '"msg_type": "status", "execution_state": "dead"'})
    page.wait_for_timeout(300)
    assert page.evaluate("window.smilekitConnection.lost") is False
    legacy("status", {"execution_state": "dead"})
    page.wait_for_selector(BANNER, state="visible", timeout=5000)
    assert page.evaluate("window.smilekitConnection.reason") == "kernel dead"
    page.close()


def test_kernel_death_shows_banner_and_reload_recovers(browser, server, celeba_dir, screenshots):
    from playwright.sync_api import expect

    visit = Visit(browser, server, 390, 844)
    page = visit.page
    kernel = kernel_process(server, visit.kernel_id())
    assert kernel is not None, "the page's kernel process was not found under the server"
    assert page.locator(BANNER).count() == 0
    clock = visit.clock()
    kernel.kill()  # SIGKILL: the kernel process dies; the server restarts it without the app's widgets
    killed_at = time.monotonic()
    elapsed = visit.wait_for_banner(clock, killed_at, KERNEL_DEATH_BOUND_S)
    reason = page.evaluate("window.smilekitConnection.reason")
    print(f"\nkernel killed -> banner in {elapsed:.2f} s ({reason})")
    assert elapsed < KERNEL_DEATH_BOUND_S

    _banner_on_phone_and_desktop(page, screenshots / "connection-lost-kernel")

    with page.expect_navigation():
        page.click(".smilekit-reload")
    page.wait_for_selector(".smilekit-upload")
    assert page.evaluate("window.smilekitConnection.lost") is False
    assert page.locator(BANNER).count() == 0
    upload(page, [celeba_dir / "img" / "0.jpg"])
    expect(page.locator(".smilekit-face")).to_have_count(1)
    page.locator(".smilekit-face .smilekit-correct").click()
    expect(page.locator(".smilekit-face")).to_contain_text("Saved: correct")
    page.close()


def _banner_on_phone_and_desktop(page, screenshot_stem) -> None:
    """The banner checked (and photographed) on a 390 px phone, then on a 1280 px desktop."""
    for width, height in ((390, 844), (1280, 800)):
        page.set_viewport_size({"width": width, "height": height})
        _check_banner(page, width)
        page.screenshot(path=f"{screenshot_stem}-{width}.png")


def test_hung_and_stopped_server_show_banner(model_path, tmp_path_factory, browser, screenshots):
    """Its own server: first frozen (SIGSTOP, the websocket stays open), then killed with its process group."""
    served = VoilaServer(tmp_path_factory.mktemp("voila-state-doomed"), model_path)
    try:
        hung = Visit(browser, served, 1280, 800)
        clock = hung.clock()
        os.kill(served.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            elapsed = hung.wait_for_banner(clock, stopped_at, SERVER_HUNG_BOUND_S)
        finally:
            os.kill(served.proc.pid, signal.SIGCONT)
        print(f"\nserver frozen -> banner in {elapsed:.2f} s ({hung.page.evaluate('window.smilekitConnection.reason')})")
        _check_banner(hung.page, 1280)
        hung.page.close()

        visit = Visit(browser, served, 390, 844)
        page = visit.page
        clock = visit.clock()
        os.killpg(served.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        elapsed = visit.wait_for_banner(clock, killed_at, SERVER_DEATH_BOUND_S)
        print(f"server killed -> banner in {elapsed:.2f} s ({page.evaluate('window.smilekitConnection.reason')})")
        assert elapsed < SERVER_DEATH_BOUND_S
        _banner_on_phone_and_desktop(page, screenshots / "connection-lost-server")
        page.close()
    finally:
        served.close()
