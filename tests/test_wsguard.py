"""The kernel websocket guard: frame validators, Voilà's outgoing header reader, and the real server
surviving hostile frames (one 8-byte frame used to freeze it while its memory grew ~45 MB/s)."""
from __future__ import annotations

import json
import os
import re
import signal
import struct
import time
import urllib.error
import urllib.request

import pytest
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

from smilekit.serve import wsguard
from smilekit.serve.wsguard import (
    V1_SUBPROTOCOL,
    GuardedKernelConnection,
    frame_is_valid,
    legacy_frame_is_valid,
    read_header_from_binary_message,
    v1_frame_is_valid,
)
from conftest import ROOT, VoilaServer, dev_model

SESSION = Session(key=b"")
#: the frame from the bug report: a little-endian count of about 1.08e18
HOSTILE_8_BYTES = b"\xff" * 7 + b"\x0f"
#: a tiny PNG-looking payload for an Image widget's binary ``value``
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def _message(msg_type="kernel_info_request", content=None, **kwargs):
    return SESSION.msg(msg_type, content=content or {}, **kwargs)


def _v1_frame(msg=None, buffers=(), channel="shell") -> bytes:
    msg = msg or _message()
    parts = [SESSION.pack(msg["header"]), SESSION.pack(msg["parent_header"]), SESSION.pack(msg["metadata"]),
             SESSION.pack(msg["content"]), *buffers]
    return serialize_msg_to_ws_v1(parts, channel)


def _legacy_frame(msg=None, buffers=(), channel="shell") -> bytes:
    msg = dict(msg or _message(), channel=channel, buffers=list(buffers))
    return serialize_binary_message(msg)


def _with_v1_count(frame: bytes, count: int) -> bytes:
    return count.to_bytes(8, "little") + frame[8:]


def _with_v1_offset(frame: bytes, index: int, value: int) -> bytes:
    start = 8 * (index + 1)
    return frame[:start] + value.to_bytes(8, "little") + frame[start + 8:]


def _with_legacy_offset(frame: bytes, index: int, value: int) -> bytes:
    start = 4 * (index + 1)
    return frame[:start] + value.to_bytes(4, "big") + frame[start + 4:]


# --- validators -------------------------------------------------------------------------------

@pytest.mark.parametrize("buffers", [(), (b"",), (PICTURE, b"", b"x" * 1000)])
def test_frames_serialized_by_jupyter_server_are_valid(buffers):
    v1, legacy = _v1_frame(buffers=buffers), _legacy_frame(buffers=buffers)
    assert v1_frame_is_valid(v1) and v1_frame_is_valid(bytearray(v1)) and v1_frame_is_valid(memoryview(v1))
    assert legacy_frame_is_valid(legacy) and legacy_frame_is_valid(memoryview(legacy))
    assert frame_is_valid(v1, V1_SUBPROTOCOL) and frame_is_valid(legacy, None)
    assert deserialize_binary_message(legacy)["buffers"] == list(buffers)


def test_a_frame_of_one_protocol_is_not_valid_in_the_other():
    assert not v1_frame_is_valid(_legacy_frame()) and not v1_frame_is_valid(_legacy_frame(buffers=[PICTURE]))
    assert not legacy_frame_is_valid(_v1_frame()) and not legacy_frame_is_valid(_v1_frame(buffers=[PICTURE]))


def test_text_messages_are_for_the_legacy_protocol_only():
    text = json.dumps(dict(_message(), channel="shell"), default=str)
    assert frame_is_valid(text, None)
    assert not frame_is_valid(text, V1_SUBPROTOCOL)


V1_HOSTILE = {
    "empty": b"",
    "shorter than 8 bytes": b"\x06\x00\x00\x00\x00\x00\x00",
    "the reported 8-byte frame": HOSTILE_8_BYTES,
    "count of 2**64-1": b"\xff" * 64,
    "huge count, valid-looking prefix": _with_v1_count(_v1_frame(), 2**40),
    "count one more than written": _with_v1_count(_v1_frame(), 7),
    "too few parts": _with_v1_count(_v1_frame(), 2),
    "zero count": bytes(8),
    "offset past the end": _with_v1_offset(_v1_frame(), 5, 10**6),
    "decreasing offsets": _with_v1_offset(_v1_frame(), 2, 60),
    "offset inside the table": _with_v1_offset(_v1_frame(), 0, 16),
    "not bytes": "x" * 64,
    "None": None,
}

LEGACY_HOSTILE = {
    "empty": b"",
    "shorter than 4 bytes": b"\x00\x00\x01",
    "count of 2**31-1": b"\x7f\xff\xff\xff" + bytes(4),
    "huge count, valid-looking prefix": (2**30).to_bytes(4, "big") + _legacy_frame()[4:],
    "negative count": b"\xff\xff\xff\xff" + bytes(8),
    "zero count": bytes(8),
    "count past the table": (3).to_bytes(4, "big") + _legacy_frame()[4:12],
    "offset past the end": _with_legacy_offset(_legacy_frame(buffers=[PICTURE]), 1, 10**6),
    "decreasing offsets": _with_legacy_offset(_legacy_frame(buffers=[PICTURE, b"ab"]), 2, 20),
    "offset inside the table": _with_legacy_offset(_legacy_frame(), 0, 2),
    "the reported 8-byte frame": HOSTILE_8_BYTES,
    "None": None,
}


@pytest.mark.parametrize("subprotocol, name", [(V1_SUBPROTOCOL, n) for n in V1_HOSTILE] + [(None, n) for n in LEGACY_HOSTILE])
def test_hostile_frames_are_invalid(subprotocol, name):
    """Each check is bounded by the frame's length, not its declared count (a loop over 2**63 would hang here)."""
    if subprotocol:
        frame = V1_HOSTILE[name]
        assert not v1_frame_is_valid(frame)
        assert read_header_from_binary_message(frame) is None
    else:
        frame = LEGACY_HOSTILE[name]
        assert not legacy_frame_is_valid(frame)
    assert not frame_is_valid(frame, subprotocol)


# --- Voilà's outgoing direction -----------------------------------------------------------------

def test_safe_header_reader_reads_v1_and_ignores_the_rest():
    msg = _message("execute_input", {"code": "1", "execution_count": 1})
    assert read_header_from_binary_message(_v1_frame(msg, buffers=[PICTURE], channel="iopub")) == json.loads(SESSION.pack(msg["header"]))
    assert read_header_from_binary_message(_legacy_frame(msg, buffers=[PICTURE])) is None
    not_json = _v1_frame(msg)
    start = int.from_bytes(not_json[16:24], "little")
    assert read_header_from_binary_message(not_json[:start] + b"\xff" + not_json[start + 1:]) is None
    assert read_header_from_binary_message(serialize_msg_to_ws_v1([b"[1]", b"{}", b"{}", b"{}"], "iopub")) is None


def test_voila_handler_uses_the_safe_reader_for_outgoing_frames(monkeypatch):
    """A legacy-protocol binary frame leaving the server used to be read as v1 (count near 10**18)."""
    from voila.tornado import kernel_websocket_handler as voila_ws

    assert voila_ws.read_header_from_binary_message is wsguard.read_header_from_binary_message
    written = []
    monkeypatch.setattr(voila_ws.WebsocketHandler, "write_message", lambda self, message, binary=False: written.append(message))
    handler = object.__new__(voila_ws.VoilaKernelWebsocketHandler)
    legacy = _legacy_frame(_message("comm_msg", {"comm_id": "c", "data": {}}), buffers=[PICTURE], channel="iopub")
    assert legacy[:8] == b"\x00\x00\x00\x02\x00\x00\x00\x0c"  # as v1: a count of 8.6e17
    voila_ws.VoilaKernelWebsocketHandler.write_message(handler, legacy, binary=True)
    assert written == [legacy]
    # Voilà's own filter still works on v1: execute_input is not sent to the page
    voila_ws.VoilaKernelWebsocketHandler.write_message(handler, _v1_frame(_message("execute_input"), channel="iopub"), binary=True)
    assert written == [legacy]


def test_voila_json_selects_the_guarded_connection():
    config = json.loads((ROOT / "voila.json").read_text())
    name = config["Voila"]["kernel_websocket_connection_class"]
    module, _, cls = name.rpartition(".")
    assert getattr(__import__(module, fromlist=[cls]), cls) is GuardedKernelConnection


# --- the real server ----------------------------------------------------------------------------

def _max_message_size() -> int:
    return json.loads((ROOT / "voila.json").read_text())["Voila"]["tornado_settings"]["websocket_max_message_size"]


def _kill(server: VoilaServer) -> None:
    """SIGKILL the server's process group: a frozen server ignores SIGTERM while its memory grows."""
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _answer_time(server: VoilaServer, timeout: float = 1.0) -> float:
    """Seconds the server takes to serve a static file; kills it and fails the test past ``timeout``."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(server.url + "voila/static/voila.js", timeout=timeout) as response:
            response.read()
    except OSError as exc:
        _kill(server)
        pytest.fail(f"the server did not answer within {timeout} s ({exc!r}); killed it")
    return time.monotonic() - started


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    psutil = pytest.importorskip("psutil")
    model = dev_model(request, tmp_path_factory)
    served = VoilaServer(tmp_path_factory.mktemp("voila-state"), model)
    served.process = psutil.Process(served.proc.pid)  # scripts/serve execs Voilà: the server itself, not its kernels
    assert "smilekit.serve.server" in " ".join(served.process.cmdline())
    with urllib.request.urlopen(served.url, timeout=60) as response:
        served.kernel_id = re.search(r'"kernelId": "([0-9a-f-]{36})"', response.read().decode()).group(1)
    yield served
    try:
        urllib.request.urlopen(served.url + "voila/static/voila.js", timeout=2).read()
    except OSError:
        _kill(served)
    served.close()


def _connect(server, session_id: str, v1: bool):
    websocket = pytest.importorskip("websocket")
    url = server.url.replace("http://", "ws://") + f"api/kernels/{server.kernel_id}/channels?session_id={session_id}"
    ws = websocket.create_connection(url, subprotocols=[V1_SUBPROTOCOL] if v1 else None, timeout=60)
    assert ws.getsubprotocol() == (V1_SUBPROTOCOL if v1 else None)
    return ws


def _receive(server, ws, wanted, timeout: float = 30):
    """Messages from the socket until ``wanted(opcode, data)`` is true; returns that one.
    If none comes in time, checks first whether the server is frozen (and kills it if so)."""
    websocket = pytest.importorskip("websocket")
    deadline = time.monotonic() + timeout
    ws.settimeout(timeout)
    try:
        while time.monotonic() < deadline:
            opcode, data = ws.recv_data(control_frame=True)
            if wanted(opcode, data):
                return opcode, data
    except websocket.WebSocketTimeoutException:
        pass
    _answer_time(server)
    pytest.fail("the expected message never came")


HOSTILE_SENDS = {
    "v1, the reported 8-byte frame": (True, HOSTILE_8_BYTES),
    "v1, huge count with a valid-looking prefix": (True, V1_HOSTILE["huge count, valid-looking prefix"]),
    "legacy, count of 2**31-1": (False, LEGACY_HOSTILE["count of 2**31-1"]),
    "legacy, huge count with a valid-looking prefix": (False, LEGACY_HOSTILE["huge count, valid-looking prefix"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", HOSTILE_SENDS)
def test_one_hostile_frame_neither_freezes_nor_bloats_the_server(server, name):
    v1, frame = HOSTILE_SENDS[name]
    ws = _connect(server, f"hostile-{len(name)}-{time.monotonic_ns()}", v1)
    try:
        _answer_time(server)
        rss_before = server.process.memory_info().rss
        sent = time.monotonic()
        ws.send_binary(frame)
        time.sleep(0.2)  # let the server read the frame before asking it for a page
        answer_s = _answer_time(server)
        # the guard closes the socket with 1007 (invalid payload) instead of parsing the frame
        opcode, data = _receive(server, ws, lambda op, _: op == 0x8, timeout=5)
        assert struct.unpack("!H", data[:2])[0] == wsguard.CLOSE_INVALID_PAYLOAD
        time.sleep(max(0.0, sent + 3 - time.monotonic()))
        _answer_time(server)
        grown_mb = (server.process.memory_info().rss - rss_before) / 2**20
        print(f"\n{name}: answered in {answer_s:.3f} s after the frame; RSS {grown_mb:+.1f} MB over 3 s")
        assert grown_mb < 20
    finally:
        ws.close()
    assert "Malformed" in server.log.read_text()


@pytest.mark.slow
def test_legacy_protocol_binary_messages_both_ways(server):
    """A legacy-protocol client sends a well-formed binary frame (an Image widget with a binary value)
    and gets one back: the guard lets it in, and Voilà no longer reads the reply as a v1 frame."""
    ws = _connect(server, f"legacy-binary-{time.monotonic_ns()}", v1=False)
    try:
        rss_before = server.process.memory_info().rss
        comm_id = SESSION.msg_id
        state = {"_model_module": "@jupyter-widgets/controls", "_model_module_version": "2.0.0", "_model_name": "ImageModel",
                 "_view_module": "@jupyter-widgets/controls", "_view_module_version": "2.0.0", "_view_name": "ImageView",
                 "format": "png"}
        opened = _message("comm_open", {"comm_id": comm_id, "target_name": "jupyter.widget",
                                        "data": {"state": state, "buffer_paths": [["value"]]}}, metadata={"version": "2.1.0"})
        ws.send_binary(_legacy_frame(opened, buffers=[PICTURE]))
        ws.send(json.dumps(dict(_message("comm_msg", {"comm_id": comm_id, "data": {"method": "request_state"}}),
                                channel="shell", buffers=[]), default=str))
        sent = time.monotonic()

        def is_state(opcode, data):
            if opcode != 0x2:
                return False
            reply = deserialize_binary_message(data)
            return reply["msg_type"] == "comm_msg" and reply["content"]["comm_id"] == comm_id

        _, frame = _receive(server, ws, is_state)
        assert frame[:8] == b"\x00\x00\x00\x02\x00\x00\x00\x0c"  # a legacy frame, 8.6e17 offsets if read as v1
        reply = deserialize_binary_message(frame)
        assert reply["content"]["data"]["method"] in ("echo_update", "update") and reply["buffers"] == [PICTURE]
        answer_s = _answer_time(server)
        time.sleep(max(0.0, sent + 3 - time.monotonic()))
        grown_mb = (server.process.memory_info().rss - rss_before) / 2**20
        print(f"\nlegacy binary reply: answered in {answer_s:.3f} s; RSS {grown_mb:+.1f} MB over 3 s")
        assert grown_mb < 20
    finally:
        ws.close()


@pytest.mark.slow
def test_well_formed_v1_traffic_still_flows(server):
    ws = _connect(server, f"v1-{time.monotonic_ns()}", v1=True)
    try:
        request = _message("kernel_info_request")
        ws.send_binary(_v1_frame(request))

        def is_reply(opcode, data):
            header = read_header_from_binary_message(data) if opcode == 0x2 else None
            return bool(header) and header["msg_type"] == "kernel_info_reply"

        _receive(server, ws, is_reply)
    finally:
        ws.close()


@pytest.mark.slow
def test_frames_over_the_size_cap_are_refused_before_their_payload(server):
    """tornado's websocket_max_message_size from voila.json applies: a frame declaring one byte more
    is refused from its header alone, without the server waiting for (or buffering) the payload."""
    websocket = pytest.importorskip("websocket")
    ws = _connect(server, f"cap-{time.monotonic_ns()}", v1=True)
    try:
        ws.sock.sendall(struct.pack("!BBQ", 0x82, 0x80 | 127, _max_message_size() + 1) + b"mask")
        try:
            opcode, data = _receive(server, ws, lambda op, _: op == 0x8, timeout=10)
            assert struct.unpack("!H", data[:2])[0] == 1009
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            pass  # tornado closes with 1009 then aborts; the close frame may not arrive first
        _answer_time(server)
    finally:
        ws.close()
    # and it is voila.json's cap, not tornado's 10 MiB default: a frame above that default is awaited
    default_cap = 10 * 2**20
    assert _max_message_size() > default_cap
    ws = _connect(server, f"cap-{time.monotonic_ns()}", v1=True)
    try:
        ws.sock.sendall(struct.pack("!BBQ", 0x82, 0x80 | 127, default_cap + 1) + b"mask")
        ws.settimeout(2)
        with pytest.raises(websocket.WebSocketTimeoutException):
            while True:
                opcode, _ = ws.recv_data(control_frame=True)  # kernel status messages may come; a close must not
                assert opcode != 0x8
    finally:
        ws.close()


@pytest.mark.slow
def test_cookies_are_samesite(server):
    with urllib.request.urlopen(server.url, timeout=60) as response:
        cookies = response.headers.get_all("Set-Cookie")
    request = urllib.request.Request(server.url + f"api/kernels/{server.kernel_id}/interrupt", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as refused:  # no _xsrf token: refused, and the response sets the _xsrf cookie
        cookies += refused.headers.get_all("Set-Cookie")
    names = {cookie.split("=", 1)[0] for cookie in cookies}
    assert "_xsrf" in names and any(name.startswith("username-") for name in names), cookies
    for cookie in cookies:
        assert "samesite=lax" in cookie.lower().replace(" ", ""), cookie
