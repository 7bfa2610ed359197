"""Admission control: how many visitors hold a session, and the page that asks the next one to come back.

Voilà starts one kernel per visitor. ``Sessions`` counts the kernels handed to visitors (pages being
prepared included; preheated kernels waiting in the pool are not sessions). Above the limit
(``settings.max_sessions``), or while ``settings.max_starting`` pages are being prepared, a new visitor
gets ``busy_page`` at once, with HTTP 503 and Retry-After (``settings.retry_after_s``), instead of waiting for a kernel the machine
cannot give yet; the page tries again by itself, so a crowd is served a few at a time. At the limit, the kernel of a closed page is
shut down to make room first, so tabs closed a moment ago do not turn newcomers away: a page whose
websocket was connected and has been gone for ``DISCONNECTED_S`` (``watch`` looks every second), or one
that never connected within ``PAGE_LOAD_S`` and has been idle as long. A kernel with its page connected is
never touched, and ``loading`` tells the idle cull to spare a kernel whose page may still be loading (on a
crowded machine a page can take longer than the cull's 30 s to connect).
"""
from __future__ import annotations

import html
import logging
import random
import time
from datetime import datetime, timezone

from smilekit import settings

log = logging.getLogger(__name__)

#: a page handed its kernel this long ago that has never connected is taken for closed (not loading)
PAGE_LOAD_S = 90.0
#: a visitor's kernel whose page was connected and has had none for this long belongs to a closed page
DISCONNECTED_S = 3.0


class Sessions:
    """The visitors' kernels on this server and the pages still being prepared, against ``limit``."""

    def __init__(self, limit: int, max_starting: int | None = None, closed_after_s: float = PAGE_LOAD_S):
        self.limit = limit
        self.max_starting = max_starting or limit
        self.closed_after_s = closed_after_s
        self.preparing = 0
        self.kernels: dict[str, float] = {}  # kernel id -> when its page was served (monotonic)
        self.last_connected: dict[str, float] = {}  # kernel id -> when its page was last seen connected
        self.handed: dict[str, float] = {}  # kernel id -> when it was handed to a visitor's page

    def handed_over(self, kernel_id: str) -> None:
        """A kernel has just been given to a visitor's page (still being prepared)."""
        self.handed[kernel_id] = time.monotonic()

    def loading(self, kernel_id: str) -> bool:
        """True while the kernel's page may still be loading: handed over, never seen connected, not for long."""
        since = self.handed.get(kernel_id)
        return since is not None and kernel_id not in self.last_connected and time.monotonic() - since < self.closed_after_s

    def connected(self, kernel_id: str) -> None:
        """A page has just connected to this kernel."""
        self.last_connected[kernel_id] = time.monotonic()

    def watch(self, kernel_manager) -> None:
        """Note which visitors' pages are connected now (called every second)."""
        now = time.monotonic()
        for kernel_id in {*self.kernels, *self.handed}:
            if kernel_id in kernel_manager and kernel_manager.kernel_model(kernel_id).get("connections", 0):
                self.last_connected[kernel_id] = now

    def count(self, kernel_manager) -> int:
        """Live sessions: visitors' kernels still running, plus pages being prepared."""
        for kernel_id in [k for k in {*self.kernels, *self.handed} if k not in kernel_manager]:
            self._forget(kernel_id)
        return len(self.kernels) + self.preparing

    async def admit(self, kernel_manager) -> bool:
        """Take a place for a new visitor if there is one, shutting down a closed page's kernel if that makes one."""
        if self.preparing >= self.max_starting:
            return False
        if self.count(kernel_manager) < self.limit:
            self.preparing += 1
            return True
        closed = self.closed_pages(kernel_manager)
        if not closed:
            return False
        self._forget(closed[0])
        self.preparing += 1  # the place is taken before the shutdown is awaited: no other visitor gets it too
        log.info("at the session limit (%d): shutting down kernel %s of a closed page", self.limit, closed[0])
        try:
            await kernel_manager.shutdown_kernel(closed[0])
        except Exception:  # already gone or failing to stop: its place is free in our count either way
            log.warning("kernel %s of a closed page did not shut down cleanly", closed[0], exc_info=True)
        return True

    def served(self, kernel_id: str | None) -> None:
        """The page of an admitted visitor is served (or abandoned): its place is now its kernel, if it got one."""
        self.preparing -= 1
        if kernel_id is not None:
            self.kernels[kernel_id] = time.monotonic()

    def closed_pages(self, kernel_manager) -> list[str]:
        """Visitors' kernels whose page has gone: none connected now, and either disconnected for
        ``DISCONNECTED_S`` or never connected, served and idle for ``closed_after_s`` (``PAGE_LOAD_S``)."""
        now, wall_now = time.monotonic(), datetime.now(timezone.utc)
        closed = []
        for kernel_id, served_at in self.kernels.items():
            if kernel_id not in kernel_manager or kernel_manager.kernel_model(kernel_id).get("connections", 0):
                continue
            if kernel_id in self.last_connected:
                if now - self.last_connected[kernel_id] >= DISCONNECTED_S:
                    closed.append(kernel_id)
                continue
            if now - served_at < self.closed_after_s:
                continue
            last = getattr(kernel_manager.get_kernel(kernel_id), "last_activity", None)
            if last is None or (wall_now - last).total_seconds() >= self.closed_after_s:
                closed.append(kernel_id)
        return closed

    def _forget(self, kernel_id: str) -> None:
        self.kernels.pop(kernel_id, None)
        self.last_connected.pop(kernel_id, None)
        self.handed.pop(kernel_id, None)


def retry_after() -> int:
    """Seconds a turned-away visitor should wait, spread so that a crowd does not come back at once."""
    base = settings.retry_after_s()
    return base + random.randint(0, base)


def busy_page(seconds: int) -> str:
    """A small page saying the app is busy that loads the app again by itself after ``seconds``."""
    seconds = int(seconds)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{seconds}">
<title>SmileKit is busy</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em;color:#222}}
h1{{font-size:1.5em}}a{{color:#1565c0}}</style></head>
<body class="smilekit-busy"><h1>SmileKit is busy, try again in a moment</h1>
<p>Many people are using SmileKit right now. This page tries again by itself in {html.escape(str(seconds))} seconds,
or <a href="">try now</a>.</p></body></html>
"""
