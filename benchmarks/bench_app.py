"""How fast the app feels: page ready, upload to labels, click to saved, kernel memory.

Starts the app as scripts/serve does (temporary database and Jupyter state), drives it
in headless Chromium and prints one table. Targets: page ready <= 3 s (preheated),
upload -> labels <= 0.5 s, click -> saved <= 0.15 s, kernel memory <= 300 MB. Then the camera's
figures (benchmarks/bench_camera.py: a fake camera playing real faces) unless --no-camera.

    .venv/bin/python benchmarks/bench_app.py [--model PATH] [--repeat 3] [--no-camera]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import CHROMIUM, CHROMIUM_ARGS, VoilaServer, make_collage  # noqa: E402 - the launcher the tests use

CELEBA = Path(os.environ.get("SMILEKIT_TEST_DATA", ROOT.parent / "shared" / "data")) / "celeba-subset"


def make_photos(folder: Path) -> dict[str, Path]:
    """A one-face photo of about 1 MP and a four-face collage, as JPEGs."""
    face = Image.open(CELEBA / "img" / "0.jpg").convert("RGB").resize((900, 1100), Image.BICUBIC)
    out = {"1 face, 1 MP": folder / "face-1mp.jpg", "4 faces": folder / "group.jpg"}
    face.save(out["1 face, 1 MP"], quality=90)
    out["4 faces"].write_bytes(make_collage(CELEBA))
    return out


def start(state: Path, preheat: bool, model: str | None) -> VoilaServer:
    """scripts/serve on a free port, with or without a preheated kernel."""
    state.mkdir(exist_ok=True)
    return VoilaServer(state, Path(model) if model else None, env={"SMILEKIT_PREHEAT": str(preheat)})


def page_ready(browser, url: str, width: int = 1280):
    page = browser.new_page(viewport={"width": width, "height": 1600})
    page.set_default_timeout(120_000)
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(".smilekit-upload")
    return page, time.perf_counter() - start


def upload_to_labels(page, path: Path) -> float:
    cards = page.locator(".smilekit-face")
    before = cards.count()
    with page.expect_file_chooser() as chooser:
        page.click(".smilekit-upload")
    start = time.perf_counter()
    chooser.value.set_files([str(path)])
    page.wait_for_function(f"document.querySelectorAll('.smilekit-face').length > {before}", polling="raf")
    return time.perf_counter() - start


def click_to_saved(page, correct: bool) -> float:
    card = page.locator(".smilekit-face").first
    status = card.locator(".widget-html").last
    wanted = "Saved: correct" if correct else "Saved: incorrect"
    start = time.perf_counter()
    card.locator(".smilekit-correct" if correct else ".smilekit-incorrect").click()
    status.filter(has_text=wanted).wait_for()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint to serve (default: the app's default model)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per row (the median is shown)")
    parser.add_argument("--no-camera", action="store_true", help="leave out the camera's figures")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    rows: list[tuple[str, float, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="smilekit-bench-") as tmp, sync_playwright() as p:
        tmp = Path(tmp)
        photos = make_photos(tmp)
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)

        # cold: no kernel waiting, the page load starts one and runs the notebook
        cold = []
        for n in range(args.repeat):
            server = start(tmp / f"cold{n}", False, args.model)
            page, seconds = page_ready(browser, server.url)
            cold.append(seconds)
            page.close()
            server.close()
        rows.append(("page ready, cold (no preheated kernel)", statistics.median(cold), "s", 3.0))

        server = start(tmp / "warm", True, args.model)
        warm, uploads, clicks = [], {name: [] for name in photos}, []
        for n in range(args.repeat):
            time.sleep(15 if n else 10)  # let the pool (re)fill: a kernel that has already run the notebook
            page, seconds = page_ready(browser, server.url)
            warm.append(seconds)
            for name, path in photos.items():
                upload_to_labels(page, path)  # first upload of a page warms caches; measure the next ones
                uploads[name] += [upload_to_labels(page, path) for _ in range(args.repeat)]
            for k in range(args.repeat * 2):
                clicks.append(click_to_saved(page, correct=bool(k % 2)))
            if n < args.repeat - 1:
                page.close()
        kernel = max(server.kernels(), key=lambda k: k.memory_info().rss)
        memory = kernel.memory_info().rss / 2**20
        unique = kernel.memory_full_info().uss / 2**20
        page.close()
        server.close()
        browser.close()

    rows.append(("page ready, preheated (scripts/serve)", statistics.median(warm), "s", 3.0))
    for name, times in uploads.items():
        rows.append((f"upload -> labels, {name}", statistics.median(times), "s", 0.5))
    rows.append(("click -> saved (verdict shown)", statistics.median(clicks), "s", 0.15))
    rows.append(("kernel memory (RSS, largest kernel)", memory, "MB", 300.0))
    rows.append(("  of which its own (USS, not shared)", unique, "MB", 300.0))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{psutil.cpu_count()} CPUs, load average {load} (other work slows every figure but memory)")
    print(f"{'measure':<44} {'median':>10} {'target':>10}  ok")
    for name, value, unit, target in rows:
        print(f"{name:<44} {value:>7.2f} {unit:<2} {target:>7.2f} {unit:<2} {'yes' if value <= target else 'NO'}")
    if not args.no_camera:
        import bench_camera

        with tempfile.TemporaryDirectory(prefix="smilekit-bench-camera-") as tmp:
            camera = bench_camera.camera_rows(args.model, 10.0, args.repeat, Path(tmp))
        print("\ncamera mode (fake camera, 640x480, one face):")
        bench_camera.print_rows(camera)


if __name__ == "__main__":
    main()
