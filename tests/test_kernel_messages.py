"""Crafted widget messages sent straight to an app kernel, as a hostile page could send them.

A real ipykernel runs the app as Voilà would (``VOILA_BASE_URL`` set); the test speaks the
kernel protocol itself, so it can send what no honest browser sends, and reads every message
the kernel publishes back: none may carry a traceback.
"""
from __future__ import annotations

import json
import os
import queue
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client.manager")

pytestmark = pytest.mark.slow

APP_CODE = """
from smilekit.app.ui import SmileApp
app = SmileApp()
app.widget
"""


class Kernel:
    """One kernel, with helpers to run code and to send comm messages to widgets."""

    def __init__(self, env: dict[str, str]):
        self.manager, self.client = jupyter_client.start_new_kernel(kernel_name="python3", env=env)
        self.published: list[dict] = []

    def run(self, code: str) -> str:
        msg_id = self.client.execute(code)
        out = []
        while True:
            msg = self.client.get_iopub_msg(timeout=120)
            self.published.append(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            if msg["msg_type"] == "error":
                raise AssertionError(f"test code failed in the kernel: {msg['content']['ename']}")
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)

    def send_update(self, comm_id: str, state, buffers: list[bytes] | None = None, buffer_paths=None) -> None:
        data = {"method": "update", "state": state, "buffer_paths": buffer_paths or []}
        msg = self.client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.client.session.send(self.client.shell_channel.socket, msg, buffers=buffers or [])

    def drain(self, seconds: float) -> None:
        """Collect what the kernel publishes until it has been quiet for ``seconds``."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < seconds:
            try:
                self.published.append(self.client.get_iopub_msg(timeout=0.2))
                quiet_since = time.monotonic()
            except queue.Empty:
                pass

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel(model_path, tmp_path):
    env = {"VOILA_BASE_URL": "/", "SMILEKIT_MODEL": str(model_path), "SMILEKIT_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}"}
    k = Kernel({**os.environ, **env})
    try:
        k.run(APP_CODE)
        yield k
    finally:
        k.close()


def _ids(kernel) -> dict[str, str]:
    return json.loads(kernel.run("import json; print(json.dumps({'upload': app.upload.model_id, "
                                 "'consent': app.consent_box.model_id}))"))


def _errors(kernel) -> list[str]:
    return json.loads(kernel.run("import json; print(json.dumps([b.value for b in app.messages.children]))"))


def test_crafted_widget_messages_send_no_traceback(kernel):
    ids = _ids(kernel)
    start = len(kernel.published)
    kernel.send_update(ids["upload"], {"value": "not a list"})
    kernel.send_update(ids["upload"], {"value": [{}]})  # an entry with no keys
    kernel.send_update(ids["upload"], {"value": [{"name": "x.jpg", "type": "image/jpeg", "size": 3, "content": "abc",
                                                  "last_modified": 0}]})  # content as a string
    kernel.send_update(ids["consent"], {"value": "yes please"})  # not a bool
    kernel.send_update(ids["consent"], {"no_such_trait": 1, "layout": "IPY_MODEL_nothing"})
    kernel.send_update("no-such-comm", {"value": 1})
    kernel.drain(2.0)
    sent = kernel.published[start:]
    assert [m for m in sent if m["msg_type"] == "error"] == []
    assert not any("Traceback" in json.dumps(m["content"], default=str) for m in sent)
    messages = _errors(kernel)
    assert any("x.jpg" in m and "could not be read" in m for m in messages)


def test_a_message_with_many_photos_is_cut_to_the_limit(kernel):
    from io import BytesIO

    from PIL import Image

    from smilekit.app.ui import MAX_FILES_PER_UPLOAD

    buf = BytesIO()
    Image.new("RGB", (40, 40), "grey").save(buf, format="PNG")
    count = 300
    entries = [{"name": f"{n}.png", "type": "image/png", "size": len(buf.getvalue()), "last_modified": 0}
               for n in range(count)]
    ids = _ids(kernel)
    start = time.monotonic()
    kernel.send_update(ids["upload"], {"value": entries}, buffers=[buf.getvalue()] * count,
                       buffer_paths=[["value", n, "content"] for n in range(count)])
    kernel.drain(1.0)
    photos = int(kernel.run("print(len(app.photos))"))
    took = time.monotonic() - start
    assert photos == MAX_FILES_PER_UPLOAD
    assert any(f"{count} photos were sent at once" in m for m in _errors(kernel))
    print(f"300-photo message handled in {took:.1f} s (2 shared cores)")
