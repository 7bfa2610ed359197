"""Beyond one machine: two replicas behind nginx (scripts/serve-replicas), one PostgreSQL, one models folder.

Visitors in headless Chromium go through the proxy only; each page's kernel is looked up in the replicas'
process trees to know which replica served it, and every click must land as exactly one row in the one database.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from smilekit.store.feedback import FeedbackStore
from smilekit.runtime import SHIPPED_MODEL, export_paths
from conftest import ROOT, START_TIMEOUT_S, UI_TIMEOUT_MS, free_port, kernel_process, new_pg_database, open_app, page_kernel_id, upload

#: new visitors opened at most until nginx has placed one on each replica (placement is random: all 10 land on one replica about once in 500 runs)
MAX_VISITORS = 10
READY_PATH = "/voila/static/voila.js"  # a static file: answers without starting a kernel


def next_model_version(source: Path, folder: Path) -> tuple[Path, str]:
    """A checkpoint (with its ONNX export) whose weights differ slightly from ``source``'s: a new model version."""
    import torch

    from smilekit.learn.model import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(source)
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)
    path = folder / "next.pt"
    saved = save_checkpoint(path, model, meta["arch"], meta.get("arch_kwargs"), temperature=meta.get("temperature", 1.0))
    assert saved["version"] != meta["version"]
    return path, saved["version"]


def shipped_version() -> str:
    return json.loads(export_paths(SHIPPED_MODEL)[1].read_text())["version"]


def _wait_for(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"scripts/serve-replicas exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the proxy did not answer at {url}: {log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def replicas(postgres_server, tmp_path_factory):
    """scripts/serve-replicas: 2 replicas + nginx on loopback ports, one new PostgreSQL database, an empty models folder."""
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").is_file()):
        pytest.skip("nginx is not installed (apt-get install nginx; scripts/setup --test does it)")
    state = tmp_path_factory.mktemp("replicas")
    models = state / "models"
    models.mkdir()
    port, replica_ports = free_port(), [free_port(), free_port()]
    env = dict(os.environ, SMILEKIT_DB_URL=new_pg_database(postgres_server), SMILEKIT_MODELS_DIR=str(models),
               SMILEKIT_VENV=str(Path(sys.executable).parent.parent),
               # a preheated kernel idle past the cull timeout is culled right after a visitor takes it (before the
               # page connects): not this test's subject, so nothing is culled here
               SMILEKIT_CULL_IDLE="3600")
    env.pop("SMILEKIT_MODEL", None)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        (state / var).mkdir()
        env[var] = str(state / var)
    log = state / "serve-replicas.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve-replicas"), "--port", str(port),
                                 "--replica-ports", ",".join(map(str, replica_ports))],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proxy = SimpleNamespace(url=f"http://127.0.0.1:{port}/", db_url=env["SMILEKIT_DB_URL"], models=models, proc=proc, log=log,
                            ports=replica_ports)
    try:
        _wait_for(proxy.url.rstrip("/") + READY_PATH, proc, log)
        yield proxy
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def replica_serving(replicas, page) -> int:
    """The port of the replica whose Voilà runs this page's kernel."""
    kernel_id = page_kernel_id(page)
    for child in psutil.Process(replicas.proc.pid).children():
        port = next((p for p in replicas.ports if f"--port={p}" in child.cmdline()), None)
        if port is not None and kernel_process(SimpleNamespace(proc=child), kernel_id) is not None:
            return port
    pytest.fail(f"kernel {kernel_id} runs under no replica")


def click_correct_and_read_row(replicas, page, photo: Path, photo_count: int) -> dict:
    """Upload a one-face photo, click Correct on its face and return the one row the click added."""
    from playwright.sync_api import expect

    before = _rows(replicas.db_url)
    upload(page, [photo])
    cards = page.locator(".smilekit-face")
    expect(cards).to_have_count(photo_count, timeout=UI_TIMEOUT_MS)
    cards.first.locator(".smilekit-correct").click()  # the newest photo is on top
    expect(cards.first).to_contain_text("Saved: correct", timeout=UI_TIMEOUT_MS)
    after = _rows(replicas.db_url)
    added = [row for row in after if row["id"] not in {r["id"] for r in before}]
    assert len(after) == len(before) + 1 and len(added) == 1, added
    return added[0]


def _rows(db_url: str) -> list[dict]:
    store = FeedbackStore(db_url)
    try:
        return store.rows()
    finally:
        store.close()


@pytest.mark.browser
@pytest.mark.slow
def test_two_replicas_behind_nginx_share_one_database_and_the_promoted_model(replicas, browser, celeba_dir, tmp_path):
    opened = []
    try:
        _visit_both_replicas(replicas, browser, celeba_dir / "img" / "0.jpg", tmp_path, opened)
    finally:
        for page in opened:
            page.close()


def _visit_both_replicas(replicas, browser, photo: Path, tmp_path: Path, opened: list) -> None:
    old_version = shipped_version()

    pages: dict[int, object] = {}  # replica port -> a page it serves
    for _ in range(MAX_VISITORS):
        page = open_app(browser, replicas, 1000)  # a new browser context: no cookie yet
        opened.append(page)
        served_by = replica_serving(replicas, page)
        if served_by in pages:
            continue
        pages[served_by] = page
        if len(pages) == len(replicas.ports):
            break
    assert len(pages) == 2, f"nginx placed {MAX_VISITORS} new visitors all on replica {list(pages)}"
    for page in pages.values():
        assert [c["name"] for c in page.context.cookies()].count("smilekit_replica") == 1

    rows = {port: [click_correct_and_read_row(replicas, page, photo, 1)] for port, page in pages.items()}
    assert all(r[0]["model_version"] == old_version for r in rows.values())

    # a model promoted into the shared folder after the replicas started: open sessions use it at their next upload
    from smilekit.learn.retrain import promote

    checkpoint, new_version = next_model_version(SHIPPED_MODEL, tmp_path)
    promote(checkpoint, replicas.models)
    for port, page in pages.items():
        row = click_correct_and_read_row(replicas, page, photo, 2)
        assert row["model_version"] == new_version, f"replica {port} still labels with {row['model_version']}"
        assert row["session_id"] == rows[port][0]["session_id"]  # the same kernel: the websocket stayed on its replica
        rows[port].append(row)
    # and a new visitor, who takes a kernel preheated before the promotion
    newcomer = open_app(browser, replicas, 1000)
    opened.append(newcomer)
    late = click_correct_and_read_row(replicas, newcomer, photo, 1)
    assert late["model_version"] == new_version
    rows[replica_serving(replicas, newcomer)].append(late)

    everything = _rows(replicas.db_url)
    assert len(everything) == 5  # exactly one row per click, from both replicas, in the one database
    assert sorted(r["id"] for rs in rows.values() for r in rs) == sorted(r["id"] for r in everything)
    assert len({rs[0]["session_id"] for rs in rows.values()}) == 2
    assert "Kernel does not exist" not in replicas.log.read_text()  # no request reached a replica without the page's kernel


def test_a_running_app_switches_to_a_promoted_model(tmp_path, monkeypatch, celeba_dir):
    """Without a browser: the app of a kernel started before a promotion labels its next upload with the new model,
    and its feedback rows carry the version that labelled each photo."""
    from smilekit.learn.retrain import promote
    from smilekit.app.ui import SmileApp

    models = tmp_path / "models"
    monkeypatch.setenv("SMILEKIT_MODELS_DIR", str(models))
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    app = SmileApp(store=store)
    face = (celeba_dir / "img" / "0.jpg").read_bytes()
    assert app.handle_upload([("before.jpg", face)]) == [0]
    checkpoint, new_version = next_model_version(SHIPPED_MODEL, tmp_path)
    promote(checkpoint, models)
    assert app.handle_upload([("after.jpg", face)]) == [1]
    assert [p.prediction.model_version for p in app.photos] == [shipped_version(), new_version]
    app.give_feedback(0, 0, True)
    app.give_feedback(1, 0, True)
    assert sorted(r["model_version"] for r in store.rows()) == sorted([shipped_version(), new_version])
    assert app.use_current_model() is False  # nothing new since
    (models / "broken.pt").write_bytes(b"not a checkpoint")  # newest now, and unreadable: the app keeps its model
    assert app.use_current_model() is False and app.predictor.version == new_version
    store.close()
