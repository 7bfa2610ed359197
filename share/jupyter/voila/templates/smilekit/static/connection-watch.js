/*
 * SmileKit: tell the user when the page has lost its kernel or its server.
 *
 * Without this, a dead kernel or a stopped server leaves the page looking alive: clicks and
 * uploads silently do nothing. Loaded in <head> before Voilà's own scripts, it wraps
 * window.WebSocket to watch the kernel's websocket (/api/kernels/<id>/channels) and shows a
 * banner ("Connection lost — reload the page to continue", a .smilekit-reload button) when
 *   - the kernel reports it died or was restarted (an iopub "status" message with execution_state
 *     "restarting", "autorestarting" or "dead"; a restarted kernel has none of the app's widgets),
 *   - the websocket closes and the server no longer knows the kernel (404) or does not answer
 *     (twice, CONFIRM_MS apart, so a network blip the client reconnects from does not count),
 *   - the websocket stays closed for RECONNECT_GRACE_MS although the server answers,
 *   - the server stops answering the periodic check of the kernel (HEARTBEAT_MS, HEARTBEAT_FAILURES
 *     in a row; a failure does not count while the websocket is still sending, as during a long
 *     upload on a slow link, or has just received a message).
 * Messages come as JSON text (legacy protocol) or binary frames (v1.kernel.websocket.jupyter.org:
 * a little-endian uint64 count, uint64 offsets, then channel, header, parent header, metadata,
 * content, buffers).
 * window.smilekitConnection exposes the state for tests: {lost, reason, lostAt} (performance.now()).
 */
(function () {
  "use strict";
  if (window.smilekitConnection) {
    return;
  }
  var PROBE_TIMEOUT_MS = 4000;
  var CONFIRM_MS = 700;
  var RECONNECT_GRACE_MS = 10000;
  var HEARTBEAT_MS = 5000;
  var HEARTBEAT_FAILURES = 2;
  var STATUS_MAX_BYTES = 65536; // status messages are tiny; larger frames are never parsed
  var LOST_STATES = { restarting: true, autorestarting: true, dead: true };
  var KERNEL_WS = /^wss?:\/\/[^\/]+(\/(?:.*\/)?)api\/kernels\/([^\/?#]+)\/channels(?:[?#]|$)/;
  var TEXT = "Connection lost \u2014 reload the page to continue";

  var state = { lost: false, reason: null, lostAt: null, kernels: {} };
  window.smilekitConnection = state;
  var leaving = false;
  var decoder = typeof TextDecoder === "function" ? new TextDecoder("utf-8") : null;

  // a page being left closes its websocket: not a lost connection. A beforeunload that does
  // not end in unloading (a download link) must not silence the banner for good.
  var leavingTimer = null;
  function markLeaving() {
    leaving = true;
    clearTimeout(leavingTimer);
    leavingTimer = setTimeout(function () {
      leaving = false;
    }, 5000);
  }
  window.addEventListener("beforeunload", markLeaving);
  window.addEventListener("pagehide", markLeaving);
  window.addEventListener("pageshow", function () {
    clearTimeout(leavingTimer);
    leaving = false;
  });

  function showBanner() {
    if (!document.body) {
      document.addEventListener("DOMContentLoaded", showBanner);
      return;
    }
    if (document.querySelector(".smilekit-connection-lost")) {
      return;
    }
    var banner = document.createElement("div");
    banner.className = "smilekit-connection-lost";
    banner.setAttribute("role", "alertdialog");
    banner.setAttribute("aria-modal", "true");
    banner.setAttribute("aria-labelledby", "smilekit-connection-lost-text");

    var card = document.createElement("div");
    card.className = "smilekit-connection-lost-card";

    var icon = document.createElement("span");
    icon.className = "smilekit-connection-lost-icon";
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = "!";

    var text = document.createElement("p");
    text.className = "smilekit-connection-lost-text";
    text.id = "smilekit-connection-lost-text";
    text.textContent = TEXT;

    var button = document.createElement("button");
    button.type = "button";
    button.className = "smilekit-reload";
    button.textContent = "Reload";
    button.addEventListener("click", function () {
      markLeaving();
      window.location.reload();
    });

    card.appendChild(icon);
    card.appendChild(text);
    card.appendChild(button);
    banner.appendChild(card);
    document.body.appendChild(banner);
    // keep keyboard and screen-reader users out of the dead app underneath
    var cells = document.getElementById("rendered_cells");
    if (cells) {
      cells.setAttribute("inert", "");
      cells.setAttribute("aria-hidden", "true");
    }
    button.focus({ preventScroll: true });
  }

  function lose(reason) {
    if (state.lost || leaving) {
      return;
    }
    state.lost = true;
    state.reason = reason;
    state.lostAt = performance.now();
    if (window.console) {
      console.warn("SmileKit: connection lost (" + reason + ")");
    }
    showBanner();
  }

  /* Ask the server about the kernel: resolves "ok", "gone" (404/410) or "down" (no answer, error). */
  function probe(kernel) {
    var controller = typeof AbortController === "function" ? new AbortController() : null;
    var timer = setTimeout(function () {
      if (controller) {
        controller.abort();
      }
    }, PROBE_TIMEOUT_MS);
    return fetch(kernel.probeUrl, {
      cache: "no-store",
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      signal: controller ? controller.signal : undefined,
    }).then(
      function (response) {
        clearTimeout(timer);
        if (response.status === 404 || response.status === 410) {
          return "gone";
        }
        return response.status >= 500 ? "down" : "ok";
      },
      function () {
        clearTimeout(timer);
        return "down";
      }
    );
  }

  function judge(kernel, verdict, when) {
    if (verdict === "gone") {
      lose("kernel " + kernel.id + " no longer exists (" + when + ")");
    } else if (verdict === "down") {
      lose("server does not answer (" + when + ")");
    }
  }

  function onClosed(kernel) {
    if (leaving || state.lost || kernel.open > 0) {
      return;
    }
    probe(kernel).then(function (verdict) {
      if (kernel.open > 0) {
        return;
      }
      if (verdict !== "down") {
        judge(kernel, verdict, "websocket closed");
        return;
      }
      setTimeout(function () {
        if (kernel.open > 0 || state.lost) {
          return;
        }
        probe(kernel).then(function (again) {
          if (kernel.open === 0) {
            judge(kernel, again, "websocket closed");
          }
        });
      }, CONFIRM_MS);
    });
    clearTimeout(kernel.graceTimer);
    kernel.graceTimer = setTimeout(function () {
      if (kernel.open === 0 && !leaving) {
        lose("kernel websocket did not reconnect");
      }
    }, RECONNECT_GRACE_MS);
  }

  function heartbeat() {
    if (state.lost || leaving) {
      return;
    }
    var ids = Object.keys(state.kernels);
    if (ids.length === 0 || document.visibilityState === "hidden") {
      return;
    }
    var kernel = state.kernels[ids[ids.length - 1]];
    var sentAt = performance.now();
    probe(kernel).then(function (verdict) {
      if (verdict === "ok") {
        kernel.failures = 0;
      } else if (verdict === "gone") {
        judge(kernel, verdict, "heartbeat");
      } else if (kernel.lastMessageAt >= sentAt - HEARTBEAT_MS || sending(kernel)) {
        kernel.failures = 0; // the websocket shows the server is alive, only slow to answer
      } else if (++kernel.failures >= HEARTBEAT_FAILURES) {
        judge(kernel, verdict, "heartbeat");
      }
    });
  }

  function sending(kernel) {
    return kernel.sockets.some(function (socket) {
      return socket.readyState === 1 && socket.bufferedAmount > 0;
    });
  }
  setInterval(heartbeat, HEARTBEAT_MS);

  /* The iopub execution_state of a status message, or null. */
  function statusOf(data) {
    if (typeof data === "string") {
      if (data.length > STATUS_MAX_BYTES || data.indexOf("execution_state") === -1) {
        return null;
      }
      try {
        var msg = JSON.parse(data);
        if (msg && msg.header && msg.header.msg_type === "status" && msg.content) {
          return msg.content.execution_state || null;
        }
      } catch (e) {
        /* not a kernel message */
      }
      return null;
    }
    if (!(data instanceof ArrayBuffer) || !decoder || data.byteLength > STATUS_MAX_BYTES || data.byteLength < 16) {
      return null;
    }
    try {
      var view = new DataView(data);
      var count = view.getUint32(0, true);
      if (count < 6 || 8 * (count + 1) > data.byteLength) {
        return null;
      }
      var offsets = [];
      for (var i = 0; i < count; i++) {
        offsets.push(view.getUint32(8 + 8 * i, true));
      }
      var part = function (k) {
        return decoder.decode(new Uint8Array(data, offsets[k], offsets[k + 1] - offsets[k]));
      };
      if (part(0) !== "iopub") {
        return null;
      }
      var header = JSON.parse(part(1));
      if (!header || header.msg_type !== "status") {
        return null;
      }
      var content = JSON.parse(part(4));
      return (content && content.execution_state) || null;
    } catch (e) {
      return null;
    }
  }

  function watch(socket, match) {
    var id = match[2];
    var kernel = state.kernels[id];
    if (!kernel) {
      var origin = window.location.protocol + "//" + window.location.host;
      kernel = state.kernels[id] = {
        id: id,
        open: 0,
        failures: 0,
        graceTimer: null,
        lastMessageAt: -Infinity,
        sockets: [],
        probeUrl: origin + match[1] + "api/kernels/" + encodeURIComponent(id),
      };
    }
    var isOpen = false;
    kernel.sockets.push(socket);
    socket.addEventListener("open", function () {
      isOpen = true;
      kernel.open += 1;
      kernel.failures = 0;
      clearTimeout(kernel.graceTimer);
    });
    socket.addEventListener("close", function () {
      if (isOpen) {
        isOpen = false;
        kernel.open -= 1;
      }
      kernel.sockets = kernel.sockets.filter(function (s) {
        return s !== socket;
      });
      onClosed(kernel);
    });
    socket.addEventListener("message", function (event) {
      kernel.lastMessageAt = performance.now();
      var executionState = statusOf(event.data);
      if (executionState && LOST_STATES[executionState]) {
        lose("kernel " + executionState);
      }
    });
  }

  var NativeWebSocket = window.WebSocket;
  if (typeof NativeWebSocket !== "function") {
    return;
  }
  function WatchedWebSocket(url, protocols) {
    var socket = protocols === undefined ? new NativeWebSocket(url) : new NativeWebSocket(url, protocols);
    try {
      var match = KERNEL_WS.exec(String(socket.url || url));
      if (match) {
        watch(socket, match);
      }
    } catch (e) {
      /* never break the page's own connection */
    }
    return socket;
  }
  WatchedWebSocket.prototype = NativeWebSocket.prototype;
  ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach(function (name) {
    Object.defineProperty(WatchedWebSocket, name, { value: NativeWebSocket[name] });
  });
  window.WebSocket = WatchedWebSocket;
})();
