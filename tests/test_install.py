"""The pip package coexists with a user's own ``app`` and ``freeze`` packages (issue 23).

The wheel installs one top-level package, ``graphserve`` (app/ as ``graphserve``, freeze/ as
``graphserve.freeze``; see app/layout.py). These tests build the wheel from the checkout,
install it into a bare venv that sees the project venv's requirements through a ``.pth`` line
(not the editable checkout), and run it from a user's Flask project with ``PYTHONPATH=.`` and
its own ``app/`` and ``freeze/``: the console script, the freeze library, and a real
``graphserve serve`` answering a classification.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import requests

from tests.digits import png_bytes

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_list_names_every_package_folder() -> None:
    """pyproject.toml lists the packages by hand (package-dir renames them): a new one must be added there."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"graphserve": "app", "graphserve.freeze": "freeze"}
    assert config["package-dir"] == folders
    on_disk = set()
    for package, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            inner = init.parent.relative_to(ROOT / folder).parts
            if "__pycache__" not in inner:
                on_disk.add(".".join((package, *inner)))
    nested = {p for p in on_disk if p.startswith("graphserve.freeze")} - {"graphserve.freeze"}
    assert not nested, "freeze/ subpackages need their own package-dir line"
    assert set(config["packages"]) == on_disk


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(ROOT)], check=True, timeout=300, capture_output=True)
    (built,) = out.glob("graphserve-*.whl")
    return built


def test_the_wheel_installs_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"graphserve", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for needed in ("graphserve/static/index.html", "graphserve/bench/bench_wrk.lua", "graphserve/freeze/cli.py",
                   "graphserve/freeze/_serving.py", "graphserve/tensorflow_log.py"):
        assert needed in names


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare venv with the requirements (this venv's site-packages) and the wheel installed."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, timeout=300, capture_output=True)
    return venv


@pytest.fixture()
def user_project(tmp_path: Path) -> Path:
    """A user's Flask project: its own ``app`` and ``freeze`` packages, run with ``PYTHONPATH=.``."""
    for package in ("app", "freeze"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"WHOSE = 'user {package}'\n")
    return tmp_path


def _env(venv: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONSAFEPATH", "VIRTUAL_ENV")}
    return {**clean, "PATH": f"{venv / 'bin'}{os.pathsep}{clean.get('PATH', '')}", "PYTHONPATH": ".",
            "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _run(command: list[str | Path], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
                          check=False)


def test_console_script_and_library_run_beside_a_users_own_app_and_freeze(installed: Path,
                                                                           user_project: Path) -> None:
    env = _env(installed)
    for command in (["graphserve", "--help"], ["graphserve", "serve", "--help"], ["graphserve", "freeze", "--help"],
                    ["graphserve", "bench", "--help"], ["graphserve", "demo-models", "--help"]):
        done = _run(command, cwd=user_project, env=env)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert done.stdout.startswith("usage: "), (command, done.stdout[:300])

    probe = ("import app, freeze, graphserve, graphserve.freeze as f, graphserve.grpc_server as g\n"
             "print(app.WHOSE, '|', freeze.WHOSE, '|', graphserve.__file__, '|', f.freeze_model.__module__, '|',"
             " g.SERVICES)")
    done = _run([installed / "bin" / "python", "-c", probe], cwd=user_project, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    users_app, users_freeze, ours, freeze_module, services = (part.strip() for part in done.stdout.split("|"))
    assert (users_app, users_freeze) == ("user app", "user freeze")
    assert "site-packages" in ours and str(ROOT) not in ours
    assert freeze_module == "graphserve.freeze.pipeline"
    assert services == "['graphserve.tfserving.grpc:install', 'graphserve.kserve.grpc:install']"


def test_installed_service_answers_beside_a_users_own_app(installed: Path, user_project: Path, graphs_dir: Path,
                                                          digits) -> None:
    process = subprocess.Popen(
        ["graphserve", "serve", "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0", "--graphs-dir",
         str(graphs_dir)],
        cwd=user_project, env=_env(installed, GRAPHSERVE_LOG_REQUESTS="OFF"), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            match = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if match:
                break
        assert match, "".join(lines)
        answer = requests.post(f"http://127.0.0.1:{match.group(1)}/image_classification?model=digits8&top_k=1",
                               data=png_bytes(digits.test_images[0]), headers={"Content-Type": "image/png"},
                               timeout=60)
        assert answer.status_code == 200, answer.text
        top = answer.json()["models"]["digits8"]["results"][0]["top_k"][0]
        assert top["class_id"] == int(digits.test_y[0])
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[1]
        assert process.returncode == 0, "".join(lines) + rest
        assert "Traceback" not in "".join(lines) + rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
