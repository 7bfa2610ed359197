"""benchmarks/bench_load.py: its percentiles and its verdict on a scenario (the browser run itself is the benchmark)."""
from __future__ import annotations

from conftest import load_benchmark

bench_load = load_benchmark("bench_load")


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 21)]  # 1 .. 20
    assert bench_load.pct(values, 0.5) == 10.0
    assert bench_load.pct(values, 0.95) == 19.0
    assert bench_load.pct(values[::-1], 0.95) == 19.0
    assert bench_load.pct([3.0], 0.95) == 3.0
    assert bench_load.pct([], 0.5) is None


def test_summary_counts_served_busy_and_failed_visitors_and_checks_one_row_per_click():
    Visit = bench_load.Visit
    visits = [Visit(page_ready_s=2.0, upload_to_label_s=0.5, clicked=True), Visit(page_ready_s=4.0, upload_to_label_s=0.7, clicked=True),
              Visit(outcome="busy"), Visit(outcome="timeout: page"), Visit(outcome="timeout: click", page_ready_s=9.0, upload_to_label_s=3.0),
              Visit(outcome="timeout: page", busy_answers=4)]  # shown the busy page until the end: answered, not hung
    scenario = bench_load.Scenario(name="6 at once", root="/x", visitors=6, visits=visits, cpu_s=6.0, server_cpu_s=1.5, db_rows=2)
    row = bench_load.summary(scenario)
    assert (row["served"], row["busy"], row["told_to_retry"]) == (2, 2, 1)
    assert row["failed"] == {"timeout: page": 1, "timeout: click": 1}
    assert row["page_ready_max_s"] == 9.0 and row["page_ready_p50_s"] == 4.0
    assert row["cpu_s_per_visit"] == 3.0 and row["voila_process_cpu_s_per_visit"] == 0.75
    assert row["clicks"] == 2 and row["one_row_per_click"]
    scenario.db_rows = 3
    assert not bench_load.summary(scenario)["one_row_per_click"]
