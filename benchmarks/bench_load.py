"""Many people at once on one machine: N simultaneous visitors of the app as ``scripts/serve`` runs it.

Each visitor is a browser context of its own (own cookies) in one headless Chromium: it opens the
page, uploads a real photo (CelebA subset), waits for the face's label and clicks Correct; all N
start at the same moment. Per scenario the table shows page ready p50 / p95 / max, upload -> label
p50 / p95, visitors served, told to retry (HTTP 503; the busy page retries by itself and the visitor waits
for it, page ready then counts from the first request) and failed (with the step that timed out),
server CPU-seconds per visit (every process of the voila process tree, ended ones included: with forked
kernels they are children of the kernel zygote, not of voila), MB per session (resident; proportional, PSS,
and unique, USS, which count forked kernels' shared pages once), and whether the database holds exactly one
row per acknowledged click. The kernel zygote's one-time imports happen before the measured window (the
server is first left to settle).

Scenarios, each on a freshly started server with its own temporary SQLite database:
  ``N at once``                 N visitors at the same moment;
  ``N after N closed tabs``     N pages opened (until ready) and closed, then N visitors at once;
  ``R/s for D s``               R new visitors a second for D seconds, each closing its page once its click is saved.

Two visitor drivers run the same scenarios: headless Chromium (default), or with ``--protocol`` an asyncio client
of the kernel protocol (``kernel_client.py``: the page's own requests, on connections kept open as a browser keeps
them, and websocket messages, at a small fraction of the server's CPU, where Chromium costs several times it). ``--compare N`` runs N at once with each and compares
the server's CPU-s per visit and the rows; ``--servers 2`` serves through ``scripts/serve-replicas``; ``--variants``
compares server settings back to back in one run.

    .venv/bin/python benchmarks/bench_load.py --protocol --visitors 20 40 --stale 20 --rates 1 2 4 --servers 1 2
    .venv/bin/python benchmarks/bench_load.py --compare 5

    .venv/bin/python benchmarks/bench_load.py [--visitors 10 20 40] [--stale 20] [--quick]
    .venv/bin/python benchmarks/bench_load.py --roots /tmp/before . --visitors 10   # before / after, back to back

``--roots`` serves each scenario from each checkout in turn (its own ``scripts/serve`` and ``smilekit``),
so a before / after comparison is taken in one run. Figures depend on the machine: the browser
load generator runs on the same machine as the server. Writes ``outputs/metrics/load.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the launcher helpers the tests use
sys.path.insert(0, str(Path(__file__).resolve().parent))  # kernel_client, beside this file
from helpers import CHROMIUM, CHROMIUM_ARGS, VoilaServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SMILEKIT_TEST_DATA", ROOT.parent / "shared" / "data")) / "celeba-subset" / "img"
#: CelebA-subset photos with one face the detector finds; visitors take them in turn
PHOTO_IDS = (0, 1, 4, 5)
METRICS = ROOT / "outputs" / "metrics" / "load.json"


@dataclass
class Visit:
    """What one visitor saw: ``outcome`` is served, busy (told to retry, with ``--no-retry``) or "timeout: <step>" /
    "error: ..."; ``busy_answers`` counts the busy pages seen before the app (the busy page retries by itself)."""

    outcome: str = "served"
    first_answer_s: float | None = None
    busy_answers: int = 0
    page_ready_s: float | None = None
    upload_to_label_s: float | None = None
    click_to_saved_s: float | None = None
    clicked: bool = False
    http_connections: int | None = None  # HTTP connections its page opened (the protocol client counts them)


@dataclass
class Scenario:
    """``visitors`` at once, or with ``rate`` set, that many a second for ``duration_s`` (``visitors`` = their number);
    driven by ``driver`` (browser or protocol) against ``replicas`` servers (1: scripts/serve)."""

    name: str
    root: str
    visitors: int
    driver: str = "browser"
    replicas: int = 1
    rate: float = 0.0
    duration_s: float = 0.0
    variant: str = ""
    visits: list[Visit] = field(default_factory=list)
    cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    browser_cpu_s: float = 0.0
    kernels: int = 0
    kernel_rss_mb: float = 0.0
    kernel_pss_mb: float = 0.0
    kernel_uss_mb: float = 0.0
    server_rss_mb: float = 0.0
    db_rows: int = 0
    wall_s: float = 0.0


class LoadServer(VoilaServer):
    """``scripts/serve`` of checkout ``root`` on a free port, with a temporary database and Jupyter state, and the
    figures of its process tree. Counts as started when a static file answers, so no kernel is taken for it."""

    def __init__(self, root: Path, state: Path, env: dict[str, str] | None = None):
        super().__init__(state, None, {"SMILEKIT_MODELS_DIR": str(state / "models"), **(env or {})}, root=root,
                         ready_path="voila/static/favicon.ico")
        self.db = state / "feedback.db"
        self.process = psutil.Process(self.proc.pid)

    def wait_settled(self, pool: int, timeout_s: float = 120) -> None:
        """Until the preheated pool is up and the server has been quiet (< 0.2 CPU-s per second) for 2 s."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while time.monotonic() < deadline:
            before = self.cpu_seconds()
            time.sleep(1)
            quiet = quiet + 1 if self.cpu_seconds() - before < 0.2 and len(self.kernels()) >= pool else 0
            if quiet >= 2:
                return

    def cpu_seconds(self) -> float:
        """CPU time of the server and every kernel it started, the ended ones included (reaped by the server)."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(the server process's own CPU seconds, the CPU seconds of every process under it, ended ones included:
        an ended process's time is in its parent's children times, be the parent the server or the kernel zygote)."""
        t = self.process.cpu_times()
        others = t.children_user + t.children_system
        for child in self.process.children(recursive=True):
            try:
                c = child.cpu_times()
                others += c.user + c.system + c.children_user + c.children_system
            except psutil.NoSuchProcess:
                continue
        return t.user + t.system, others

    def memory(self) -> tuple[int, dict[str, float], float]:
        """(kernels, their mean resident / proportional / unique MB as {"rss", "pss", "uss"}, the server's resident MB)."""
        sizes = []
        for kernel in self.kernels():
            try:
                m = kernel.memory_full_info()
                sizes.append({"rss": m.rss / 2**20, "pss": m.pss / 2**20, "uss": m.uss / 2**20})
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        mean = {key: statistics.mean(s[key] for s in sizes) if sizes else 0.0 for key in ("rss", "pss", "uss")}
        return len(sizes), mean, sum(p.memory_info().rss for p in self.voila_processes()) / 2**20

    def voila_processes(self) -> list[psutil.Process]:
        """The Voilà server process(es), which relay every page's websocket."""
        return [self.process]

    def feedback_rows(self) -> int:
        with sqlite3.connect(self.db) as conn:
            return conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


def load_generator_cpu_seconds(server: LoadServer) -> float:
    """CPU time of this process and everything under it but the server (Playwright's driver, Chromium), ended
    ones included (in their parent's children times; the server is not reaped while it is measured)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:4])
    served = {server.process.pid} | {p.pid for p in server.process.children(recursive=True)}
    for child in me.children(recursive=True):
        if child.pid in served:
            continue
        try:
            total += sum(child.cpu_times()[:4])
        except psutil.NoSuchProcess:
            continue
    return total


class ReplicaLoadServer(LoadServer):
    """``scripts/serve-replicas`` of checkout ``root``: ``replicas`` copies of ``scripts/serve`` behind nginx, one
    temporary SQLite database for all of them; its process tree (replicas, their kernels, nginx) is the server."""

    def __init__(self, root: Path, state: Path, replicas: int, env: dict[str, str] | None = None):
        from helpers import free_port

        self.replicas = replicas
        port = free_port()
        command = [sys.executable, str(root / "scripts" / "serve-replicas"), "--replicas", str(replicas), "--port", str(port),
                   "--replica-ports", ",".join(str(free_port()) for _ in range(replicas))]
        VoilaServer.__init__(self, state, None, {"SMILEKIT_MODELS_DIR": str(state / "models"), **(env or {})}, root=root,
                             ready_path="voila/static/voila.js", command=command, port=port)
        self.db = state / "feedback.db"
        self.process = psutil.Process(self.proc.pid)

    def voila_processes(self) -> list[psutil.Process]:
        found = []
        for child in self.process.children():
            try:
                if "smilekit.serve.server" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def cpu_split(self) -> tuple[float, float]:
        """(the replicas' Voilà processes' own CPU seconds, the CPU seconds of everything else under the launcher:
        kernels, zygotes, nginx, the launcher itself, ended processes included)."""
        t = self.process.cpu_times()
        voila, others = 0.0, t.user + t.system + t.children_user + t.children_system
        servers = {p.pid for p in self.voila_processes()}
        for child in self.process.children(recursive=True):
            try:
                c = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            if child.pid in servers:
                voila += c.user + c.system
                others += c.children_user + c.children_system
            else:
                others += c.user + c.system + c.children_user + c.children_system
        return voila, others


def nginx_available() -> bool:
    return bool(os.environ.get("SMILEKIT_NGINX") or shutil.which("nginx") or Path("/usr/sbin/nginx").is_file())


async def open_page(browser, url: str, timeout_s: float, retry: bool = True):
    """A new visitor's page once the app is ready, through the busy page's own retries if ``retry``:
    ((context, page), Visit). Page ready counts from the first request, retries included."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    context = await browser.new_context(viewport={"width": 1280, "height": 1400})
    page = await context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    visit = Visit()

    def count_busy(response) -> None:
        if response.status == 503 and response.request.resource_type == "document":
            visit.busy_answers += 1

    page.on("response", count_busy)
    start = time.perf_counter()
    try:
        response = await page.goto(url, wait_until="commit")
        visit.first_answer_s = time.perf_counter() - start
        if response is not None and response.status == 503 and not retry:
            visit.outcome = "busy"
            return (context, page), visit
        await page.wait_for_selector(".smilekit-upload")  # the busy page reloads itself until the app comes
        visit.page_ready_s = time.perf_counter() - start
    except PlaywrightTimeout:
        visit.outcome = "timeout: page"
    except Exception as error:  # a crashed page or a refused connection is a failure to report, not to raise
        visit.outcome = f"error: page: {str(error).splitlines()[0][:80]}"
    return (context, page), visit


async def use_app(page, visit: Visit, photo: Path) -> None:
    """Upload ``photo``, wait for its label, click Correct and wait for "Saved: correct"."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    step = "upload"
    try:
        async with page.expect_file_chooser() as chooser:
            await page.click(".smilekit-upload")
        start = time.perf_counter()
        await (await chooser.value).set_files(str(photo))
        card = page.locator(".smilekit-face").first
        await card.wait_for()
        visit.upload_to_label_s = time.perf_counter() - start
        step = "click"
        start = time.perf_counter()
        await card.locator(".smilekit-correct").click()
        await card.filter(has_text="Saved: correct").wait_for()
        visit.click_to_saved_s = time.perf_counter() - start
        visit.clicked = True
    except PlaywrightTimeout:
        visit.outcome = f"timeout: {step}"
    except Exception as error:
        visit.outcome = f"error: {step}: {str(error).splitlines()[0][:80]}"


class BrowserVisitors:
    """Every visitor a browser context of its own (own cookies, own cache) in one headless Chromium."""

    name = "browser"

    async def __aenter__(self):
        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        self.browser = await self._playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        return self

    async def __aexit__(self, *_):
        await self.browser.close()
        await self._playwright.stop()

    async def open(self, url: str, timeout_s: float, retry: bool = True):
        return await open_page(self.browser, url, timeout_s, retry)

    async def use(self, handle, visit: Visit, photo: Path) -> None:
        await use_app(handle[1], visit, photo)

    async def close(self, handle) -> None:
        await handle[0].close()


class ProtocolVisitors:
    """Every visitor a ``kernel_client.ProtocolVisitor``: the page's requests and kernel messages, no browser.
    ``assets``: the static files a page fetches (``discover_assets``), None for those its HTML declares."""

    name = "protocol"

    def __init__(self, assets: list[str] | None = None):
        self.assets = assets

    async def __aenter__(self):
        return self  # each page keeps its own connections (kernel_client.KeepAliveHTTP): nothing shared to set up

    async def __aexit__(self, *_):
        pass

    async def open(self, url: str, timeout_s: float, retry: bool = True):
        """(visitor, Visit) once the page is ready, through the busy page's retries if ``retry``."""
        from kernel_client import BusyAnswer, ProtocolVisitor, StepFailed

        page = ProtocolVisitor(url, [url + path for path in self.assets] if self.assets is not None else None, timeout_s)
        visit = Visit()
        start = time.perf_counter()
        step = "page"
        try:
            while True:
                try:
                    await page.get_page()
                    break
                except BusyAnswer as busy:  # what the busy page does: wait Retry-After, load the page again
                    visit.busy_answers += 1
                    if visit.first_answer_s is None:
                        visit.first_answer_s = page.first_answer_at - start
                    if not retry:
                        visit.outcome = "busy"
                        return page, visit
                    if time.perf_counter() + busy.retry_after_s - start > timeout_s:
                        visit.outcome = "timeout: page"
                        return page, visit
                    await asyncio.sleep(busy.retry_after_s)
            if visit.first_answer_s is None:
                visit.first_answer_s = page.first_answer_at - start
            for step, action in (("assets", page.get_assets), ("kernel", page.get_kernel_model), ("websocket", page.connect),
                                 ("kernel info", page.kernel_info), ("widget state", page.restore_widgets)):
                await action()
            if not page.widgets.with_class("smilekit-upload"):
                raise StepFailed("widget state", "no upload button among the widgets")
            visit.page_ready_s = time.perf_counter() - start
        except asyncio.TimeoutError:
            visit.outcome = f"timeout: {step}"
        except StepFailed as error:
            visit.outcome = f"error: {str(error)[:100]}"
        except Exception as error:  # a broken answer is a failure to report, not to raise
            visit.outcome = f"error: {step}: {type(error).__name__}: {str(error)[:80]}"
        return page, visit

    async def use(self, page, visit: Visit, photo: Path) -> None:
        from kernel_client import StepFailed

        step = "upload"
        try:
            start = time.perf_counter()
            button = await page.upload(photo)
            visit.upload_to_label_s = time.perf_counter() - start
            step = "click"
            start = time.perf_counter()
            await page.click_correct(button)
            visit.click_to_saved_s = time.perf_counter() - start
            visit.clicked = True
        except asyncio.TimeoutError:
            visit.outcome = f"timeout: {step}"
        except StepFailed as error:
            visit.outcome = f"error: {str(error)[:100]}"
        except Exception as error:
            visit.outcome = f"error: {step}: {type(error).__name__}: {str(error)[:80]}"
        visit.http_connections = page.http.opened

    async def close(self, page) -> None:
        page.close()


async def discover_assets(url: str) -> list[str] | None:
    """The static files (paths under ``url``) one page load in Chromium fetches, in order, for the protocol
    visitors to fetch the same; None if Chromium or Playwright is missing (they then fetch what the HTML declares).
    Run on a server of its own: it takes a kernel."""
    if not CHROMIUM.exists():
        return None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return None
    paths: list[str] = []

    def note(request) -> None:
        if request.url.startswith(url) and request.resource_type not in ("document", "fetch", "xhr", "websocket"):
            paths.append(request.url[len(url):])

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = await browser.new_page()
        page.on("request", note)
        await page.goto(url)
        await page.wait_for_selector(".smilekit-upload", timeout=120_000)
        await page.wait_for_load_state("networkidle")
        await browser.close()
    return list(dict.fromkeys(paths))


async def visitor(driver, url: str, photo: Path, timeout_s: float, keep: list, retry: bool, leave: bool = False) -> Visit:
    """One visitor: open the page, upload ``photo``, click Correct; the page stays open (in ``keep``) until the
    scenario is measured, or is closed at once if ``leave``."""
    handle, visit = await driver.open(url, timeout_s, retry)
    if visit.outcome == "served":
        await driver.use(handle, visit, photo)
    if leave:
        await driver.close(handle)
    else:
        keep.append(handle)
    return visit


async def arriving(driver, url: str, photos: list[Path], rate: float, duration_s: float, timeout_s: float) -> list[Visit]:
    """``rate`` new visitors a second for ``duration_s``, each leaving (closing the page) once its click is saved."""
    async def later(k: int) -> Visit:
        await asyncio.sleep(k / rate)
        return await visitor(driver, url, photos[k % len(photos)], timeout_s, [], True, leave=True)

    return list(await asyncio.gather(*(later(k) for k in range(round(rate * duration_s)))))


async def run_scenario(driver, server: LoadServer, scenario: Scenario, stale: int, timeout_s: float, retry: bool) -> None:
    if stale:  # tabs opened and closed just before: their kernels are still there
        opened = await asyncio.gather(*(driver.open(server.url, timeout_s) for _ in range(stale)))
        for handle, _ in opened:
            await driver.close(handle)
    photos = [DATA / f"{i}.jpg" for i in PHOTO_IDS]
    keep: list = []
    split_before, generator_before, start = server.cpu_split(), load_generator_cpu_seconds(server), time.perf_counter()
    if scenario.rate:
        scenario.visits = await arriving(driver, server.url, photos, scenario.rate, scenario.duration_s, timeout_s)
    else:
        scenario.visits = list(await asyncio.gather(
            *(visitor(driver, server.url, photos[k % len(photos)], timeout_s, keep, retry) for k in range(scenario.visitors))))
    scenario.wall_s = time.perf_counter() - start
    scenario.browser_cpu_s = load_generator_cpu_seconds(server) - generator_before
    scenario.kernels, mb, scenario.server_rss_mb = server.memory()
    scenario.kernel_rss_mb, scenario.kernel_pss_mb, scenario.kernel_uss_mb = mb["rss"], mb["pss"], mb["uss"]
    scenario.db_rows = server.feedback_rows()
    server.wait_settled(pool=0, timeout_s=60)  # the kernels started to refill the pool are part of what a visit costs
    split_after = server.cpu_split()
    scenario.server_cpu_s = split_after[0] - split_before[0]
    scenario.cpu_s = sum(split_after) - sum(split_before)
    for handle in keep:
        await driver.close(handle)


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of ``values``, None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def still_told_to_retry(v: Visit) -> bool:
    """A visitor who was shown only the busy page until the timeout: answered, not hung."""
    return v.outcome == "busy" or (v.outcome == "timeout: page" and v.busy_answers > 0)


#: the target for page ready, upload -> label and click -> saved (p95), for a rate to count as sustained
TARGET_P95_S = 10.0


def summary(s: Scenario) -> dict:
    ready = [v.page_ready_s for v in s.visits if v.page_ready_s is not None]
    labels = [v.upload_to_label_s for v in s.visits if v.upload_to_label_s is not None]
    saves = [v.click_to_saved_s for v in s.visits if v.click_to_saved_s is not None]
    clicks = sum(v.clicked for v in s.visits)
    served = sum(v.outcome == "served" for v in s.visits)
    connections = [v.http_connections for v in s.visits if v.http_connections is not None]
    failures: dict[str, int] = {}
    for v in s.visits:
        if v.outcome != "served" and not still_told_to_retry(v):
            failures[v.outcome] = failures.get(v.outcome, 0) + 1
    row = {
        "scenario": s.name, "root": s.root, "variant": s.variant, "driver": s.driver, "replicas": s.replicas, "rate_per_s": s.rate,
        "duration_s": s.duration_s, "visitors": s.visitors, "served": served,
        "busy": sum(still_told_to_retry(v) for v in s.visits), "told_to_retry": sum(v.busy_answers > 0 for v in s.visits),
        "busy_answers": sum(v.busy_answers for v in s.visits), "failed": failures,
        "first_answer_max_s": max((v.first_answer_s for v in s.visits if v.first_answer_s is not None), default=None),
        "page_ready_p50_s": pct(ready, 0.5), "page_ready_p95_s": pct(ready, 0.95), "page_ready_max_s": max(ready, default=None),
        "upload_to_label_p50_s": pct(labels, 0.5), "upload_to_label_p95_s": pct(labels, 0.95),
        "upload_to_label_max_s": max(labels, default=None),
        "click_to_saved_p50_s": pct(saves, 0.5), "click_to_saved_p95_s": pct(saves, 0.95), "click_to_saved_max_s": max(saves, default=None),
        "server_cpu_s": s.cpu_s, "cpu_s_per_visit": s.cpu_s / served if served else None,
        "voila_process_cpu_s_per_visit": s.server_cpu_s / served if served else None,
        "load_generator_cpu_s": s.browser_cpu_s,
        "load_generator_cpu_s_per_visit": s.browser_cpu_s / served if served else None,
        "load_generator_share_of_server": s.browser_cpu_s / s.cpu_s if s.cpu_s else None,
        "http_connections_per_visit": statistics.mean(connections) if connections else None,
        "kernels": s.kernels, "mb_per_session": s.kernel_rss_mb, "pss_mb_per_session": s.kernel_pss_mb,
        "uss_mb_per_session": s.kernel_uss_mb, "server_mb": s.server_rss_mb,
        "clicks": clicks, "db_rows": s.db_rows, "one_row_per_click": s.db_rows == clicks, "wall_s": s.wall_s,
        "visits": [asdict(v) for v in s.visits],
    }
    row["meets_target"] = (served == s.visitors and not failures and all(
        row[key] is not None and row[key] <= TARGET_P95_S for key in ("page_ready_p95_s", "upload_to_label_p95_s", "click_to_saved_p95_s")))
    return row


def sustained_rate(rows: list[dict]) -> dict[tuple, float | None]:
    """{(driver, replicas, root, variant): the highest arrival rate that met the target (every visitor served, p95 <= 10 s)}."""
    best: dict[tuple, float | None] = {}
    for r in rows:
        if r["rate_per_s"]:
            key = (r["driver"], r["replicas"], r["root"], r.get("variant", ""))
            met = r["rate_per_s"] if r["meets_target"] else None
            best[key] = max(filter(None, (best.get(key), met)), default=None)
    return best


def compared(rows: list[dict]) -> list[str]:
    """For each scenario run by both drivers: the server's CPU-s per visit under each and their ratio, and rows."""
    lines = []
    for r in rows:
        if r["driver"] != "browser":
            continue
        for q in rows:
            if q["driver"] == "protocol" and all(q.get(k) == r.get(k) for k in ("scenario", "root", "replicas", "variant")):
                b, p = r["cpu_s_per_visit"], q["cpu_s_per_visit"]
                ratio = p / b if b and p else None
                lines.append(f"{r['scenario']}: server CPU-s per visit {b or 0:.2f} driven by Chromium, {p or 0:.2f} by the protocol "
                             f"client ({'-' if ratio is None else f'{(ratio - 1) * 100:+.0f} %'}: "
                             f"{'within' if ratio and abs(ratio - 1) <= 0.2 else 'NOT within'} 20 %); rows {r['db_rows']} and "
                             f"{q['db_rows']} for {r['clicks']} and {q['clicks']} clicks "
                             f"({'one row per click in both' if r['one_row_per_click'] and q['one_row_per_click'] else 'NOT one row per click'})")
    return lines


def show(rows: list[dict]) -> None:
    def f(x, spec=".1f"):
        return "-" if x is None else format(x, spec)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{psutil.cpu_count()} CPUs shared by the server and the load generator (and other work: load average {load})")
    head = (f"{'scenario':<22} {'driver':<8} {'srv':>3} {'served':>7} {'retry':>5} {'failed':>6} {'ready p50/p95/max s':>19} "
            f"{'label p50/p95/max s':>19} {'saved p50/p95/max s':>19} {'CPU-s/visit':>11} {'gen CPU':>7} {'MB/sess':>7} {'rows=clicks':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        failed = sum(r["failed"].values())
        print(f"{r['scenario']:<22} {r['driver']:<8} {r['replicas']:>3} {r['served']:>3}/{r['visitors']:<3} {r['told_to_retry']:>5} {failed:>6} "
              f"{f(r['page_ready_p50_s']):>5}/{f(r['page_ready_p95_s'])}/{f(r['page_ready_max_s']):<5} "
              f"{f(r['upload_to_label_p50_s'], '.2f'):>5}/{f(r['upload_to_label_p95_s'], '.2f')}/{f(r.get('upload_to_label_max_s'), '.2f'):<5} "
              f"{f(r.get('click_to_saved_p50_s'), '.2f'):>5}/{f(r.get('click_to_saved_p95_s'), '.2f')}/{f(r.get('click_to_saved_max_s'), '.2f'):<5} "
              f"{f(r['cpu_s_per_visit'], '.2f'):>11} {f(r.get('load_generator_cpu_s_per_visit'), '.2f'):>7} {f(r['pss_mb_per_session'], '.0f'):>7} "
              f"{('yes' if r['one_row_per_click'] else 'NO') + ' (' + str(r['db_rows']) + ')':>12}")
        print(f"    {Path(r['root']).name}{' with ' + r['variant'] if r.get('variant') else ''}: CPU-s per visit {f(r['voila_process_cpu_s_per_visit'], '.2f')} in the voila process(es), the rest in "
              f"kernels (and nginx); the load generator ({r['driver']}, same cores) used {f(r.get('load_generator_cpu_s'), '.1f')} CPU-s, "
              f"{f(100 * r['load_generator_share_of_server'] if r.get('load_generator_share_of_server') else None, '.0f')} % of the server's, "
              f"until the last visitor was done ({f(r['wall_s'])} s); first answer (app or busy page) within {f(r['first_answer_max_s'])} s "
              f"for every visitor; {r['busy_answers']} busy pages shown, {r['busy']} visitors still told to retry at the end; "
              f"{'' if r.get('http_connections_per_visit') is None else format(r['http_connections_per_visit'], '.1f') + ' HTTP connections per page; '}"
              f"{r['kernels']} kernels, MB per session {f(r['mb_per_session'], '.0f')} resident, "
              f"{f(r.get('pss_mb_per_session'), '.0f')} PSS, {f(r.get('uss_mb_per_session'), '.0f')} USS; "
              f"voila process {f(r['server_mb'], '.0f')} MB; target (every one served, p95 <= {TARGET_P95_S:.0f} s) "
              f"{'met' if r.get('meets_target') else 'not met'}")
        for outcome, count in r["failed"].items():
            print(f"    {count} x {outcome}")


def plan_of(args) -> list[tuple[str, int, int, float]]:
    """(name, visitors, closed tabs before, arrival rate) for every scenario the options ask for."""
    plan = [(f"{n} at once", n, 0, 0.0) for n in args.visitors] + [(f"{n} after {n} closed tabs", n, n, 0.0) for n in args.stale]
    plan += [(f"{rate:g}/s for {args.duration:g} s", round(rate * args.duration), 0, rate) for rate in args.rates]
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, nargs="*", default=[10, 20, 40], help="simultaneous visitors, one scenario each")
    parser.add_argument("--stale", type=int, nargs="*", default=[20], help="visitors after as many closed tabs, one scenario each")
    parser.add_argument("--rates", type=float, nargs="*", default=[], help="arrivals per second, one scenario each (see --duration)")
    parser.add_argument("--duration", type=float, default=60, help="seconds over which visitors arrive at each --rates")
    parser.add_argument("--protocol", action="store_true", help="drive visitors with the kernel-protocol client instead of Chromium")
    parser.add_argument("--compare", type=int, metavar="N", help="N at once driven by Chromium, then by the protocol client, compared")
    parser.add_argument("--servers", type=int, nargs="+", default=[1], metavar="REPLICAS",
                        help="1: scripts/serve; more: scripts/serve-replicas with that many replicas; each scenario on each")
    parser.add_argument("--roots", type=Path, nargs="+", default=[ROOT], help="checkouts to serve from, in turn (before / after)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a visitor waits at each step before it counts as failed")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="settings for the server (e.g. SMILEKIT_MAX_SESSIONS=20)")
    parser.add_argument("--variants", nargs="+", default=[""], metavar="NAME=VALUE,...",
                        help="server settings to compare, each scenario under each in turn ('' for the defaults)")
    parser.add_argument("--no-retry", action="store_true", help="a visitor told to retry gives up (counted as busy) instead of waiting")
    parser.add_argument("--quick", action="store_true", help="a small run: 3 visitors, 3 after 3 closed tabs, 60 s timeout")
    parser.add_argument("--out", type=Path, help="default outputs/metrics/load.json (load-protocol.json with --protocol, "
                                                  "load-compare.json with --compare)")
    args = parser.parse_args()
    if args.quick:
        args.visitors, args.stale, args.timeout = [3], [3], 60
    if args.compare:
        args.visitors, args.stale, args.rates = [args.compare], [], []
    drivers = ["browser", "protocol"] if args.compare else ["protocol" if args.protocol else "browser"]
    out = args.out or METRICS.with_name("load-compare.json" if args.compare else "load-protocol.json" if args.protocol else "load.json")
    env = dict(item.split("=", 1) for item in args.env)
    if any(n > 1 for n in args.servers) and not nginx_available():
        print("nginx not found (apt-get install nginx): the scenarios through scripts/serve-replicas are left out")
        args.servers = [n for n in args.servers if n == 1]
    plan = plan_of(args)

    async def assets_of(root: Path) -> list[str] | None:
        """What a page load fetches, learned in Chromium on a server of its own (it takes a kernel)."""
        with tempfile.TemporaryDirectory(prefix="smilekit-load-") as tmp:
            server = LoadServer(root, Path(tmp), env)
            try:
                server.wait_settled(pool=1)
                return await discover_assets(server.url)
            finally:
                server.close()

    async def run() -> tuple[list[dict], dict]:
        rows, assets = [], {}
        if "protocol" in drivers:
            for root in args.roots:
                assets[str(root.resolve())] = found = await assets_of(root.resolve())
                print(f"{root.resolve().name}: the protocol client fetches "
                      + (f"the {len(found)} static files one page load in Chromium fetched" if found is not None
                         else "the static files the page's HTML declares (Chromium not available to learn the full list)"))
        for name, n, stale, rate in plan:
            for replicas in args.servers:
                for driver_name in drivers:
                    for root, variant in [(r, v) for r in args.roots for v in args.variants]:
                        root = root.resolve()
                        server_env = {**env, **dict(item.split("=", 1) for item in variant.split(",") if item)}
                        driver_cm = BrowserVisitors() if driver_name == "browser" else ProtocolVisitors(assets[str(root)])
                        async with driver_cm as driver:
                            with tempfile.TemporaryDirectory(prefix="smilekit-load-") as tmp:
                                server = (LoadServer(root, Path(tmp), server_env) if replicas == 1
                                          else ReplicaLoadServer(root, Path(tmp), replicas, server_env))
                                scenario = Scenario(name=name, root=str(root), visitors=n, driver=driver_name, replicas=replicas,
                                                    rate=rate, duration_s=args.duration if rate else 0.0, variant=variant)
                                try:
                                    server.wait_settled(pool=replicas * int(server_env.get("SMILEKIT_POOL_SIZE", 1)))
                                    await run_scenario(driver, server, scenario, stale, args.timeout, not args.no_retry)
                                finally:
                                    server.close()
                                    if any(v.outcome not in ("served", "busy") for v in scenario.visits):  # keep what the server said
                                        label = "-".join([name, driver_name, str(replicas), root.name, variant])
                                        log = out.parent / f"load-{re.sub('[^A-Za-z0-9_.=-]+', '-', label).strip('-')}.log"
                                        log.parent.mkdir(parents=True, exist_ok=True)
                                        log.write_bytes(server.log.read_bytes())
                                        print(f"server log kept: {log}")
                        rows.append(summary(scenario))
                        show(rows[-1:])
        return rows, assets

    rows, assets = asyncio.run(run())
    show(rows)
    for (driver_name, replicas, root, variant), rate in sustained_rate(rows).items():
        print(f"sustained arrivals ({driver_name}, {replicas} server{'s' if replicas > 1 else ''}, {Path(root).name}"
              f"{', ' + variant if variant else ''}): "
              f"{'none of the rates tried' if rate is None else f'{rate:g} a second'} with every visitor served and p95 <= {TARGET_P95_S:.0f} s")
    for line in compared(rows):
        print(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpus": psutil.cpu_count(), "load_average": os.getloadavg(), "env": env, "drivers": drivers,
                               "assets": {root: len(found) if found is not None else None for root, found in assets.items()},
                               "sustained_rate": [{"driver": d, "replicas": n, "root": root, "variant": v, "rate_per_s": r}
                                                  for (d, n, root, v), r in sustained_rate(rows).items()],
                               "comparison": compared(rows),
                               "note": ("server and load generator share the same cores (and other work: see load_average); CPU "
                                        "counts every process under the server, ended ones included; the kernel zygote's one-time "
                                        "imports happen before the measured window"),
                               "scenarios": rows}, indent=1) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
