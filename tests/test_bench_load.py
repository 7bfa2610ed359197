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


def test_sustained_rate_is_the_highest_rate_that_met_the_target():
    Visit, Scenario = bench_load.Visit, bench_load.Scenario

    def arrivals(rate: float, ready_s: float, failed: bool = False) -> dict:
        visits = [Visit(page_ready_s=ready_s, upload_to_label_s=0.5, click_to_saved_s=0.2, clicked=True) for _ in range(4)]
        if failed:
            visits[0] = Visit(outcome="timeout: upload", page_ready_s=ready_s)
        return bench_load.summary(Scenario(name=f"{rate}/s", root="/x", visitors=4, driver="protocol", rate=rate, duration_s=4,
                                           visits=visits, cpu_s=1.0, db_rows=4 - failed))

    rows = [arrivals(1, 2.0), arrivals(2, 6.0), arrivals(4, 30.0)]
    assert [r["meets_target"] for r in rows] == [True, True, False]
    assert bench_load.sustained_rate(rows) == {("protocol", 1, "/x", ""): 2}
    assert bench_load.sustained_rate([arrivals(1, 2.0, failed=True)]) == {("protocol", 1, "/x", ""): None}


def test_comparison_puts_the_two_drivers_side_by_side():
    Visit, Scenario = bench_load.Visit, bench_load.Scenario
    visits = [Visit(page_ready_s=1.0, upload_to_label_s=0.1, click_to_saved_s=0.1, clicked=True) for _ in range(5)]
    browser = bench_load.summary(Scenario(name="5 at once", root="/x", visitors=5, visits=visits, cpu_s=2.5, db_rows=5))
    close = bench_load.summary(Scenario(name="5 at once", root="/x", visitors=5, driver="protocol", visits=visits, cpu_s=2.7, db_rows=5))
    far = bench_load.summary(Scenario(name="5 at once", root="/x", visitors=5, driver="protocol", visits=visits, cpu_s=1.5, db_rows=5))
    [line] = bench_load.compared([browser, close])
    assert "+8 %" in line and "within 20 %" in line and "one row per click in both" in line
    assert "NOT within 20 %" in bench_load.compared([browser, far])[0]
