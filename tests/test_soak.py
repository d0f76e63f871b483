"""Soak: real photos with hostile uploads mixed in, against a real server on the digit graphs.

``scripts/soak.py`` sends good photos (each must get 200 and the same top-1 as its first
answer) and a share of hostile requests (each must get the answer its kind expects: a JSON
4xx for all but the many-frames GIF, which is classified by its first frame), reads the
server's RSS from ``/stats`` as it goes, and fails on any other answer or connection error.

Both tests run the script as a user would: it starts ``python -m app`` on the digit graphs, so
the RSS it reads is the server's alone; the slow one runs 20,000 requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# RSS growth (MB) from the baseline request to the end that a soak must stay under. Measured on
# the 2-core dev machine under load from other test runs (30 % hostile, concurrency 4):
# - the script starting its own server on the digit graphs: -13.5 MB (1,000 requests, baseline
#   250), +3.8 and +0.55 MB (1,500 requests, baseline 500: this test);
# - the script on the three demo models, 5,000 requests, baseline 1,000: +6.6 MB (1,006 -> 1,013 MB).
# - and once, in a fresh-clone CI run: +37.9 MB (850 MB at request 536, 857, 872, 890, 888 at 1,500):
#   RSS also fell 19 MB before the baseline, so this is glibc keeping or returning a peak in steps,
#   as the long soak below shows, not a slope.
# The bound is the long soak's: a leak of 48 KB per request would add 48 MB over the 1,000
# requests after the baseline. (It was 25 MB, which that CI run exceeded without a leak.)
MAX_GROWTH_MB = 48.0
# The long soak (python -m app on the digit graphs, 20,000 requests, baseline at 2,000): +19.5 MB,
# but as one step, not a slope: 836.6 MB at request 2,000, 838-841 MB up to 14,000, one step of
# +17 MB before 16,000, then 855-856 MB to the end (glibc keeping a freed peak). A real leak of
# 4 KB per request would add 70 MB over those 18,000 requests.
MAX_GROWTH_LONG_MB = 48.0


def run_soak_script(graphs_dir: Path, tmp_path: Path, *, requests: int, baseline: int, every: int,
                    max_seconds: float, timeout: float) -> dict:
    report = tmp_path / "soak.json"
    command = [
        sys.executable, str(ROOT / "scripts" / "soak.py"), "--graphs-dir", str(graphs_dir),
        "--requests", str(requests), "--hostile", "0.3", "--concurrency", "4", "--every", str(every),
        "--baseline", str(baseline), "--max-seconds", str(max_seconds), "--json", str(report),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    output = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, output
    data = json.loads(report.read_text())
    data["output"] = output
    return data


def check_report(data: dict, requests: int, max_growth_mb: float = MAX_GROWTH_MB) -> None:
    summary, kinds = data["summary"], data["hostile_kinds"]
    assert summary["requests"] == requests, f"only {summary['requests']} before --max-seconds: {data['output']}"
    assert summary["errors"] == summary["good_failed"] == summary["hostile_failed"] == 0, summary
    assert summary["connection_errors"] == 0, summary
    assert summary["hostile"] == int(requests * 0.3), summary
    assert len(kinds) >= 20 and all(k["sent"] > 0 and k["failed"] == 0 for k in kinds.values()), kinds
    growth = summary["rss_growth_mb_after_baseline"]
    assert growth < max_growth_mb, f"RSS grew {growth} MB after warm-up: {data['rows']}"
    print(json.dumps(summary))  # the figures, for -rA or a failure report


def test_soak_good_and_hostile_traffic(graphs_dir, tmp_path):
    """The script starts its own server: RSS is then the server's alone. (In the test process,
    after the rest of the suite, RSS drifted +28-47 MB over the same 1,000 requests from the
    other tests' leftovers, and the same soak alone grew +2 to +4 MB.)"""
    data = run_soak_script(graphs_dir, tmp_path, requests=1500, baseline=500, every=250, max_seconds=120,
                           timeout=300)
    check_report(data, 1500)


@pytest.mark.slow
def test_soak_script_long(graphs_dir, tmp_path):
    """The script as a user runs it (it starts the server), 20,000 requests: a few minutes."""
    data = run_soak_script(graphs_dir, tmp_path, requests=20_000, baseline=2_000, every=2_000, max_seconds=900,
                           timeout=1200)
    check_report(data, 20_000, MAX_GROWTH_LONG_MB)
