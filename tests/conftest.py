"""Shared fixtures: the real face data beside the checkout, temporary Jupyter state; helpers come from helpers.py."""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from helpers import (CHROMIUM, CHROMIUM_ARGS, COLLAGE_IDS, ROOT, START_TIMEOUT_S, VoilaServer, free_port,  # noqa: F401 - for tests
                     group_photo, make_collage)

SHARED_DATA = Path(os.environ.get("SMILEKIT_TEST_DATA", ROOT.parent / "shared" / "data"))
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
#: a generous limit for a loaded 2-core machine; it bounds waits, it is not a performance target
UI_TIMEOUT_MS = 90_000


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real face data not found at {path} (put the shared data beside the checkout or set SMILEKIT_TEST_DATA)")
    return path


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (a script folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses (and pickling) look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The data root holding smilesmiled/ and celeba-subset/."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def smilesmiled_dir(shared_data) -> Path:
    return _require(shared_data / "smilesmiled")


@pytest.fixture(scope="session")
def celeba_dir(shared_data) -> Path:
    return _require(shared_data / "celeba-subset")


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Keep caches, databases and Jupyter state out of the project and the home folder."""
    state = tmp_path_factory.getbasetemp() / "state"
    for var, sub in (("SMILEKIT_CACHE", "cache"), ("JUPYTER_CONFIG_DIR", "jupyter-config"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
        (state / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(state / sub))
    monkeypatch.setenv("SMILEKIT_MODELS_DIR", str(state / "no-promoted-models"))
    monkeypatch.delenv("SMILEKIT_MODEL", raising=False)
    monkeypatch.setenv("SMILEKIT_DB_URL", f"sqlite:///{tmp_path_factory.mktemp('db') / 'feedback.db'}")  # one per test


def dev_model(request, tmp_path_factory) -> Path:
    """The shipped model if present, else a tiny one trained on a few hundred real faces (once per run)."""
    from smilekit.runtime import SHIPPED_MODEL

    if SHIPPED_MODEL.exists():
        return SHIPPED_MODEL
    path = tmp_path_factory.getbasetemp() / "tiny-model.pt"
    if not path.exists():
        from smilekit.learn.train import TrainConfig, train

        data_root = request.getfixturevalue("shared_data")  # skips when the face data is absent
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SMILEKIT_CACHE", str(tmp_path_factory.getbasetemp() / "tiny-model-cache"))
            train(TrainConfig(data_root=str(data_root), epochs=1, limit=120, out=str(path)))
    return path


@pytest.fixture(scope="session")
def model_path(request, tmp_path_factory) -> Path:
    return dev_model(request, tmp_path_factory)


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed at /usr/bin/chromium (apt-get install chromium); browser tests skipped")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    """The app as scripts/serve runs it, one per test module, with its own database and Jupyter state."""
    served = VoilaServer(tmp_path_factory.mktemp("voila-state"), model_path)
    yield served
    served.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    """Where browser tests save screenshots: ``SMILEKIT_SCREENSHOTS`` if set (to look at them), else a temporary folder."""
    folder = Path(os.environ["SMILEKIT_SCREENSHOTS"]) if os.environ.get("SMILEKIT_SCREENSHOTS") else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_app(browser, server: VoilaServer, width: int):
    """A new page on the app, once its upload button is there."""
    page = browser.new_page(viewport={"width": width, "height": 2400})
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(server.url)
    page.wait_for_selector(".smilekit-upload")
    return page


def page_kernel_id(page) -> str:
    """The id of the kernel Voilà gave this page."""
    return page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")


def kernel_process(server: VoilaServer, kernel_id: str):
    """The kernel's process under the server (psutil), or None when it is gone."""
    import psutil

    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if any(f"kernel-{kernel_id}.json" in part for part in child.cmdline()):
                return child
        except psutil.NoSuchProcess:  # ended while we looked
            continue
    return None


def upload(page, paths) -> None:
    """Pick files in the app's upload dialog."""
    with page.expect_file_chooser() as chooser:
        page.click(".smilekit-upload")
    chooser.value.set_files([str(p) for p in paths])


def judge_one_face(page, photo) -> None:
    """Upload ``photo`` (one face) on an open app page, click Correct on its card and wait until it is saved."""
    from playwright.sync_api import expect

    upload(page, [photo])
    card = page.locator(".smilekit-face")
    expect(card).to_have_count(1)
    card.locator(".smilekit-correct").click()
    expect(card).to_contain_text("Saved: correct")


def new_pg_database(postgres_server: str) -> str:
    """A new, empty PostgreSQL database on the test server (``postgres_server``'s URL); returns its URL."""
    import psycopg2
    from sqlalchemy import make_url

    url = make_url(postgres_server)
    name = f"feedback_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return url.set(database=name).render_as_string(hide_password=False)


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the postgres user when we are root."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server from Debian's postgresql package; yields a URL prefix (a superuser's)."""
    if not PG_BIN or not Path(PG_BIN[-1], "initdb").exists():
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg2")
    bindir = Path(PG_BIN[-1])
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
    home = Path(tempfile.mkdtemp(prefix="smilekit-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    data, log = home / "data", home / "server.log"
    port = free_port()
    subprocess.run(_as_postgres_user([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "smilekit", "--no-sync"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                      "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
                   check=True, capture_output=True)
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="smilekit", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE feedback_test")
        conn.close()
        yield f"postgresql+psycopg2://smilekit@127.0.0.1:{port}/feedback_test"
    finally:
        subprocess.run(_as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
