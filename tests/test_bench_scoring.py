"""bench/bench_scoring.py runs in its quick shape, so it does not rot; its times are printed, never asserted."""

import pytest

from bench import bench_scoring


@pytest.mark.slow
def test_scoring_bench_runs_every_setting_and_every_file_is_scored(tmp_path):
    report = bench_scoring.main(["--quick", "--json", str(tmp_path / "report.json")])
    assert [row["setting"] for row in report["rows"]] == list(bench_scoring.SETTINGS)
    assert all(row["files_per_s"] > 0 and row["wall_s"] > 0 for row in report["rows"])
    baseline = next(row for row in report["rows"] if row["setting"] == bench_scoring.BASELINE)
    assert baseline["speed_ratio_to_baseline"] == 1.0
    assert (tmp_path / "report.json").is_file()
