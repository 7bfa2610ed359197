"""The app's container image built and run with podman: health check, a verdict through the real page into the
/data volume, kept across a restart, and the health check on another port.

The image is built by ``scripts/container build``: on the official Python base when a registry answers, else on
a local Debian base made once with debootstrap and kept in ``~/.cache/smilekit-container`` (or
``SMILEKIT_CONTAINER_CACHE``). Skipped where podman is missing or cannot run containers (docker is not used: on
machines like this one it is only a client without an engine).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, UI_TIMEOUT_MS, free_port, judge_one_face, open_app

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CONTAINER = ROOT / "scripts" / "container"
IMAGE = "localhost/smilekit"
#: bounds the waits on a loaded 2-core machine; not a performance target
HEALTHY_TIMEOUT_S = 180
BUILD_TIMEOUT_S = 1800


def podman(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    """podman through scripts/container (runc, this host's ulimits)."""
    result = subprocess.run([str(CONTAINER), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/setup --test installs it on Debian); no container engine to run the image")
    info = podman("info", check=False)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    log = tmp_path_factory.mktemp("container") / "build.log"
    with log.open("w") as out:
        built = subprocess.run([str(CONTAINER), "build"], stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
    assert built.returncode == 0, f"the image did not build: {log.read_text()[-3000:]}"
    return IMAGE


@pytest.fixture
def volume():
    name = f"smilekit-test-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", name)
    yield name
    podman("volume", "rm", "-f", name, check=False)


class Container:
    """One container of the image, started detached with its port published on the loopback."""

    def __init__(self, image: str, volume: str | None = None, port: int = 8080):
        self.name = f"smilekit-test-{uuid.uuid4().hex[:8]}"
        self.host_port = free_port()
        args = ["run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.host_port}:{port}", "-e", f"SMILEKIT_PORT={port}"]
        if volume:
            args += ["-v", f"{volume}:/data"]
        podman(*args, image)
        self.url = f"http://127.0.0.1:{self.host_port}/"

    def wait_healthy(self) -> str:
        """Run the image's HEALTHCHECK until it passes (podman runs it on a timer only under systemd); the status."""
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while podman("healthcheck", "run", self.name, check=False).returncode != 0:
            if time.monotonic() > deadline:
                logs = podman("logs", self.name, check=False)
                pytest.fail(f"{self.name} never became healthy: {(logs.stdout + logs.stderr)[-2000:]}")
            time.sleep(2)
        return podman("inspect", "--format", "{{.State.Health.Status}}", self.name).stdout.strip()

    def stop(self) -> None:
        podman("stop", "-t", "20", self.name, check=False, timeout=60)

    def start(self) -> None:
        podman("start", self.name)

    def remove(self) -> None:
        podman("rm", "-f", self.name, check=False, timeout=60)


def stored_verdicts(volume: str) -> list[tuple]:
    """The feedback rows in the volume's database, read from the host."""
    mountpoint = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
    db = sqlite3.connect(f"file:{mountpoint / 'feedback.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT verdict, model_version FROM feedback").fetchall()
    finally:
        db.close()


def test_image_serves_keeps_feedback_in_its_volume_across_a_restart(image, volume, browser, celeba_dir):
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    container = Container(image, volume)
    try:
        assert container.wait_healthy() == "healthy"
        page = open_app(browser, SimpleNamespace(url=container.url), 1280)
        judge_one_face(page, celeba_dir / "img" / "0.jpg")
        page.close()
        rows = stored_verdicts(volume)
        assert [r[0] for r in rows] == ["correct"]

        container.stop()
        container.start()
        assert container.wait_healthy() == "healthy"
        assert stored_verdicts(volume) == rows  # the volume outlives the container's process
        page = open_app(browser, SimpleNamespace(url=container.url), 1280)
        expect(page.locator(".smilekit-metrics")).to_contain_text("Feedback given: 1")
        page.close()
    finally:
        container.remove()
        expect.set_options(timeout=5_000)


def test_health_check_follows_the_port(image):
    container = Container(image, port=9123)
    try:
        assert container.wait_healthy() == "healthy"
    finally:
        container.remove()
