"""Helpers shared by the tests (through conftest) and the benchmarks: free ports, test photos, the served app.

Free of pytest and of smilekit, so a benchmark script can import them (``sys.path`` gets ``tests/``).
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: a generous limit for a loaded 2-core machine; it bounds the wait, it is not a performance target
START_TIMEOUT_S = 180
#: CelebA-subset photos whose single face the detector finds; a 2x2 collage of them has 4 faces
COLLAGE_IDS = (0, 1, 4, 5)


def run_coroutine(coroutine):
    """``asyncio.run(coroutine)`` on a thread of its own, returning its result: Playwright's sync API (the browser
    tests) leaves an event loop marked as running on the main thread for the whole session."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


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


class VoilaServer:
    """``scripts/serve`` on a free loopback port with its own database and Jupyter state.

    ``model`` None serves the app's default model. ``env`` adds or overrides settings (for example
    ``SMILEKIT_DB_URL`` or ``SMILEKIT_PREHEAT``). ``root``: the checkout whose ``scripts/serve`` and package
    run (another tree's, to compare versions). ``ready_path``: what must answer 200 before the server counts as
    started (the app's page by default, which takes a kernel; a static file takes none). ``command``: what to run
    instead of ``scripts/serve`` (``scripts/serve-replicas`` with its options, say), listening on ``port`` (default a
    free one). Raises RuntimeError if it does not start. ``url``, ``db_url``, ``log`` (the server's output file) and ``proc`` (the process group
    leader) are public.
    """

    def __init__(self, state: Path, model: Path | None, env: dict[str, str] | None = None, root: Path = ROOT,
                 ready_path: str = "", command: list[str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.db_url = f"sqlite:///{state / 'feedback.db'}"
        full_env = dict(os.environ, SMILEKIT_PORT=str(self.port), SMILEKIT_DB_URL=self.db_url,
                        SMILEKIT_VENV=str(Path(sys.executable).parent.parent))
        if root != ROOT:  # that tree's package, not the one installed from this checkout
            full_env["PYTHONPATH"] = str(root)
        if model is not None:  # else the app's own choice (promoted, else shipped model)
            full_env.update(SMILEKIT_MODEL=str(model), SMILEKIT_MODELS_DIR=str(state / "models"))
        for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
            (state / var).mkdir(exist_ok=True)
            full_env[var] = str(state / var)
        full_env.update(env or {})
        self.db_url = full_env["SMILEKIT_DB_URL"]
        self.log = state / "voila.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(command or [str(root / "scripts" / "serve")], cwd=root, env=full_env, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Voilà exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"Voilà did not answer at {self.url}: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def kernels(self) -> list:
        """The kernel processes under the server (psutil)."""
        import psutil

        found = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "ipykernel" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:  # ended while we looked
                continue
        return found

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


