"""benchmarks/kernel_client.py, the protocol visitor of bench_load.py --protocol: its frames against jupyter_server's
own (de)serializer, and one or two visitors against the app as scripts/serve runs it (no timings asserted)."""
from __future__ import annotations

import json
import sqlite3
import time

import pytest
from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1, serialize_msg_to_ws_v1

from conftest import VoilaServer, load_benchmark
from helpers import run_coroutine
from smilekit.serve.wsguard import v1_frame_is_valid

kernel_client = load_benchmark("kernel_client")
bench_load = load_benchmark("bench_load")


def test_v1_frames_are_the_ones_jupyter_server_reads_and_writes():
    header, parent, metadata, content = {"msg_id": "a", "msg_type": "comm_msg"}, {}, {"m": 1}, {"comm_id": "c", "data": {}}
    buffers = [b"\xff\xd8 a photo", b""]
    frame = kernel_client.encode_v1("shell", header, parent, metadata, content, buffers)
    assert v1_frame_is_valid(frame)
    channel, parts = deserialize_msg_from_ws_v1(frame)  # what the server does with a page's frame
    assert channel == "shell"
    assert [json.loads(p) for p in parts[:4]] == [header, parent, metadata, content] and parts[4:] == buffers

    server_frame = serialize_msg_to_ws_v1([json.dumps(p).encode() for p in (header, parent, metadata, content)] + buffers, "iopub")
    decoded = kernel_client.decode_v1(server_frame)  # what the server sends to a page
    assert (decoded["channel"], decoded["header"], decoded["content"], decoded["buffers"]) == ("iopub", header, content, buffers)
    with pytest.raises(ValueError):
        kernel_client.decode_v1(serialize_msg_to_ws_v1([b"{}", b"{}"], "iopub"))


def test_widget_states_follow_the_kernels_messages():
    states = kernel_client.WidgetStates()
    states.restore({"app": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_g"], "_dom_classes": ["smilekit-app"]}},
                    "g": {"model_name": "VBoxModel", "state": {"children": []}}})
    opened = {"header": {"msg_type": "comm_open"}, "content": {"comm_id": "b", "target_name": "jupyter.widget",
                                                                "data": {"state": {"_model_name": "ButtonModel", "_dom_classes": []}}}}
    update = {"header": {"msg_type": "comm_msg"}, "content": {"comm_id": "g", "data": {"method": "update", "state": {"children": ["IPY_MODEL_b"]}}}}
    assert states.apply(opened) == "b" and states.apply(update) == "g"
    assert states.with_class("smilekit-app") == ["app"] and states.descendants("app") == ["g", "b"]
    states.apply({"header": {"msg_type": "comm_close"}, "content": {"comm_id": "b"}})
    assert "b" not in states.states


def test_a_page_keeps_its_http_connections_open_and_reuses_them_as_a_browser_does():
    """20 GETs 6 at a time on at most 6 connections; a server's Connection: close and an idle connection the server
    has closed meanwhile each cost a new connection, and the request still gets its answer."""
    import asyncio
    import socket

    import tornado.web
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    seen: list[int] = []  # the server's connection (stream) of every request

    class Asset(tornado.web.RequestHandler):
        def get(self, name):
            seen.append(id(self.request.connection.stream))
            if name == "last":
                self.set_header("Connection", "close")
            self.write(name * 1000)

    async def visit():
        [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        server = HTTPServer(tornado.web.Application([(r"/(\w+)", Asset)]), idle_connection_timeout=0.5)
        server.add_sockets([sock])
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        http = kernel_client.KeepAliveHTTP()
        try:
            answers = await asyncio.gather(*(http.get(f"{url}a{k}", {}, 10) for k in range(20)))
            assert [a.code for a in answers] == [200] * 20 and answers[7].body == b"a7" * 1000
            assert http.opened == len(set(seen)) <= kernel_client.CONNECTIONS_PER_PAGE and len(http.idle) == http.opened
            opened = http.opened
            assert (await http.get(f"{url}last", {}, 10)).body == b"last" * 1000
            assert http.opened == opened and len(http.idle) == opened - 1  # answered on a kept one, which then went
            await asyncio.sleep(1.0)  # the server closes the connections kept idle
            assert (await http.get(f"{url}again", {}, 10)).code == 200
            assert http.opened == opened + 1
        finally:
            http.close()
            server.stop()

    run_coroutine(visit())


@pytest.fixture(scope="module")
def one_place(model_path, tmp_path_factory):
    """The app as scripts/serve runs it, with room for one session."""
    served = VoilaServer(tmp_path_factory.mktemp("voila-state"), model_path, {"SMILEKIT_MAX_SESSIONS": "1"},
                         ready_path="voila/static/voila.js")
    yield served
    served.close()


def _rows(server: VoilaServer) -> int:
    with sqlite3.connect(server.db_url.removeprefix("sqlite:///")) as conn:
        return conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


def test_a_protocol_visitor_loads_the_page_uploads_a_real_photo_and_saves_one_verdict(one_place, celeba_dir):
    async def visit():
        page = kernel_client.ProtocolVisitor(one_place.url, timeout_s=90)
        await page.get_page()
        assert page.assets and all(a.startswith(one_place.url) for a in page.assets)  # the page's scripts and styles
        assert await page.get_assets() > 0
        assert (await page.get_kernel_model())["id"] == page.kernel_id
        await page.connect()
        assert (await page.kernel_info())["status"] == "ok"
        assert await page.restore_widgets() == len(page.widgets.states) > 10
        assert page.widgets.with_class("smilekit-upload")
        button = await page.upload(celeba_dir / "img" / "0.jpg")
        assert "Smiling" in page.card_text(button) and "Was the model right?" in page.card_text(button)
        await page.click_correct(button)
        assert "Saved: correct" in page.card_text(button)
        page.close()

    run_coroutine(visit())
    assert _rows(one_place) == 1


def test_beyond_the_limit_a_visitor_is_told_to_retry_and_is_served_once_the_tab_before_has_closed(one_place, celeba_dir):
    async def visits():
        async with bench_load.ProtocolVisitors() as driver:
            first, served = await driver.open(one_place.url, 90)
            assert served.outcome == "served" and served.page_ready_s is not None
            _, turned_away = await driver.open(one_place.url, 90, retry=False)
            assert (turned_away.outcome, turned_away.busy_answers) == ("busy", 1) and turned_away.first_answer_s is not None
            await driver.close(first)
            started = time.perf_counter()
            second, waited = await driver.open(one_place.url, 90)  # the busy page's retries, until the closed tab's place is free
            assert waited.outcome == "served" and waited.busy_answers >= 1 and waited.page_ready_s <= time.perf_counter() - started + 0.01
            await driver.use(second, waited, celeba_dir / "img" / "1.jpg")
            assert waited.clicked and waited.upload_to_label_s is not None and waited.click_to_saved_s is not None
            await driver.close(second)

    before = _rows(one_place)
    run_coroutine(visits())
    assert _rows(one_place) == before + 1
