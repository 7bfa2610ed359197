"""A visitor of the served app without a browser: the HTTP requests and kernel-websocket messages a Voilà 0.5 page
with ipywidgets 8 makes, in asyncio (tornado, which comes with jupyter_server: its HTTP/1.1 connection and websocket
client). Like a browser, a page keeps its HTTP connections open and reuses them, at most ``CONNECTIONS_PER_PAGE``
at a time (``KeepAliveHTTP``; tornado's own HTTP client opens a connection per request).

What the page does, and what ``ProtocolVisitor`` does in the same order:

1. ``GET`` the page (with preheating, a pooled kernel's pre-rendered HTML; its page config carries ``kernelId``);
   an HTTP 503 is the busy page, which loads the page again after its Retry-After;
2. its static assets (``assets``: the list one browser page load fetched, see ``bench_load.discover_assets``, or
   the ones the HTML declares);
3. ``GET /api/kernels/<id>``;
4. a websocket to ``/api/kernels/<id>/channels?session_id=<uuid>`` on the ``v1.kernel.websocket.jupyter.org``
   subprotocol (what JupyterLab's services, so Voilà's page, ask for and jupyter_server prefers), every message a
   binary frame (``encode_v1`` / ``decode_v1``); from then on, as the app's template does, ``GET /api/kernels/<id>``
   every ``HEARTBEAT_S`` until the page is closed;
5. ``kernel_info_request``;
6. ``comm_open`` on ``jupyter.widget.control`` and ``comm_msg {method: request_states}``: the kernel answers
   ``update_states`` with every widget's state (the page is ready), and the control comm is closed.

Then the app's use: an upload is a ``comm_msg`` ``update`` to the FileUpload's comm with the file's metadata in
``state.value`` and its bytes as the one buffer (``buffer_paths [["value", 0, "content"]]``); a click is a
``comm_msg`` ``custom`` ``{event: click}`` to the button's comm; the kernel's iopub ``status: idle`` whose parent
is that message says it has been handled. Widget state (``comm_open`` and ``update`` messages) is kept in
``WidgetStates`` so the faces' cards can be found as the page would render them.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import datetime, timezone
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders, HTTPMessageDelegate, RequestStartLine, ResponseStartLine
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.websocket import websocket_connect

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
#: the version ipywidgets 8's page puts in the control comm's metadata
CONTROL_PROTOCOL_VERSION = "1.0.0"
#: a browser opens at most this many HTTP/1.1 connections to one host at a time, and keeps them open
CONNECTIONS_PER_PAGE = 6
#: the wait before loading again after a 503 that gives no Retry-After (the app's busy page always gives one)
DEFAULT_RETRY_AFTER_S = 5
#: the page's template checks its kernel this often while the page is open (connection-watch.js, HEARTBEAT_MS)
HEARTBEAT_S = 5


class BusyAnswer(Exception):
    """The server answered with its busy page (HTTP 503)."""

    def __init__(self, retry_after_s: float):
        super().__init__(f"busy, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class StepFailed(Exception):
    """A step of the visit did not give what the page needs (``step`` names it)."""

    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step = step


def encode_v1(channel: str, header: dict, parent_header: dict, metadata: dict, content: dict,
              buffers: list[bytes] = ()) -> bytes:
    """One kernel message as a ``v1.kernel.websocket.jupyter.org`` binary frame: the number of offsets (8 bytes,
    little-endian), the offsets (8 bytes each) of the channel, the four JSON parts and every buffer, and of the end;
    then those parts (``jupyter_server``'s ``serialize_msg_to_ws_v1`` and JupyterLab's ``serialize.ts``)."""
    parts = [channel.encode(), *(json.dumps(p).encode() for p in (header, parent_header, metadata, content)),
             *(bytes(b) for b in buffers)]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return b"".join([len(offsets).to_bytes(8, "little"), *(o.to_bytes(8, "little") for o in offsets), *parts])


def decode_v1(frame: bytes) -> dict:
    """A v1 binary frame as ``{channel, header, parent_header, metadata, content, buffers}``."""
    count = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(count)]
    parts = [frame[offsets[i]:offsets[i + 1]] for i in range(count - 1)]
    if len(parts) < 5:
        raise ValueError(f"a v1 frame has a channel and four message parts, this one {len(parts)} parts")
    header, parent, metadata, content = (json.loads(p) for p in parts[1:5])
    return {"channel": parts[0].decode(), "header": header, "parent_header": parent, "metadata": metadata,
            "content": content, "buffers": parts[5:]}


def page_config(html: str) -> dict:
    """The page config Voilà writes into the page (``<script id="jupyter-config-data">``), {} if there is none."""
    found = re.search(r'<script[^>]*id=["\']jupyter-config-data["\'][^>]*>(.*?)</script>', html, re.S)
    return json.loads(found.group(1)) if found else {}


class _DeclaredAssets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.paths: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.paths.append(attrs["src"])
        elif tag == "link" and "stylesheet" in (attrs.get("rel") or "") and attrs.get("href"):
            self.paths.append(attrs["href"])


def declared_assets(html: str, page_url: str) -> list[str]:
    """The scripts and stylesheets a page declares, and the federated extensions' entry points its page config
    lists, as same-origin URLs (what a page load fetches before its scripts ask for their chunks)."""
    parser = _DeclaredAssets()
    parser.feed(html)
    config = page_config(html)
    base = config.get("fullLabextensionsUrl") or urljoin(page_url, "voila/labextensions")
    paths = [urljoin(page_url, p) for p in parser.paths]
    paths += [f"{base.rstrip('/')}/{ext['name']}/{ext['load']}" for ext in config.get("federated_extensions", [])]
    origin = urlsplit(page_url).netloc
    return [p for p in dict.fromkeys(paths) if urlsplit(p).netloc == origin]


class WidgetStates:
    """Every widget's state as the kernel has published it: from ``update_states``, ``comm_open`` and ``update``."""

    def __init__(self):
        self.states: dict[str, dict] = {}

    def restore(self, states: dict) -> None:
        """``update_states``' ``states`` ({model id: {model_name, state, ...}})."""
        for model_id, entry in states.items():
            self.states[model_id] = {"model_name": entry.get("model_name"), **entry.get("state", {})}

    def apply(self, msg: dict) -> str | None:
        """Take in a kernel message; returns the id of the widget it created or changed, if any."""
        content, kind = msg["content"], msg["header"]["msg_type"]
        if kind == "comm_open" and content.get("target_name") == "jupyter.widget":
            state = content.get("data", {}).get("state", {})
            self.states[content["comm_id"]] = {"model_name": state.get("_model_name"), **state}
            return content["comm_id"]
        if kind == "comm_msg" and content.get("data", {}).get("method") in ("update", "echo_update"):
            self.states.setdefault(content["comm_id"], {}).update(content["data"].get("state", {}))
            return content["comm_id"]
        if kind == "comm_close":
            self.states.pop(content.get("comm_id"), None)
        return None

    def with_class(self, css_class: str) -> list[str]:
        """Ids of the widgets that carry ``css_class`` (``add_class``)."""
        return [i for i, s in self.states.items() if css_class in (s.get("_dom_classes") or ())]

    def children(self, model_id: str) -> list[str]:
        return [c.removeprefix("IPY_MODEL_") for c in self.states.get(model_id, {}).get("children") or ()]

    def descendants(self, model_id: str) -> list[str]:
        """``model_id``'s children, theirs and so on (depth first)."""
        found = []
        for child in self.children(model_id):
            found += [child, *self.descendants(child)]
        return found


class CookieJar:
    """The cookies one visitor's browser would keep (nginx's replica cookie among them)."""

    def __init__(self):
        self.cookies: dict[str, str] = {}

    def take(self, headers) -> None:
        for line in headers.get_list("Set-Cookie"):
            cookie = SimpleCookie()
            cookie.load(line)
            self.cookies.update({name: morsel.value for name, morsel in cookie.items()})

    def header(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}


class Response:
    """One HTTP answer: ``code``, ``headers`` and ``body`` (decompressed)."""

    def __init__(self, code: int, headers: HTTPHeaders, body: bytes):
        self.code, self.headers, self.body = code, headers, body


class _Answer(HTTPMessageDelegate):
    """Collects one response from an ``HTTP1Connection``; ``on_headers`` is called as its headers arrive."""

    def __init__(self, on_headers=None):
        self.on_headers = on_headers
        self.start: ResponseStartLine | None = None
        self.headers = HTTPHeaders()
        self.chunks: list[bytes] = []
        self.complete = False

    def headers_received(self, start_line, headers):
        if self.on_headers is not None:
            self.on_headers()
        self.start, self.headers = start_line, headers

    def data_received(self, chunk):
        self.chunks.append(chunk)

    def finish(self):
        self.complete = True

    def on_connection_close(self):
        pass


class KeepAliveHTTP:
    """A page's HTTP/1.1 GETs to one server as a browser makes them: at most ``connections`` at a time, each
    connection kept open and reused by the next request (unless the server says ``Connection: close``); a kept
    connection the server has closed meanwhile is replaced once, as browsers do. ``opened`` counts connections."""

    def __init__(self, connections: int = CONNECTIONS_PER_PAGE):
        self.gate = asyncio.Semaphore(connections)
        self.idle: list[IOStream] = []
        self.opened = 0
        self.tcp = TCPClient()

    async def get(self, url: str, headers: dict[str, str], timeout_s: float, on_headers=None) -> Response:
        """``url``'s answer; raises ``OSError`` (``StreamClosedError`` among them) if there is none,
        ``asyncio.TimeoutError`` if it takes over ``timeout_s``."""
        async with self.gate:
            parts = urlsplit(url)
            kept = self._kept_connection()
            if kept is not None:
                try:
                    return await self._exchange_or_close(kept, parts, headers, on_headers, timeout_s)
                except StreamClosedError:  # closed by the server while it was kept: ask on a new connection
                    pass
            stream = await asyncio.wait_for(self.tcp.connect(parts.hostname, parts.port or 80), timeout_s)
            self.opened += 1
            return await self._exchange_or_close(stream, parts, headers, on_headers, timeout_s)

    def _kept_connection(self) -> IOStream | None:
        """A kept connection still open (those the server closed meanwhile are dropped), or None."""
        while self.idle:
            stream = self.idle.pop()
            if not stream.closed():
                return stream
        return None

    async def _exchange_or_close(self, stream: IOStream, parts, headers: dict[str, str], on_headers,
                                 timeout_s: float) -> Response:
        """The answer on ``stream`` within ``timeout_s``; the connection is closed if there is none."""
        try:
            return await asyncio.wait_for(self._exchange(stream, parts, headers, on_headers), timeout_s)
        except BaseException:
            stream.close()
            raise

    async def _exchange(self, stream: IOStream, parts, headers: dict[str, str], on_headers) -> Response:
        connection = HTTP1Connection(stream, True, HTTP1ConnectionParameters(decompress=True))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        answer = _Answer(on_headers)
        connection.write_headers(RequestStartLine("GET", target or "/", "HTTP/1.1"),
                                 HTTPHeaders({"Host": parts.netloc, "Connection": "keep-alive", "Accept-Encoding": "gzip",
                                              **headers}))
        connection.finish()
        await connection.read_response(answer)
        if not answer.complete or answer.start is None:
            raise StreamClosedError()
        closing = answer.start.version != "HTTP/1.1" or answer.headers.get("Connection", "").lower() == "close"
        if closing or stream.closed():
            stream.close()
        else:
            self.idle.append(stream)
        return Response(answer.start.code, answer.headers, b"".join(answer.chunks))

    def close(self) -> None:
        """Close every kept connection (the tab is gone)."""
        for stream in self.idle:
            stream.close()
        self.idle.clear()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class ProtocolVisitor:
    """One visitor's page, spoken as the page speaks it. ``open`` loads it until the widgets' state is restored;
    ``upload`` and ``click_correct`` use the app; ``close`` is the tab closed. Times are ``time.perf_counter``."""

    def __init__(self, url: str, assets: list[str] | None = None, timeout_s: float = 120):
        self.url = url if url.endswith("/") else url + "/"
        self.assets = assets
        self.timeout_s = timeout_s
        self.http = KeepAliveHTTP()
        self.jar = CookieJar()
        self.session = str(uuid.uuid4())
        self.kernel_id: str | None = None
        self.ws = None
        self.widgets = WidgetStates()
        self.received = 0  # kernel messages read
        self.first_answer_at: float | None = None  # when the last page request's status line arrived
        self._heartbeat: asyncio.Future | None = None

    # -- HTTP -----------------------------------------------------------------------------------------------

    async def _get(self, url: str, step: str, note_first_answer: bool = False) -> Response:
        """``url`` with this visitor's cookies, on one of the page's kept connections. ``note_first_answer``:
        ``first_answer_at`` becomes the moment the answer's headers arrived."""

        def answered() -> None:
            self.first_answer_at = time.perf_counter()

        try:
            response = await self.http.get(url, self.jar.header(), self.timeout_s, answered if note_first_answer else None)
        except asyncio.TimeoutError:
            raise StepFailed(step, f"no answer within {self.timeout_s:g} s") from None
        except OSError as error:  # refused, reset, closed
            raise StepFailed(step, f"no answer: {type(error).__name__}: {error}") from None
        self.jar.take(response.headers)
        return response

    async def get_page(self) -> str:
        """The app's page; raises ``BusyAnswer`` on the busy page, ``StepFailed`` on anything else but 200."""
        response = await self._get(self.url, "page", note_first_answer=True)
        if response.code == 503:
            try:
                retry = float(response.headers.get("Retry-After", DEFAULT_RETRY_AFTER_S))
            except ValueError:
                retry = DEFAULT_RETRY_AFTER_S
            raise BusyAnswer(retry)
        if response.code != 200:
            raise StepFailed("page", f"HTTP {response.code}")
        html = response.body.decode("utf-8", "replace")
        self.kernel_id = page_config(html).get("kernelId")
        if not self.kernel_id:
            raise StepFailed("page", "no kernelId in the page config")
        if self.assets is None:
            self.assets = declared_assets(html, self.url)
        return html

    async def get_assets(self) -> int:
        """Every asset, at most ``CONNECTIONS_PER_PAGE`` at a time on the page's kept connections; returns the bytes
        received."""

        async def one(url: str) -> int:
            response = await self._get(url, "assets")
            if response.code != 200:
                raise StepFailed("assets", f"HTTP {response.code} for {urlsplit(url).path}")
            return len(response.body)

        return sum(await asyncio.gather(*(one(u) for u in self.assets)))

    async def get_kernel_model(self) -> dict:
        response = await self._get(f"{self.url}api/kernels/{self.kernel_id}?{int(time.time() * 1000)}", "kernel")
        if response.code != 200:
            raise StepFailed("kernel", f"HTTP {response.code} for the kernel's model")
        return json.loads(response.body)

    # -- the kernel websocket -------------------------------------------------------------------------------

    async def connect(self) -> None:
        parts = urlsplit(self.url)
        ws_url = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}{parts.path}api/kernels/{self.kernel_id}/channels?session_id={self.session}"
        request = HTTPRequest(ws_url, headers={**self.jar.header(), "Origin": f"{parts.scheme}://{parts.netloc}"},
                              request_timeout=self.timeout_s)
        try:
            self.ws = await websocket_connect(request, subprotocols=[V1_SUBPROTOCOL], max_message_size=64 * 2**20)
        except (OSError, HTTPClientError) as error:
            raise StepFailed("websocket", f"{type(error).__name__}: {error}") from None
        if self.ws.selected_subprotocol != V1_SUBPROTOCOL:
            raise StepFailed("websocket", f"the server chose subprotocol {self.ws.selected_subprotocol!r}")
        self._heartbeat = asyncio.ensure_future(self._check_kernel_now_and_then())

    async def _check_kernel_now_and_then(self) -> None:
        """What the page's connection watch does while the page is open: ask for its kernel every HEARTBEAT_S."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._get(f"{self.url}api/kernels/{self.kernel_id}", "heartbeat")
            except StepFailed:  # the page would show "Connection lost"; the visit's own steps report failures
                pass

    def _header(self, msg_type: str) -> dict:
        return {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "", "session": self.session,
                "date": _now(), "version": "5.2"}

    async def send(self, msg_type: str, content: dict, metadata: dict | None = None, buffers: list[bytes] = ()) -> str:
        """Send a shell message; returns its msg_id."""
        header = self._header(msg_type)
        await self.ws.write_message(encode_v1("shell", header, {}, metadata or {}, content, buffers), binary=True)
        return header["msg_id"]

    async def until(self, done, step: str) -> dict:
        """Read kernel messages (keeping widget state) until ``done(msg)``; returns that message."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError(step)
            try:
                frame = await asyncio.wait_for(self.ws.read_message(), left)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(step) from None
            if frame is None:
                raise StepFailed(step, f"websocket closed ({self.ws.close_code} {self.ws.close_reason})")
            if isinstance(frame, str):
                raise StepFailed(step, "a text frame on the v1 subprotocol")
            msg = decode_v1(frame)
            self.received += 1
            self.widgets.apply(msg)
            if done(msg):
                return msg

    async def kernel_info(self) -> dict:
        msg_id = await self.send("kernel_info_request", {})
        reply = await self.until(lambda m: m["header"]["msg_type"] == "kernel_info_reply"
                                 and m["parent_header"].get("msg_id") == msg_id, "kernel info")
        return reply["content"]

    async def restore_widgets(self) -> int:
        """The widget manager's ``_loadFromKernel``: open the control comm, ask for every widget's state, close it;
        returns the number of widgets."""
        comm_id = str(uuid.uuid4())
        await self.send("comm_open", {"comm_id": comm_id, "target_name": "jupyter.widget.control", "data": {}},
                        metadata={"version": CONTROL_PROTOCOL_VERSION})
        await self.send("comm_msg", {"comm_id": comm_id, "data": {"method": "request_states"}})
        reply = await self.until(lambda m: m["header"]["msg_type"] == "comm_msg" and m["content"].get("comm_id") == comm_id
                                 and m["content"].get("data", {}).get("method") == "update_states", "widget state")
        self.widgets.restore(reply["content"]["data"].get("states", {}))
        await self.send("comm_close", {"comm_id": comm_id, "data": {}})
        return len(reply["content"]["data"].get("states", {}))

    async def open(self) -> None:
        """Page, assets, kernel model, websocket, kernel info and widget state: the page is ready when this returns
        (``BusyAnswer`` if the server sent its busy page instead)."""
        await self.get_page()
        await self.get_assets()
        await self.get_kernel_model()
        await self.connect()
        await self.kernel_info()
        await self.restore_widgets()
        if not self.widgets.with_class("smilekit-upload"):
            raise StepFailed("widget state", "no upload button among the widgets")

    # -- using the app --------------------------------------------------------------------------------------

    def _gallery(self) -> str:
        apps = self.widgets.with_class("smilekit-app")
        if not apps or not self.widgets.children(apps[0]):
            raise StepFailed("upload", "the app's widget is not among the widgets")
        return self.widgets.children(apps[0])[-1]  # the photos are the app's last box

    async def upload(self, photo: Path) -> str:
        """Upload ``photo`` as the FileUpload widget sends it; returns once the gallery shows a face card, with the
        id of its Correct button."""
        upload, gallery = self.widgets.with_class("smilekit-upload")[0], self._gallery()
        data = photo.read_bytes()
        kind = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}.get(photo.suffix.lower(), "")
        entry = {"name": photo.name, "type": kind, "size": len(data), "last_modified": int(photo.stat().st_mtime * 1000)}
        before = set(self.widgets.children(gallery))
        await self.send("comm_msg", {"comm_id": upload, "data": {"method": "update", "state": {"value": [entry]},
                                                                 "buffer_paths": [["value", 0, "content"]]}},
                        buffers=[data])

        def card_shown(msg) -> bool:
            if msg["header"]["msg_type"] != "comm_msg" or msg["content"].get("comm_id") != gallery:
                return False
            return bool(self._new_correct_buttons(gallery, before))

        await self.until(card_shown, "upload")
        return self._new_correct_buttons(gallery, before)[0]

    def _new_correct_buttons(self, gallery: str, before: set[str]) -> list[str]:
        found = []
        for panel in self.widgets.children(gallery):
            if panel not in before:
                found += [w for w in self.widgets.descendants(panel)
                          if "smilekit-correct" in (self.widgets.states.get(w, {}).get("_dom_classes") or ())]
        return found

    def card_text(self, button: str) -> str:
        """The text of the card holding ``button`` (its label, then what became of the verdict)."""
        for card in self.widgets.with_class("smilekit-face"):
            children = self.widgets.children(card)
            if button in children:
                return " ".join(str(self.widgets.states.get(c, {}).get("value", "")) for c in children
                                if self.widgets.states.get(c, {}).get("model_name") == "HTMLModel")
        return ""

    async def click_correct(self, button: str) -> None:
        """Click the Correct button and wait until the kernel has handled the click; raises ``StepFailed`` if the
        card does not then say the verdict was saved."""
        msg_id = await self.send("comm_msg", {"comm_id": button, "data": {"method": "custom", "content": {"event": "click"}}})
        await self.until(lambda m: m["header"]["msg_type"] == "status" and m["parent_header"].get("msg_id") == msg_id
                         and m["content"].get("execution_state") == "idle", "click")
        if "Saved: correct" not in self.card_text(button):
            raise StepFailed("click", "the card does not say 'Saved: correct'")

    def close(self) -> None:
        """The tab closed: its websocket and its kept connections go, and its checks of the kernel stop."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        self.http.close()
