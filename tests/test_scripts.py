"""Every script under ``scripts/`` runs from the checkout with any Python 3.11+ that has the
requirements, whether or not the checkout is installed into it (issue 22).

The project's own venv has the checkout installed editable, which hides a script that only
works installed. So these tests build a bare venv (``--without-pip``) that sees the project
venv's site-packages through a path line in a ``.pth`` file: the requirements import, but the
editable install's own ``.pth`` inside that folder is not run, so ``app`` and ``freeze`` do not
(checked first). Each script then runs with ``--help`` from a folder outside the checkout, and
one runs by its shebang with ``python3`` the only Python on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHEBANG = "#!/usr/bin/env python3"


def _scripts() -> list[Path]:
    """The runnable Python files under scripts/: those with a ``__main__`` block (the bench's
    peer servers live in app/bench/peer_servers/ and are started as modules)."""
    files = sorted((ROOT / "scripts").glob("*.py"))
    return [f for f in files if 'if __name__ == "__main__":' in f.read_text()]


SCRIPTS = _scripts()


def _ids(path: Path) -> str:
    return str(path.relative_to(ROOT / "scripts"))


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the requirements (this venv's site-packages), not the checkout; its bin/ has no ``python``."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (venv / "bin" / "python").unlink()  # python3 only, as on systems without a `python` command
    python = venv / "bin" / "python3"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    probe = "import numpy, flask, PIL\ntry:\n    import freeze\nexcept ModuleNotFoundError:\n    print('no freeze')"
    done = _run([python, "-c", probe], cwd=venv.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no freeze", "the checkout is importable without the scripts' own path fix"
    return venv


def _run(command: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env or clean, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=_ids)
def test_script_has_a_python3_shebang_and_is_executable(script: Path) -> None:
    assert script.read_text().splitlines()[0] == SHEBANG
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(ROOT)}"


@pytest.mark.parametrize("script", SCRIPTS, ids=_ids)
def test_script_help_runs_without_the_checkout_installed(bare_venv: Path, tmp_path: Path, script: Path) -> None:
    done = _run([bare_venv / "bin" / "python3", script, "--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: "), done.stdout[:500]


def test_freeze_script_runs_by_its_shebang(bare_venv: Path) -> None:
    env = {"PATH": str(bare_venv / "bin"), "HOME": os.environ.get("HOME", "/tmp")}
    done = _run([ROOT / "scripts" / "freeze.py", "--help"], cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: scripts/freeze.py ")
