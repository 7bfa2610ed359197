"""What a session costs behind scripts/serve-replicas: memory per live session, CPU per visit, kernel start CPU.

Starts N replicas + nginx (temporary SQLite database and Jupyter state unless --db-url is given), opens K
visitors one after another through the proxy in headless Chromium (each opens the page, uploads a one-face
photo, clicks Correct and keeps its page open), then reads every replica's process tree with psutil:

- memory per live session: the growth of the trees' proportional set size (PSS: shared pages split between
  the processes sharing them, so K kernels are not counted K times for the same libraries) divided by K;
- CPU per visit: the trees' CPU seconds spent from before the first visitor until the pools are refilled and
  idle, divided by K (page, kernel taken from the pool, upload, click, and starting the replacement kernel);
- kernel start CPU: the CPU seconds of the kernels preheated during the run and not yet used;
- what an idle open session costs: the trees' CPU over 30 s with every page open and nobody doing anything.

    .venv/bin/python benchmarks/bench_replicas.py [--replicas 2] [--sessions 8] [--db-url URL] [--json out.json]

The browser runs on the same machine as the servers: on a small machine it takes a share of the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PHOTO = Path(os.environ.get("SMILEKIT_TEST_DATA", ROOT.parent / "shared" / "data")) / "celeba-subset" / "img" / "0.jpg"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 120_000
IDLE_WINDOW_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_trees(proc: subprocess.Popen) -> dict[int, list[psutil.Process]]:
    """{replica pid: [its Voilà process and every kernel under it]} (nginx left out)."""
    trees = {}
    for child in psutil.Process(proc.pid).children():
        if "voila" in " ".join(child.cmdline()):
            trees[child.pid] = [child, *child.children(recursive=True)]
    return trees


def kernels(proc: subprocess.Popen) -> dict[str, tuple[int, psutil.Process]]:
    """{kernel id: (its replica's pid, its process)}."""
    out = {}
    for pid, tree in replica_trees(proc).items():
        for process in tree[1:]:
            found = re.search(r"kernel-([0-9a-f-]{36})\.json", " ".join(process.cmdline()))
            if found:
                out[found.group(1)] = (pid, process)
    return out


def _sum(processes, read) -> float:
    total = 0.0
    for p in processes:
        try:
            total += read(p)
        except psutil.NoSuchProcess:
            continue
    return total


def pss_mb(processes) -> float:
    return _sum(processes, lambda p: p.memory_full_info().pss) / 2**20


def cpu_s(processes) -> float:
    return _sum(processes, lambda p: sum(p.cpu_times()[:2]))


def everything(proc) -> list[psutil.Process]:
    return [p for tree in replica_trees(proc).values() for p in tree]


def wait_idle(proc, quiet_s: float = 4.0, limit_s: float = 120) -> None:
    """Until the replicas' trees used under 5 % of one core for ``quiet_s`` seconds (pools refilled)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_s(everything(proc))
        time.sleep(quiet_s)
        if cpu_s(everything(proc)) - before < 0.05 * quiet_s:
            return


def kernel_of(page) -> str:
    return page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")


def visit(browser, url: str) -> tuple[object, float, float]:
    """A new visitor: page ready (s), upload -> label and click -> saved (s); the page stays open."""
    page = browser.new_page(viewport={"width": 1000, "height": 1800})
    page.set_default_timeout(TIMEOUT_MS)
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(".smilekit-upload")
    ready = time.perf_counter() - start
    start = time.perf_counter()
    with page.expect_file_chooser() as chooser:
        page.click(".smilekit-upload")
    chooser.value.set_files([str(PHOTO)])
    card = page.locator(".smilekit-face").first
    card.locator(".smilekit-correct").click()
    card.filter(has_text="Saved: correct").wait_for()
    return page, ready, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--db-url", help="default: a temporary SQLite file (PostgreSQL: postgresql+psycopg2://...)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    state = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    port, ports = free_port(), [free_port() for _ in range(args.replicas)]
    env = dict(os.environ, SMILEKIT_DB_URL=args.db_url or f"sqlite:///{state / 'feedback.db'}", SMILEKIT_MODELS_DIR=str(state / "models"),
               SMILEKIT_VENV=str(Path(sys.executable).parent.parent), SMILEKIT_CULL_IDLE="3600")
    env.pop("SMILEKIT_MODEL", None)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        (state / var).mkdir()
        env[var] = str(state / var)
    log = (state / "serve-replicas.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve-replicas"), "--port", str(port),
                             "--replica-ports", ",".join(map(str, ports))], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(url + "voila/static/voila.js", timeout=5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"serve-replicas did not start; see {log.name}")
                time.sleep(0.5)
        wait_idle(proc)
        base_pss, base_cpu = pss_mb(everything(proc)), cpu_s(everything(proc))
        preheated_before = set(kernels(proc))

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            pages, ready, label_and_save = [], [], []
            for _ in range(args.sessions):
                page, r, s = visit(browser, url)
                pages.append(page)
                ready.append(r)
                label_and_save.append(s)
            wait_idle(proc)
            total_pss, total_cpu = pss_mb(everything(proc)), cpu_s(everything(proc))
            now = kernels(proc)
            used = [now[kernel_of(page)] for page in pages]
            fresh = [k for kid, (_, k) in now.items() if kid not in preheated_before and k not in {u for _, u in used}]
            per_replica = [sum(1 for pid, _ in used if pid == server) for server in replica_trees(proc)]
            servers = [tree[0] for tree in replica_trees(proc).values()]
            figures = {
                "replicas": args.replicas, "sessions": args.sessions, "sessions_per_replica": sorted(per_replica),
                "page_ready_s_median": round(statistics.median(ready), 2), "page_ready_s_max": round(max(ready), 2),
                "upload_to_saved_s_median": round(statistics.median(label_and_save), 2),
                "pss_mb_per_session": round((total_pss - base_pss) / args.sessions, 1),
                "pss_mb_used_kernel_mean": round(statistics.mean(pss_mb([k]) for _, k in used), 1),
                "rss_mb_used_kernel_mean": round(statistics.mean(k.memory_info().rss for _, k in used) / 2**20, 1),
                "pss_mb_voila_server_mean": round(statistics.mean(pss_mb([s]) for s in servers), 1),
                "pss_mb_idle_replica": round(base_pss / args.replicas, 1),
                "cpu_s_per_visit": round((total_cpu - base_cpu) / args.sessions, 2),
                "cpu_s_kernel_start_mean": round(statistics.mean(cpu_s([k]) for k in fresh), 2) if fresh else None,
                "cpu_count": psutil.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
            }
            time.sleep(1)
            before, start = cpu_s(everything(proc)), time.monotonic()
            time.sleep(IDLE_WINDOW_S)  # every page open, nobody doing anything: heartbeats and websocket pings only
            figures["core_share_per_idle_session"] = round((cpu_s(everything(proc)) - before) / (time.monotonic() - start) / args.sessions, 4)
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    for name, value in figures.items():
        print(f"{name:28s} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
