"""Shared fixtures: the real face data beside the checkout, temporary Jupyter state."""
from __future__ import annotations

import glob
import importlib.util
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SMILEKIT_TEST_DATA", ROOT.parent / "shared" / "data"))
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: generous limits for a loaded 2-core machine; they bound waits, they are not performance targets
START_TIMEOUT_S = 180
UI_TIMEOUT_MS = 90_000
#: CelebA-subset photos whose single face the detector finds; a 2x2 collage of them has 4 faces
COLLAGE_IDS = (0, 1, 4, 5)


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
    monkeypatch.delenv("SMILEKIT_DB_URL", raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_collage(celeba_dir: Path) -> bytes:
    """Four real faces in a 2x2 grid on white, as one JPEG."""
    photos = [Image.open(celeba_dir / "img" / f"{i}.jpg").convert("RGB") for i in COLLAGE_IDS]
    w, h, gap = photos[0].width, photos[0].height, 40
    collage = Image.new("RGB", (2 * w + 3 * gap, 2 * h + 3 * gap), "white")
    for k, photo in enumerate(photos):
        collage.paste(photo, (gap + (k % 2) * (w + gap), gap + (k // 2) * (h + gap)))
    buf = io.BytesIO()
    collage.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def group_photo(celeba_dir: Path, cols: int, rows: int) -> bytes:
    """``cols`` x ``rows`` real CelebA photos at their own size (178x218), every other row shifted by half a photo
    as people stand in a class photo, on a blue-grey background: a group photo as one JPEG."""
    ids = [i for i in range(cols * rows + 1) if i != 3][: cols * rows]  # photo 3 has no face the detector finds
    w, h, gap = 178, 218, 14
    scene = Image.linear_gradient("L").resize((cols * (w + gap) + gap + w // 2, rows * (h + gap) + gap)).convert("RGB")
    scene = Image.blend(scene, Image.new("RGB", scene.size, (70, 110, 150)), 0.6)
    for k, i in enumerate(ids):
        row, col = divmod(k, cols)
        scene.paste(Image.open(celeba_dir / "img" / f"{i}.jpg").convert("RGB"),
                    (gap + col * (w + gap) + (w // 2 if row % 2 else 0), gap + row * (h + gap)))
    buf = io.BytesIO()
    scene.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def dev_model(request, tmp_path_factory) -> Path:
    """The shipped model if present, else a tiny one trained on a few hundred real faces (once per run)."""
    from smilekit.runtime import SHIPPED_MODEL

    if SHIPPED_MODEL.exists():
        return SHIPPED_MODEL
    path = tmp_path_factory.getbasetemp() / "tiny-model.pt"
    if not path.exists():
        from smilekit.train import TrainConfig, train

        data_root = request.getfixturevalue("shared_data")  # skips when the face data is absent
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SMILEKIT_CACHE", str(tmp_path_factory.getbasetemp() / "tiny-model-cache"))
            train(TrainConfig(data_root=str(data_root), epochs=1, limit=120, out=str(path)))
    return path


@pytest.fixture(scope="session")
def model_path(request, tmp_path_factory) -> Path:
    return dev_model(request, tmp_path_factory)


class VoilaServer:
    """``scripts/serve`` on a free loopback port with its own database and Jupyter state.

    ``env`` adds or overrides settings (for example ``SMILEKIT_DB_URL``). ``url``, ``db_url``,
    ``log`` (the server's output file) and ``proc`` (the process group leader) are public.
    """

    def __init__(self, state: Path, model: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.db_url = f"sqlite:///{state / 'feedback.db'}"
        full_env = dict(os.environ, SMILEKIT_PORT=str(self.port), SMILEKIT_DB_URL=self.db_url, SMILEKIT_MODEL=str(model),
                        SMILEKIT_MODELS_DIR=str(state / "models"), SMILEKIT_VENV=str(Path(sys.executable).parent.parent))
        for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
            (state / var).mkdir(exist_ok=True)
            full_env[var] = str(state / var)
        full_env.update(env or {})
        self.db_url = full_env["SMILEKIT_DB_URL"]
        self.log = state / "voila.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen([str(ROOT / "scripts" / "serve")], cwd=ROOT, env=full_env, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"Voilà exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                pytest.fail(f"Voilà did not answer at {self.url}: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self._log_file.close()


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
