"""Sessions: the count of visitors' places, and which kernels count as closed pages."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from helpers import run_coroutine
from smilekit import settings
from smilekit.serve import admission
from smilekit.serve.admission import Sessions, busy_page


class Kernels:
    """The part of Jupyter's kernel manager that Sessions uses, over a dict of kernel id -> connections."""

    def __init__(self):
        self.connections: dict[str, int] = {}
        self.last_activity: dict[str, datetime] = {}
        self.shut_down: list[str] = []

    def start(self, kernel_id: str, connections: int = 0, idle_s: float = 0.0) -> str:
        self.connections[kernel_id] = connections
        self.last_activity[kernel_id] = datetime.now(timezone.utc) - timedelta(seconds=idle_s)
        return kernel_id

    def __contains__(self, kernel_id) -> bool:
        return kernel_id in self.connections

    def kernel_model(self, kernel_id) -> dict:
        return {"connections": self.connections[kernel_id]}

    def get_kernel(self, kernel_id):
        return SimpleNamespace(last_activity=self.last_activity[kernel_id])

    async def shutdown_kernel(self, kernel_id) -> None:
        self.shut_down.append(kernel_id)
        del self.connections[kernel_id]


def _admit(sessions, kernels) -> bool:
    """``sessions.admit`` run to its end (in a thread of its own: the browser tests' loop may be running in this one)."""
    return run_coroutine(sessions.admit(kernels))


def test_pages_being_prepared_and_served_pages_take_places_up_to_the_limit():
    kernels, sessions = Kernels(), Sessions(limit=2)
    assert _admit(sessions, kernels) and _admit(sessions, kernels)
    assert not _admit(sessions, kernels)  # two pages still being prepared fill both places
    sessions.served(kernels.start("a", connections=1))
    sessions.served(kernels.start("b", connections=1))
    assert sessions.count(kernels) == 2
    assert not _admit(sessions, kernels)
    del kernels.connections["b"]  # culled or shut down elsewhere: its place is free
    assert _admit(sessions, kernels)
    assert kernels.shut_down == []


def test_at_the_limit_a_closed_page_makes_room_and_an_open_one_never_does(monkeypatch):
    monkeypatch.setattr(admission, "DISCONNECTED_S", 0.0)
    kernels, sessions = Kernels(), Sessions(limit=2)
    for name in ("open", "closed"):
        assert _admit(sessions, kernels)
        sessions.served(kernels.start(name, connections=1))
    sessions.watch(kernels)
    kernels.connections["closed"] = 0  # its tab was closed
    assert _admit(sessions, kernels)
    assert kernels.shut_down == ["closed"]
    assert sessions.count(kernels) == 2  # the open page and the newcomer being prepared
    assert not _admit(sessions, kernels)
    assert kernels.shut_down == ["closed"]


def test_a_page_that_never_connected_is_closed_only_once_idle_for_long_enough():
    kernels, sessions = Kernels(), Sessions(limit=1, closed_after_s=0.0)
    assert _admit(sessions, kernels)
    sessions.served(kernels.start("loading", idle_s=0.0))
    sessions.closed_after_s = 60.0
    assert not _admit(sessions, kernels)  # served a moment ago and active: its page may still be loading
    sessions.closed_after_s = 0.0
    kernels.last_activity["loading"] -= timedelta(seconds=1)
    assert _admit(sessions, kernels)
    assert kernels.shut_down == ["loading"]


def test_the_busy_page_says_so_and_tries_again_by_itself():
    page = busy_page(7)
    assert "SmileKit is busy, try again in a moment" in page
    assert '<meta http-equiv="refresh" content="7">' in page
    base = settings.retry_after_s()
    assert base <= admission.retry_after() <= 2 * base


def test_the_wait_before_the_busy_page_tries_again_is_a_setting(monkeypatch):
    monkeypatch.setenv("SMILEKIT_RETRY_AFTER", "2")
    waits = {admission.retry_after() for _ in range(200)}
    assert waits <= {2, 3, 4} and len(waits) > 1  # spread, so a crowd does not come back at once


def test_while_enough_pages_are_being_prepared_the_next_visitor_is_asked_to_retry():
    kernels, sessions = Kernels(), Sessions(limit=10, max_starting=2)
    assert _admit(sessions, kernels) and _admit(sessions, kernels)
    assert not _admit(sessions, kernels)
    sessions.served(kernels.start("a", connections=1))
    assert _admit(sessions, kernels)  # one page is ready: the next may start


def test_a_kernel_handed_to_a_page_is_spared_by_the_cull_until_its_page_connects_or_the_wait_is_over():
    kernels, sessions = Kernels(), Sessions(limit=5, closed_after_s=60.0)
    sessions.handed_over(kernels.start("slow"))
    assert sessions.loading("slow")
    kernels.connections["slow"] = 1
    sessions.preparing += 1
    sessions.served("slow")
    sessions.watch(kernels)
    assert not sessions.loading("slow")  # connected: an ordinary session now
    sessions.handed_over(kernels.start("abandoned"))
    sessions.closed_after_s = 0.0
    assert not sessions.loading("abandoned")
    assert not sessions.loading("never handed")
