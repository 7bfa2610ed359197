"""A closed page's kernel goes within seconds; a kernel whose page is open stays, however idle."""
from __future__ import annotations

import re
import time
import urllib.request

import psutil
import pytest

from conftest import ROOT, judge_one_face, kernel_process, open_app, page_kernel_id

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: scripts/serve's default: a kernel with no page connected is shut down after this many idle seconds
CULL_IDLE_S = 30
#: ... checked every this many seconds
CULL_INTERVAL_S = 5
#: bounds the wait on a loaded 2-core machine; not a performance target
WAIT_S = 90


def _kernel_count(server) -> int:
    return sum(1 for p in psutil.Process(server.proc.pid).children(recursive=True) if "ipykernel" in " ".join(p.cmdline()))


def test_the_container_health_check_starts_no_kernel(server):
    """The Dockerfile's HEALTHCHECK asks for a URL that answers without starting a kernel."""
    url_path = re.search(r"http://127\.0\.0\.1:' \+ os\.environ\['SMILEKIT_PORT'\] \+ '(/[^'\"]*)", (ROOT / "Dockerfile").read_text()).group(1)
    assert url_path != "/"
    time.sleep(5)  # the preheated kernel is in place
    before = _kernel_count(server)
    for _ in range(5):
        with urllib.request.urlopen(server.url.rstrip("/") + url_path, timeout=10) as response:
            assert response.status == 200
    time.sleep(3)
    assert _kernel_count(server) == before


def test_closed_pages_release_their_kernels_and_open_ones_keep_theirs(browser, server, celeba_dir):
    """With scripts/serve's shipped settings (the module's server)."""

    kept, closed = open_app(browser, server, 1280), open_app(browser, server, 1280)
    kept_kernel, closed_kernel = page_kernel_id(kept), page_kernel_id(closed)
    assert kernel_process(server, closed_kernel) is not None
    closed.close()
    start = time.monotonic()
    while kernel_process(server, closed_kernel) is not None and time.monotonic() - start < WAIT_S:
        time.sleep(1)
    released = time.monotonic() - start
    assert kernel_process(server, closed_kernel) is None, f"the closed page's kernel is still there after {WAIT_S} s"
    print(f"\nclosed page's kernel shut down {released:.0f} s after the page closed (cull after {CULL_IDLE_S} s idle)")

    time.sleep(2 * CULL_INTERVAL_S)  # the open page has now been idle past the cull time, and two more checks
    assert kernel_process(server, kept_kernel) is not None, "the open page's kernel was shut down"
    judge_one_face(kept, celeba_dir / "img" / "0.jpg")
    kept.close()
