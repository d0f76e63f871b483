"""The installed ``graphserve`` command, run as a user runs it: a real subprocess of the console script.

Needs the package installed in the test venv (``scripts/bootstrap`` does an editable install).
TF_CPP_MIN_LOG_LEVEL is removed from the child's environment, so the start-up noise tests see
what a user with a plain shell sees.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import pytest
import requests

GRAPHSERVE = Path(sys.executable).parent / "graphserve"
DEVICE_LINE = re.compile(r"INFO graphserve: running on (CPU \(no GPU found\)|GPU: \S.*)$", re.MULTILINE)
# TensorFlow's own start-up lines: absl's C++ log format (I0000 00:00:...), and the notes seen on
# CPU machines ("failed call to cuInit", "Could not find cuda drivers", the oneDNN notice).
TF_NOISE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|cuInit|oneDNN|cuda drivers|absl::InitializeLog", re.MULTILINE)


def graphserve(*args: str, timeout: float = 60, **popen) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GRAPHSERVE), *args], capture_output=True, text=True, timeout=timeout, **popen)


def plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL" and not k.startswith("GRAPHSERVE_")}


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    if not GRAPHSERVE.is_file():
        pytest.fail(f"{GRAPHSERVE} missing: the package is not installed in this venv (run scripts/bootstrap)")


def test_help_lists_the_four_commands_and_version_is_the_package_version() -> None:
    done = graphserve("--help")
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"^    (\S+)", done.stdout, re.MULTILINE)
    assert listed == ["serve", "freeze", "demo-models", "bench"]
    version = graphserve("--version")
    assert version.stdout.strip() == f"graphserve {metadata.version('graphserve')}"
    unknown = graphserve("frobnicate")
    assert unknown.returncode == 2 and "invalid choice: 'frobnicate'" in unknown.stderr


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("serve", ["--graphs-dir", "--grpc-port", "--lenient-startup", "--log-level", "--verbose"]),
        ("freeze", ["--name", "--no-antialias", "--sample", "--output-pb", "--inspect"]),
        ("demo-models", ["--graphs-dir", "--cache-dir", "--only"]),
    ],
)
def test_each_command_has_its_own_help(command: str, flags: list[str]) -> None:
    done = graphserve(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: graphserve {command} ")
    for flag in flags:
        assert flag in done.stdout, flag
    assert "tensorflow" not in done.stderr.lower()  # help answers without loading TF


def test_python_m_app_is_the_same_serve() -> None:
    done = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ours = graphserve("serve", "--help").stdout
    assert done.stdout.replace("python -m app", "graphserve serve").split() == ours.split()


def test_importing_the_manifest_does_not_load_flask_or_tensorflow() -> None:
    code = "import sys, app.manifest; print(sorted(m for m in ('flask', 'tensorflow') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_serve_starts_quietly_answers_and_exits_0_on_sigterm(graphs_dir: Path, tmp_path: Path) -> None:
    """From a folder outside the checkout, the way an installed user runs it. Beside it, at the
    same time (TF's import is most of both), ``-v`` on a missing graphs folder must let TF's own
    lines through before it stops: the check that the quiet run hides something real."""
    verbose = subprocess.Popen(
        [str(GRAPHSERVE), "serve", "-v", "--graphs-dir", str(tmp_path / "none"), "--port", "0", "--grpc-port", "0"],
        cwd=tmp_path, env=plain_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    proc = subprocess.Popen(
        [str(GRAPHSERVE), "serve", "--graphs-dir", str(graphs_dir), "--port", "0", "--grpc-port", "0"],
        cwd=tmp_path, env=plain_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    ready = threading.Event()
    port: list[int] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            match = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if match:
                port.append(int(match.group(1)))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(90) and port, "\n".join(lines)
        health = requests.get(f"http://127.0.0.1:{port[0]}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        _, verbose_log = verbose.communicate(timeout=60)
    finally:
        for child in (proc, verbose):
            if child.poll() is None:
                child.kill()
                child.wait()
    reader.join(timeout=10)
    log = "\n".join(lines)
    assert len([line for line in lines if DEVICE_LINE.search(line)]) == 1, log
    assert not TF_NOISE.search(log), log
    assert verbose.returncode == 1 and "cannot start: graphs directory" in verbose_log, verbose_log
    assert f"graphserve demo-models --graphs-dir {tmp_path / 'none'}" in verbose_log, verbose_log
    assert DEVICE_LINE.search(verbose_log), verbose_log
    assert TF_NOISE.search(verbose_log), verbose_log


def test_a_taken_port_stops_start_up_before_anything_loads_and_names_the_address(graphs_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags, address in [(["--port", str(port), "--grpc-port", "0"], f"http://127.0.0.1:{port}"),
                               (["--port", "0", "--grpc-port", str(port)], f"gRPC on 127.0.0.1:{port}")]:
            done = graphserve("serve", "--graphs-dir", str(graphs_dir), *flags, env=plain_env())
            assert done.returncode == 1, done.stderr
            assert f"cannot start: cannot listen {'on ' if 'http' in address else 'for '}{address}" in done.stderr
            # found before TensorFlow is imported ("running on ...") and before any model loads
            assert "running on" not in done.stderr and "loaded model" not in done.stderr, done.stderr


def test_a_broken_model_at_start_up_points_at_lenient_startup(make_graphs_dir) -> None:
    graphs = make_graphs_dir()
    (graphs / "digits8" / "1" / "model.pb").write_bytes(b"not a graph")
    done = graphserve("serve", "--graphs-dir", str(graphs), "--port", "0", "--grpc-port", "0", env=plain_env())
    assert done.returncode == 1
    assert "cannot start: " in done.stderr and "model.pb" in done.stderr, done.stderr
    assert "--lenient-startup serves the other models" in done.stderr, done.stderr
    assert not TF_NOISE.search(done.stderr), done.stderr
