"""What one click costs as the feedback table grows: record a verdict, then redraw the live panel.

For each size (default 10k, 100k and 1M rows) the table is filled with made-up verdicts in bulk,
then 20 clicks are timed as the app makes them (``record`` then ``stats``), and ``stats`` alone.
SQLite always (a temporary file); PostgreSQL with ``--postgres URL`` (an empty database it may fill).
Target: a click at 1M rows as fast as with an empty table (<= 0.15 s).

    .venv/bin/python benchmarks/bench_feedback.py [--sizes 10000,100000,1000000] [--postgres URL] [--root CHECKOUT]

``--root`` imports ``smilekit`` from another checkout (a ``git worktree`` of an older commit) to compare.
Figures are medians on a 2-core machine shared with whatever else runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 20_000


def fill(store, target: int) -> None:
    """Add made-up verdicts until the table holds ``target`` rows (bulk insert, through the triggers)."""
    from sqlalchemy import func, insert, select

    from smilekit.store.feedback import Verdict

    with store.engine.connect() as conn:
        have = conn.execute(select(func.count(Verdict.id))).scalar_one()
    now = time.time()
    while have < target:
        n = min(BATCH, target - have)
        rows = [dict(session_id=f"bulk{(have + i) // 50}", photo_sha256=f"{have + i:064x}", face_index=0, box_x=1, box_y=2,
                     box_w=30, box_h=30, predicted_smiling=(have + i) % 3 == 0, probability=0.7, model_version=f"v{(have + i) % 4}",
                     verdict="correct" if (have + i) % 5 else "incorrect", true_smiling=(have + i) % 2 == 0)
                for i in range(n)]
        with store.engine.begin() as conn:
            conn.execute(insert(Verdict), rows)
        have += n
    print(f"  filled to {target:,} rows in {time.time() - now:.0f} s", flush=True)


def time_clicks(store, clicks: int = 20) -> tuple[float, float]:
    """Median seconds of a click (record + stats) and of stats alone."""
    click, stats = [], []
    for n in range(clicks):
        start = time.perf_counter()
        store.record(session_id="bench", photo_sha256="b" * 64, face_index=n, box=(1, 2, 3, 4), probability=0.8,
                     model_version="v1", correct=n % 2 == 0)
        middle = time.perf_counter()
        store.stats()
        end = time.perf_counter()
        click.append(end - start)
        stats.append(end - middle)
    return statistics.median(click), statistics.median(stats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated table sizes")
    parser.add_argument("--postgres", help="URL of an empty PostgreSQL database to fill (omitted: SQLite only)")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose smilekit is measured")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.root.resolve()))
    from smilekit.store import feedback
    from smilekit.store.feedback import FeedbackStore

    assert feedback.__file__.startswith(str(args.root.resolve())), feedback.__file__

    sizes = [0] + [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"SQLite": f"sqlite:///{tmp}/feedback.db"}
        if args.postgres:
            urls["PostgreSQL"] = args.postgres
        for backend, url in urls.items():
            print(f"{backend}: {feedback.__file__}", flush=True)
            store = FeedbackStore(url)
            for size in sizes:
                fill(store, size)
                click, stats = time_clicks(store)
                results.append((backend, size, click, stats))
                print(f"  {size:>9,} rows: click {click * 1000:7.1f} ms, stats {stats * 1000:7.1f} ms", flush=True)
            store.close()
    print(f"\n{'database':10} {'rows':>10} {'click (record + stats)':>24} {'stats alone':>12}")
    for backend, size, click, stats in results:
        print(f"{backend:10} {size:>10,} {click * 1000:>21.1f} ms {stats * 1000:>9.1f} ms")
    print("\n(medians of 20 clicks; 2-core machine, shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
