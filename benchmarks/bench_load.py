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
  ``N after N closed tabs``     N pages opened (until ready) and closed, then N visitors at once.

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
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the launcher helpers the tests use
from helpers import CHROMIUM_ARGS, VoilaServer  # noqa: E402

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
    clicked: bool = False


@dataclass
class Scenario:
    name: str
    root: str
    visitors: int
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
        return len(sizes), mean, self.process.memory_info().rss / 2**20

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


async def open_page(browser, url: str, timeout_s: float, retry: bool = True):
    """A new visitor's page once the app is ready, through the busy page's own retries if ``retry``:
    (context, page, Visit). Page ready counts from the first request, retries included."""
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
            return context, page, visit
        await page.wait_for_selector(".smilekit-upload")  # the busy page reloads itself until the app comes
        visit.page_ready_s = time.perf_counter() - start
    except PlaywrightTimeout:
        visit.outcome = "timeout: page"
    except Exception as error:  # a crashed page or a refused connection is a failure to report, not to raise
        visit.outcome = f"error: page: {str(error).splitlines()[0][:80]}"
    return context, page, visit


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
        await card.locator(".smilekit-correct").click()
        await card.filter(has_text="Saved: correct").wait_for()
        visit.clicked = True
    except PlaywrightTimeout:
        visit.outcome = f"timeout: {step}"
    except Exception as error:
        visit.outcome = f"error: {step}: {str(error).splitlines()[0][:80]}"


async def visitor(browser, url: str, photo: Path, timeout_s: float, keep: list, retry: bool) -> Visit:
    context, page, visit = await open_page(browser, url, timeout_s, retry)
    if visit.outcome == "served":
        await use_app(page, visit, photo)
    keep.append(context)  # the page stays open (its session live) until the scenario is measured
    return visit


async def run_scenario(browser, server: LoadServer, scenario: Scenario, stale: int, timeout_s: float, retry: bool) -> None:
    if stale:  # tabs opened and closed just before: their kernels are still there
        opened = await asyncio.gather(*(open_page(browser, server.url, timeout_s) for _ in range(stale)))
        for context, _, _ in opened:
            await context.close()
    photos = [DATA / f"{i}.jpg" for i in PHOTO_IDS]
    keep: list = []
    split_before, browser_before, start = server.cpu_split(), load_generator_cpu_seconds(server), time.perf_counter()
    scenario.visits = list(await asyncio.gather(
        *(visitor(browser, server.url, photos[k % len(photos)], timeout_s, keep, retry) for k in range(scenario.visitors))))
    scenario.wall_s = time.perf_counter() - start
    scenario.browser_cpu_s = load_generator_cpu_seconds(server) - browser_before
    scenario.kernels, mb, scenario.server_rss_mb = server.memory()
    scenario.kernel_rss_mb, scenario.kernel_pss_mb, scenario.kernel_uss_mb = mb["rss"], mb["pss"], mb["uss"]
    scenario.db_rows = server.feedback_rows()
    server.wait_settled(pool=0, timeout_s=60)  # the kernels started to refill the pool are part of what a visit costs
    split_after = server.cpu_split()
    scenario.server_cpu_s = split_after[0] - split_before[0]
    scenario.cpu_s = sum(split_after) - sum(split_before)
    for context in keep:
        await context.close()


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of ``values``, None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def still_told_to_retry(v: Visit) -> bool:
    """A visitor who was shown only the busy page until the timeout: answered, not hung."""
    return v.outcome == "busy" or (v.outcome == "timeout: page" and v.busy_answers > 0)


def summary(s: Scenario) -> dict:
    ready = [v.page_ready_s for v in s.visits if v.page_ready_s is not None]
    labels = [v.upload_to_label_s for v in s.visits if v.upload_to_label_s is not None]
    clicks = sum(v.clicked for v in s.visits)
    served = sum(v.outcome == "served" for v in s.visits)
    failures: dict[str, int] = {}
    for v in s.visits:
        if v.outcome != "served" and not still_told_to_retry(v):
            failures[v.outcome] = failures.get(v.outcome, 0) + 1
    return {
        "scenario": s.name, "root": s.root, "visitors": s.visitors, "served": served,
        "busy": sum(still_told_to_retry(v) for v in s.visits), "told_to_retry": sum(v.busy_answers > 0 for v in s.visits),
        "busy_answers": sum(v.busy_answers for v in s.visits), "failed": failures,
        "first_answer_max_s": max((v.first_answer_s for v in s.visits if v.first_answer_s is not None), default=None),
        "page_ready_p50_s": pct(ready, 0.5), "page_ready_p95_s": pct(ready, 0.95), "page_ready_max_s": max(ready, default=None),
        "upload_to_label_p50_s": pct(labels, 0.5), "upload_to_label_p95_s": pct(labels, 0.95),
        "server_cpu_s": s.cpu_s, "cpu_s_per_visit": s.cpu_s / served if served else None,
        "voila_process_cpu_s_per_visit": s.server_cpu_s / served if served else None,
        "load_generator_cpu_s_per_visit": s.browser_cpu_s / served if served else None,
        "kernels": s.kernels, "mb_per_session": s.kernel_rss_mb, "pss_mb_per_session": s.kernel_pss_mb,
        "uss_mb_per_session": s.kernel_uss_mb, "server_mb": s.server_rss_mb,
        "clicks": clicks, "db_rows": s.db_rows, "one_row_per_click": s.db_rows == clicks, "wall_s": s.wall_s,
        "visits": [asdict(v) for v in s.visits],
    }


def show(rows: list[dict]) -> None:
    def f(x, spec=".1f"):
        return "-" if x is None else format(x, spec)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{psutil.cpu_count()} CPUs shared with the Chromium load generator (and other work: load average {load})")
    head = (f"{'scenario':<26} {'root':<10} {'served':>7} {'retry':>5} {'failed':>7} {'ready p50/p95/max s':>20} "
            f"{'label p50/p95 s':>16} {'CPU-s/visit':>11} {'MB/session':>10} {'rows=clicks':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        failed = sum(r["failed"].values())
        print(f"{r['scenario']:<26} {Path(r['root']).name[:10]:<10} {r['served']:>3}/{r['visitors']:<3} {r['told_to_retry']:>5} {failed:>7} "
              f"{f(r['page_ready_p50_s']):>6}/{f(r['page_ready_p95_s'])}/{f(r['page_ready_max_s']):<5} "
              f"{f(r['upload_to_label_p50_s'], '.2f'):>7}/{f(r['upload_to_label_p95_s'], '.2f'):<6} "
              f"{f(r['cpu_s_per_visit'], '.2f'):>11} {f(r['mb_per_session'], '.0f'):>10} "
              f"{('yes' if r['one_row_per_click'] else 'NO') + ' (' + str(r['db_rows']) + ')':>12}")
        print(f"    CPU-s per visit: {f(r['voila_process_cpu_s_per_visit'], '.2f')} in the voila process, the rest in kernels; "
              f"the load generator (Chromium, same cores) used {f(r.get('load_generator_cpu_s_per_visit'), '.2f')} per visit "
              f"until the last visitor was done; "
              f"first answer (app or busy page) within {f(r['first_answer_max_s'])} s for every visitor; "
              f"{r['busy_answers']} busy pages shown, {r['busy']} visitors still told to retry at the end; "
              f"{r['kernels']} kernels, MB per session {f(r['mb_per_session'], '.0f')} resident, "
              f"{f(r.get('pss_mb_per_session'), '.0f')} PSS, {f(r.get('uss_mb_per_session'), '.0f')} USS; "
              f"voila process {f(r['server_mb'], '.0f')} MB")
        for outcome, count in r["failed"].items():
            print(f"    {count} x {outcome}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, nargs="+", default=[10, 20, 40], help="simultaneous visitors, one scenario each")
    parser.add_argument("--stale", type=int, nargs="*", default=[20], help="visitors after as many closed tabs, one scenario each")
    parser.add_argument("--roots", type=Path, nargs="+", default=[ROOT], help="checkouts to serve from, in turn (before / after)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a visitor waits at each step before it counts as failed")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="settings for the server (e.g. SMILEKIT_MAX_SESSIONS=20)")
    parser.add_argument("--no-retry", action="store_true", help="a visitor told to retry gives up (counted as busy) instead of waiting")
    parser.add_argument("--quick", action="store_true", help="a small run: 3 visitors, 3 after 3 closed tabs, 60 s timeout")
    parser.add_argument("--out", type=Path, default=METRICS)
    args = parser.parse_args()
    if args.quick:
        args.visitors, args.stale, args.timeout = [3], [3], 60
    env = dict(item.split("=", 1) for item in args.env)
    plan = [(f"{n} at once", n, 0) for n in args.visitors] + [(f"{n} after {n} closed tabs", n, n) for n in args.stale]

    from playwright.async_api import async_playwright

    async def run() -> list[dict]:
        rows = []
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for name, n, stale in plan:
                for root in args.roots:
                    root = root.resolve()
                    with tempfile.TemporaryDirectory(prefix="smilekit-load-") as tmp:
                        server = LoadServer(root, Path(tmp), env)
                        scenario = Scenario(name=name, root=str(root), visitors=n)
                        try:
                            server.wait_settled(pool=1)
                            await run_scenario(browser, server, scenario, stale, args.timeout, not args.no_retry)
                        finally:
                            server.close()
                            if any(v.outcome not in ("served", "busy") for v in scenario.visits):  # keep what the server said
                                log = args.out.parent / f"load-{name.replace(' ', '-')}-{root.name}.log"
                                log.parent.mkdir(parents=True, exist_ok=True)
                                log.write_bytes(server.log.read_bytes())
                                print(f"server log kept: {log}")
                    rows.append(summary(scenario))
                    show(rows[-1:])
            await browser.close()
        return rows

    rows = asyncio.run(run())
    show(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpus": psutil.cpu_count(), "load_average": os.getloadavg(), "env": env,
                                    "note": ("server and the headless-Chromium load generator share the same cores (and other work: see "
                                             "load_average); CPU counts every process under the server, ended ones included; "
                                             "the kernel zygote's one-time imports happen before the measured window"),
                                    "scenarios": rows}, indent=1) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
