"""Wall time of ``smilekit predict PHOTO`` as a person runs it (process start included), now and at an older commit.

The older commit's ``smilekit`` package is extracted into a temporary folder (``git archive``) and both are run
alternately, back to back, so the machine's load is the same for both; medians of ``--runs`` each. Also says
whether each imported torch (``python -X importtime``).

    .venv/bin/python benchmarks/bench_cli.py [--before REV] [--runs 7] [--photo PATH]

``--before`` defaults to the commit this branch left main at (``git merge-base HEAD main``).
Figures are from a machine shared with whatever else runs; say so with them.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def extract(rev: str, into: Path) -> Path:
    """The ``smilekit`` package of commit ``rev`` in ``into`` (returned as a PYTHONPATH entry)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "smilekit"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run(pythonpath: Path, photo: Path, importtime: bool = False) -> tuple[float, str]:
    """(seconds from process start to exit, stderr) of one ``python -m smilekit predict PHOTO``."""
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "smilekit", "predict", str(photo)]
    start = time.perf_counter()
    # run from the package's own folder: ``-m`` puts the working directory first on sys.path
    result = subprocess.run(command, env=env, cwd=pythonpath, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"predict failed with PYTHONPATH={pythonpath}: {result.stderr[-2000:]}")
    return elapsed, result.stderr


def imports_torch(pythonpath: Path, photo: Path) -> bool:
    _, log = run(pythonpath, photo, importtime=True)
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in log.splitlines() if line.startswith("import time:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=None, help="older commit (default: merge-base of HEAD and main)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--photo", type=Path, default=ROOT.parent / "shared" / "data" / "celeba-subset" / "img" / "0.jpg")
    args = parser.parse_args()
    args.photo = args.photo.resolve()
    before = args.before or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                           capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {f"before ({before[:8]})": extract(before, Path(tmp)), "now": ROOT}
        for tree in trees.values():
            run(tree, args.photo)  # warm the file cache
        times = {label: [] for label in trees}
        for _ in range(args.runs):
            for label, tree in trees.items():
                times[label].append(run(tree, args.photo)[0])
        print(f"smilekit predict {args.photo.name}, wall time with process start, median of {args.runs} (min-max):")
        for label, tree in trees.items():
            t = times[label]
            print(f"  {label:>20}: {statistics.median(t):.2f} s ({min(t):.2f}-{max(t):.2f}), imports torch: {imports_torch(tree, args.photo)}")


if __name__ == "__main__":
    main()
