"""Triton's own load generator, ``perf_analyzer``, against our KServe v2 doors, unchanged: it
reads the model configuration (``/v2/models/multi/config``, the ``ModelConfig`` RPC), makes its
own tensors from it and requires every answer to succeed. ``scripts/perf_analyzer`` installs it
(tritonclient 2.51's wheel, Debian's libb64, CUDA's runtime wheel) into a cache folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from app.services import services_of
from tests.server import running
from tests.tensor_models import write_multi

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "perf_analyzer"


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    installed = subprocess.run([str(SCRIPT), "--install-only"], capture_output=True, text=True, timeout=600)
    if installed.returncode != 0:
        pytest.skip(f"perf_analyzer could not be installed: {installed.stderr.strip()[-500:]}")
    return Path(installed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def multi_app(tmp_path_factory: pytest.TempPathFactory):
    from app import create_app

    root = tmp_path_factory.mktemp("perf_graphs")
    write_multi(root)
    application = create_app({"GRAPHS_DIR": str(root)})
    yield application
    services_of(application).registry.close()


def _run(address: str, protocol: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "-m", "multi", "-u", address, "-i", protocol, "-b", "2", "--concurrency-range", "1:2",
         "--measurement-mode", "count_windows", "--measurement-request-count", "50", "--max-trials", "3",
         "--stability-percentage", "1000", "--percentile", "95"],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_without_errors(perf_analyzer, multi_app, protocol):
    from app.grpc_server import start_grpc_server

    with running(multi_app, threads=4) as url:
        server, port = start_grpc_server(multi_app)
        try:
            address = url.removeprefix("http://") if protocol == "http" else f"127.0.0.1:{port}"
            result = _run(address, protocol)
        finally:
            server.stop(None)
        exposition = services_of(multi_app).metrics.exposition().decode()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Concurrency: 2, throughput:" in output, output[-3000:]
    assert "error" not in output.lower(), output[-3000:]
    label = "kserve_v2_rest" if protocol == "http" else "kserve_v2_grpc"
    failed = [line for line in exposition.splitlines()
              if line.startswith("graphserve_requests_total") and f'protocol="{label}"' in line
              and 'status="200"' not in line and 'status="OK"' not in line and not line.endswith(" 0.0")]
    assert not failed, failed
