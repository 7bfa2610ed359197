"""OpenCV DNN against onnxruntime on a checkpoint's ONNX export: milliseconds per face, and memory.

For each runtime (in a fresh process, so imports and memory do not mix), on one
thread: one face at a time, and a group photo's 30 faces in one batch; the
median of ``--repeats`` runs, and the process's resident memory after loading
the model and running it. Run it alone: another job on the same cores slows
every figure.

    python benchmarks/bench_runtime.py [checkpoint.pt ...] [--repeats 200]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEASURE = r"""
import json, resource, statistics, sys, time
import numpy as np
from smilekit import runtime
checkpoint, backend, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
runtime.set_threads(1)
model = runtime.ExportedModel.of_checkpoint(checkpoint, backend=backend)
rng = np.random.default_rng(0)
def median_ms(n):
    x = rng.random((n, 1, runtime.INPUT_SIZE, runtime.INPUT_SIZE), dtype=np.float32)
    model.logits(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.logits(x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
one, thirty = median_ms(1), median_ms(30)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"one_face_ms": round(one, 3), "thirty_faces_ms": round(thirty, 2), "peak_rss_mb": round(rss)}))
"""


def measure(checkpoint: Path, backend: str, repeats: int) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(checkpoint), backend, str(repeats)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", default=[str(ROOT / "smilekit" / "weights" / "model.pt")])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"{'checkpoint':<34} {'runtime':<12} {'1 face ms':>9} {'30 faces ms':>11} {'peak RSS MB':>11}  (1 thread)")
    for checkpoint in map(Path, args.checkpoints):
        for backend in ("opencv", "onnxruntime"):
            r = measure(checkpoint, backend, args.repeats)
            print(f"{checkpoint.name:<34} {backend:<12} {r['one_face_ms']:>9.3f} {r['thirty_faces_ms']:>11.2f} {r['peak_rss_mb']:>11}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
