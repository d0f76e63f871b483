"""The hostile soak (scripts/hostile_soak.py), briefly: every door at once, good and hostile traffic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_hostile_soak_briefly(tmp_path):
    out = tmp_path / "hostile.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "hostile_soak.py"), "--seconds", "25", "--timeout", "30",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "5xx/INTERNAL" in run.stdout and "gzip phase good p50 / baseline p50" in run.stdout
    report = json.loads(out.read_text())
    assert set(report["phases"]) == {"baseline", "gzip", "hostile"}
    assert all(count > 0 for count in report["requests_per_door"].values()), report["requests_per_door"]
    assert not any(report["server_errors_per_door"].values()), report["server_errors_per_door"]
    assert report["failures"] == []
    for phase, figures in report["phases"].items():
        p50, p99 = figures["good_p50_p99_ms"]
        assert figures["good_count"] > 0 and 0 < p50 <= p99, (phase, figures)
        assert 0 <= figures["peak_rss_over_baseline_mib"] < 2048, (phase, figures)  # 8 x 32 MiB inflated: well under
    assert report["gzip_phase_p50_ratio"] is not None and report["gzip_phase_p50_ratio"] < 20, report
