"""Reject malformed binary frames on the kernel websocket before Jupyter's parsers see them.

``jupyter_server`` (2.21) and Voilà (0.5.13) trust the buffer counts written at the start of
binary kernel-websocket frames. ``deserialize_msg_from_ws_v1`` builds a list as long as the
8-byte little-endian count, ``deserialize_binary_message`` (the legacy protocol) builds a struct
format string as long as its 4-byte big-endian count, and Voilà's
``read_header_from_binary_message`` reads every outgoing binary frame as v1, so a legacy frame's
first 8 bytes become a count near 10**18. One 8-byte frame from any visitor freezes the server
while its memory grows without bound.

This module offers:

* :func:`v1_frame_is_valid` and :func:`legacy_frame_is_valid`, pure checks of a frame's layout
  whose cost is bounded by the frame's length, never by the counts it declares;
* :func:`read_header_from_binary_message`, a safe drop-in for Voilà's function of that name;
* :class:`GuardedKernelConnection`, a ``ZMQChannelsWebsocketConnection`` that drops a malformed
  incoming frame, logs one warning and closes that websocket. Select it with
  ``Voila.kernel_websocket_connection_class`` (or ``ServerApp.kernel_websocket_connection_class``).

Frame size is bounded separately, by tornado's ``websocket_max_message_size`` setting.
"""
from __future__ import annotations

import json
from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"

#: v1 offsets: channel start, header, parent header, metadata, content, end (buffers add more)
V1_MIN_OFFSETS = 6
#: legacy buffers: the JSON message itself, then any binary buffers
LEGACY_MIN_BUFFERS = 1
#: WebSocket close code 1007, "invalid frame payload data"
CLOSE_INVALID_PAYLOAD = 1007


def _offsets_are_valid(frame: bytes, first: int, count: int, width: int, byteorder: str) -> bool:
    """Whether ``count`` offsets of ``width`` bytes starting at ``first`` are non-decreasing,
    point past the offset table and stay within the frame. The caller has checked that the
    table itself fits in the frame, so the loop runs at most ``len(frame) / width`` times."""
    table_end = first + count * width
    previous = table_end
    for start in range(first, table_end, width):
        offset = int.from_bytes(frame[start:start + width], byteorder)
        if offset < previous or offset > len(frame):
            return False
        previous = offset
    return True


def v1_frame_is_valid(frame: Any) -> bool:
    """Whether ``frame`` is a well-formed ``v1.kernel.websocket.jupyter.org`` binary frame.

    Layout: an 8-byte little-endian count ``n``, then ``n`` 8-byte little-endian offsets into
    the frame (channel, header, parent header, metadata, content, buffers..., end). The offset
    table must fit in the frame, the offsets must start after it, never decrease and never
    pass the end of the frame, and there must be at least the channel and the four message parts.
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        return False
    frame = bytes(frame) if isinstance(frame, memoryview) else frame
    if len(frame) < 8:
        return False
    count = int.from_bytes(frame[:8], "little")
    if count < V1_MIN_OFFSETS or 8 * (count + 1) > len(frame):
        return False
    return _offsets_are_valid(frame, 8, count, 8, "little")


def legacy_frame_is_valid(frame: Any) -> bool:
    """Whether ``frame`` is a well-formed legacy-protocol (no subprotocol) binary frame.

    Layout: a 4-byte big-endian count ``n`` (read as signed by ``deserialize_binary_message``),
    then ``n`` 4-byte big-endian offsets: the JSON message, then each binary buffer, each running
    to the next offset and the last one to the end of the frame. The table must fit in the frame,
    the offsets must start after it, never decrease and never pass the end of the frame.
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        return False
    frame = bytes(frame) if isinstance(frame, memoryview) else frame
    if len(frame) < 4:
        return False
    count = int.from_bytes(frame[:4], "big", signed=True)
    if count < LEGACY_MIN_BUFFERS or 4 * (count + 1) > len(frame):
        return False
    return _offsets_are_valid(frame, 4, count, 4, "big")


def read_header_from_binary_message(ws_msg: Any) -> dict | None:
    """The header of a v1 binary frame as a dict, or ``None`` for anything else.

    Safe replacement for ``voila.tornado.kernel_websocket_handler.read_header_from_binary_message``,
    which Voilà calls on every outgoing binary frame: frames that are not well-formed v1 frames
    (legacy-protocol frames among them) give ``None`` instead of a list of 10**18 offsets.
    """
    if not v1_frame_is_valid(ws_msg):
        return None
    frame = bytes(ws_msg) if isinstance(ws_msg, memoryview) else ws_msg
    start = int.from_bytes(frame[16:24], "little")
    stop = int.from_bytes(frame[24:32], "little")
    try:
        header = json.loads(bytes(frame[start:stop]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def frame_is_valid(frame: Any, subprotocol: str | None) -> bool:
    """Whether an incoming websocket message may be handed to jupyter_server's parsers.

    On the v1 subprotocol every message must be a well-formed binary frame (jupyter_server cannot
    parse text there). On the legacy protocol text messages are JSON and are left to ``json.loads``;
    binary ones must be well-formed legacy frames.
    """
    if subprotocol == V1_SUBPROTOCOL:
        return v1_frame_is_valid(frame)
    if isinstance(frame, str):
        return True
    return legacy_frame_is_valid(frame)


class GuardedKernelConnection(ZMQChannelsWebsocketConnection):
    """Kernel websocket connection that drops malformed frames instead of parsing them.

    A frame that fails :func:`frame_is_valid` for the connection's subprotocol is never passed to
    ``deserialize_msg_from_ws_v1`` / ``deserialize_binary_message``: it is dropped, one warning is
    logged for the connection and the websocket is closed with code 1007.
    """

    _rejected = False

    def handle_incoming_message(self, incoming_msg: Any) -> None:
        if self._rejected:
            return
        if not frame_is_valid(incoming_msg, self.subprotocol):
            self._rejected = True
            size = len(incoming_msg) if hasattr(incoming_msg, "__len__") else -1
            self.log.warning("Malformed %s message (%d bytes) on the websocket of kernel %s; closing it",
                             "v1" if self.subprotocol == V1_SUBPROTOCOL else "legacy-protocol", size, self.kernel_id)
            try:
                self.websocket_handler.close(CLOSE_INVALID_PAYLOAD, "malformed kernel message")
            except Exception:  # already closing or closed
                pass
            return
        super().handle_incoming_message(incoming_msg)

    def _on_zmq_reply(self, stream, msg_list):
        # Between close() and tornado's on_close, kernel output for this connection would only
        # fail to write (and log an empty warning each time): drop it once the socket is rejected.
        if self._rejected:
            return
        super()._on_zmq_reply(stream, msg_list)


def _install_safe_voila_header_reader() -> None:
    """Voilà's websocket handler filters outgoing messages by reading each binary frame's header
    with a module-level function that assumes the v1 layout, even on legacy-protocol connections,
    where a frame's first 8 bytes read as a count near 10**18. The handler looks the function up
    at call time, so replacing the module attribute fixes every connection, whichever connection
    class serves it."""
    try:
        from voila.tornado import kernel_websocket_handler
    except ImportError:  # not running under Voilà
        return
    kernel_websocket_handler.read_header_from_binary_message = read_header_from_binary_message


# Voilà imports this module when it loads ``Voila.kernel_websocket_connection_class`` from its
# configuration, before it serves any request, so the outgoing direction is fixed from the start.
_install_safe_voila_header_reader()
