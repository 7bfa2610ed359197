// SmileKit's live camera (an anywidget module, loaded from the server: no CDN).
// Grabs frames with getUserMedia, sends one small JPEG at a time to the kernel (the next only once the
// kernel has answered: frames taken meanwhile are dropped, never queued), and draws each face's box and
// smile meter from the answer. When the kernel says the smile shutter fired, sends that very frame at
// full size. The stream stops when the mode is switched off, the view is removed or the page is left.

const FRAME_WIDTH = 320;            // frames go to the kernel this wide
const FRAME_QUALITY = 0.7;
const CAPTURE_QUALITY = 0.92;
const MIN_INTERVAL_MS = 70;         // at most ~14 frames a second
const ANSWER_TIMEOUT_MS = 3000;     // an answer lost on the way does not stop the camera

const MESSAGES = {
  insecure: "The camera needs a secure address (https://, or this computer's own address). Upload a photo instead.",
  NotAllowedError: "Camera permission was refused. Allow the camera for this site in the browser's settings, then switch the camera on again.",
  SecurityError: "Camera permission was refused. Allow the camera for this site in the browser's settings, then switch the camera on again.",
  NotFoundError: "No camera was found on this device. Connect one, or upload a photo instead.",
  OverconstrainedError: "No camera was found on this device. Connect one, or upload a photo instead.",
  NotReadableError: "The camera is in use by another application, or could not be started. Close it there and try again.",
  AbortError: "The camera could not be started. Please try again.",
};

function render({ model, el }) {
  el.classList.add("smilekit-camera-view");
  el.innerHTML = `
    <div class="smilekit-camera-stage">
      <video playsinline muted autoplay></video>
      <div class="smilekit-camera-overlay"></div>
    </div>
    <div class="smilekit-camera-bar">
      <button type="button" class="smilekit-snap">Take the picture now</button>
      <button type="button" class="smilekit-flip">Switch camera</button>
    </div>
    <div class="smilekit-camera-message" role="status"></div>`;
  const video = el.querySelector("video");
  const overlay = el.querySelector(".smilekit-camera-overlay");
  const message = el.querySelector(".smilekit-camera-message");
  const full = document.createElement("canvas");   // the frame in flight, at full size (for the shutter)
  const small = document.createElement("canvas");  // the same frame as sent
  let stream = null, starting = false, facing = "user";
  let frameId = 0, inFlight = null, lastSent = 0, timer = null, capturing = false;

  const say = (text, isError = false) => {
    message.textContent = text;
    message.classList.toggle("smilekit-camera-error", isError);
  };

  async function start() {
    if (stream || starting) return;
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say(MESSAGES.insecure, true);
      report("unavailable", "insecure");
      return;
    }
    starting = true;
    say("Starting the camera…");
    try {
      const got = await navigator.mediaDevices.getUserMedia({
        audio: false, video: { facingMode: { ideal: facing }, width: { ideal: 640 }, height: { ideal: 480 } },
      });
      if (!model.get("active")) { got.getTracks().forEach((t) => t.stop()); return; }  // switched off meanwhile
      stream = got;
      video.srcObject = stream;
      video.classList.toggle("smilekit-mirrored", facing === "user");
      await video.play().catch(() => {});
      say("");
      report("started", facing);
      schedule(0);
    } catch (err) {
      const name = (err && err.name) || "Error";
      say(MESSAGES[name] || "The camera could not be started. Please try again.", true);
      report("unavailable", name);
    } finally {
      starting = false;
    }
  }

  function stop() {
    clearTimeout(timer);
    timer = null;
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    inFlight = null;
    video.srcObject = null;
    overlay.replaceChildren();
  }

  function report(state, detail) {
    model.send({ type: "status", state, detail: String(detail).slice(0, 60) });
  }

  function schedule(delay) {
    clearTimeout(timer);
    timer = setTimeout(tick, Math.max(0, delay));
  }

  function tick() {
    if (!stream) return;
    const now = performance.now();
    if (inFlight && now - inFlight.sentAt < ANSWER_TIMEOUT_MS) return;  // the answer schedules the next frame
    if (now - lastSent < MIN_INTERVAL_MS) return schedule(MIN_INTERVAL_MS - (now - lastSent));
    if (video.readyState < 2 || !video.videoWidth) return schedule(50);
    sendFrame();
  }

  function sendFrame() {
    const w = video.videoWidth, h = video.videoHeight;
    full.width = w; full.height = h;
    full.getContext("2d").drawImage(video, 0, 0, w, h);
    small.width = FRAME_WIDTH; small.height = Math.round((FRAME_WIDTH * h) / w);
    small.getContext("2d").drawImage(full, 0, 0, small.width, small.height);
    const frame = { id: ++frameId, sentAt: performance.now() };
    inFlight = frame;
    lastSent = frame.sentAt;
    el.dataset.framesSent = String(frame.id);
    small.toBlob(async (blob) => {
      if (!blob || inFlight !== frame) return;
      const buffer = await blob.arrayBuffer();
      model.send({ type: "frame", frame: frame.id, width: small.width, height: small.height }, undefined, [buffer]);
    }, "image/jpeg", FRAME_QUALITY);
    schedule(ANSWER_TIMEOUT_MS);
  }

  function capture(id, manual) {
    if (capturing) return;
    capturing = true;
    full.toBlob(async (blob) => {
      capturing = false;
      if (!blob) return;
      model.send({ type: "capture", frame: id, manual }, undefined, [await blob.arrayBuffer()]);
    }, "image/jpeg", CAPTURE_QUALITY);
  }

  function draw(answer, latency) {
    const mirrored = facing === "user";
    const faces = Array.isArray(answer.faces) ? answer.faces : [];
    while (overlay.children.length > faces.length) overlay.lastChild.remove();
    faces.forEach((face, i) => {
      let box = overlay.children[i];
      if (!box) {
        box = document.createElement("div");
        box.className = "smilekit-live-face";
        box.innerHTML = `<div class="smilekit-meter"><div class="smilekit-meter-fill"></div><span></span></div>`;
        overlay.appendChild(box);
      }
      const p = Math.min(1, Math.max(0, Number(face.p) || 0));
      const smiling = face.smiling === true;  // the model's answer, at its own threshold (as on the cards)
      const x = mirrored ? 1 - face.x - face.w : face.x;
      Object.assign(box.style, { left: `${x * 100}%`, top: `${face.y * 100}%`, width: `${face.w * 100}%`, height: `${face.h * 100}%` });
      box.classList.toggle("smilekit-live-smiling", smiling);
      const meter = box.firstChild;
      meter.dataset.probability = p.toFixed(4);
      meter.dataset.frame = String(answer.frames);
      meter.dataset.latencyMs = latency.toFixed(0);
      meter.firstChild.style.width = `${p * 100}%`;
      meter.lastChild.textContent = `${smiling ? "Smiling" : "Not smiling"} ${Math.round(p * 100)}%`;
    });
    if (!faces.length && !message.classList.contains("smilekit-camera-error")) say(answer.note || "No face in view.");
    else if (faces.length && !message.classList.contains("smilekit-camera-error")) say("");
  }

  function onMessage(msg) {
    if (!msg || msg.type !== "faces" || !inFlight || msg.frame !== inFlight.id) return;
    const frame = inFlight;
    inFlight = null;
    draw(msg, performance.now() - frame.sentAt);
    if (msg.capture) {
      el.dataset.shutterFired = String(frame.id);
      capture(frame.id, false);
    }
    schedule(MIN_INTERVAL_MS - (performance.now() - lastSent));
  }

  const onActive = () => (model.get("active") ? start() : stop());
  const onPageHide = () => stop();
  el.querySelector(".smilekit-snap").addEventListener("click", () => {
    if (!stream || !video.videoWidth) return;
    full.width = video.videoWidth; full.height = video.videoHeight;
    full.getContext("2d").drawImage(video, 0, 0);
    capture(frameId, true);
  });
  el.querySelector(".smilekit-flip").addEventListener("click", () => {
    facing = facing === "user" ? "environment" : "user";
    if (stream) { stop(); start(); }
  });
  model.on("change:active", onActive);
  model.on("msg:custom", onMessage);
  window.addEventListener("pagehide", onPageHide);
  onActive();
  return () => {
    stop();
    model.off("change:active", onActive);
    model.off("msg:custom", onMessage);
    window.removeEventListener("pagehide", onPageHide);
  };
}

export default { render };
