"""The "Freeze your own model" examples of docs/freeze.md, run as written (issues 22, 23).

The commands are read out of docs/freeze.md (README.md until issue 23), so an example that
stops working, or a file it points at that users do not have, fails here. They run in a folder laid out like the
checkout (``docs/``, ``graphs/`` and ``.cache/`` are links to the real ones, read only);
``--graphs-dir`` is added to each command that writes a version, and ``/tmp/...`` outputs go
to the test's own folder, so nothing is written into the checkout.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from app.manifest import LABELS_FILE, MANIFEST_FILE, load
from freeze import run_frozen
from tests.freeze.conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras 3 saving

SCRIPT = ".venv/bin/python scripts/freeze.py "
DEMO_MATERIAL = (".cache/", "graphs/")  # what scripts/serve (graphserve demo-models) leaves in a checkout


def _section() -> str:
    text = (REPO / "docs" / "freeze.md").read_text()
    start = text.index("## Freeze your own model")
    return text[start : text.index("\n## ", start + 1)]


SECTION = _section()
SH_BLOCKS = re.findall(r"```sh\n(.*?)```", SECTION, re.S)
HEREDOC = re.compile(r"\.venv/bin/python - <<'EOF'\n(.*?)\nEOF\n", re.S)
MAKE_TINY = HEREDOC.findall("".join(SH_BLOCKS))
COMMANDS = [
    line[len(SCRIPT) :]
    for block in SH_BLOCKS
    for line in HEREDOC.sub("", block).replace("\\\n", " ").splitlines()
    if line.startswith(SCRIPT)
]
LIBRARY = re.findall(r"```python\n(.*?)```", SECTION, re.S)


def test_the_readme_section_has_what_these_tests_run() -> None:
    assert len(MAKE_TINY) == 1 and 'save("tiny.keras")' in MAKE_TINY[0]
    assert any(c.startswith("tiny.keras --inspect") for c in COMMANDS)
    assert any(c.startswith("tiny.keras --name tiny ") for c in COMMANDS)
    assert len(LIBRARY) == 1
    assert "shared/testdata" not in SECTION  # developers' test material, not what users have


@pytest.fixture(scope="module")
def checkout_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder like the checkout, with ``tiny.keras`` made by docs/freeze.md's own five lines."""
    folder = tmp_path_factory.mktemp("checkout")
    for name in ("docs", "graphs", ".cache"):
        (folder / name).symlink_to(REPO / name, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        exec(compile(MAKE_TINY[0], "docs/freeze.md", "exec"), {})
    assert (folder / "tiny.keras").is_file()
    return folder


def _as_run_here(command: str, out: Path) -> list[str]:
    args = [str(out / Path(a).name) if a.startswith("/tmp/") else a for a in shlex.split(command)]
    return [*args, "--graphs-dir", str(out / "graphs")] if "--name" in args else args


def _with_demo_graphs(checkout: Path, demo_graphs: Path, folder: Path) -> Path:
    """``checkout`` with ``graphs/`` the session's demo models; their wheels are unpacked under ``.cache/``."""
    folder.mkdir()
    for entry in checkout.iterdir():
        (folder / entry.name).symlink_to(demo_graphs if entry.name == "graphs" else entry)
    return folder


def _params() -> list:
    params = []
    for command in COMMANDS:
        marks = [] if command.startswith("tiny.keras ") else [pytest.mark.slow]  # the demo models' real files
        source, flag = command.split()[:2]
        params.append(pytest.param(command, marks=marks, id=source.rsplit("/", 1)[-1] + flag))
    return params


@pytest.mark.parametrize("command", _params())
def test_readme_freeze_command_runs_as_written(
    freeze_cli: Callable[..., int], checkout_like: Path, tmp_path: Path, monkeypatch, capsys, command: str, request
) -> None:
    args = _as_run_here(command, tmp_path)
    if not command.startswith("tiny.keras "):  # the slow tier: the demo models, built as demo-models builds them
        checkout_like = _with_demo_graphs(checkout_like, request.getfixturevalue("demo_graphs"), tmp_path / "checkout")
    paths = [args[0], *(a for a in args[1:] if "/" in a and not a.startswith(("-", "/")))]
    missing = [a for a in paths if not (checkout_like / a).exists()]
    assert not [a for a in missing if not a.startswith(DEMO_MATERIAL)], "docs/freeze.md points at files users lack"
    assert not missing, f"{', '.join(missing)}: not what graphserve demo-models leaves in a checkout"
    monkeypatch.chdir(checkout_like)
    assert freeze_cli(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    if "--inspect" in args:
        assert "would use: inputs input:0; outputs Identity:0" in out
    elif "--output-pb" in args:
        assert tf.compat.v1.GraphDef.FromString(Path(args[args.index("--output-pb") + 1]).read_bytes()).node
    else:
        name = args[args.index("--name") + 1]
        version = tmp_path / "graphs" / name / "1"
        assert f"wrote {version}" in out and "verified: OK" in out
        assert load(version / MANIFEST_FILE).info["verification"]["passed"]


def test_readme_tiny_model_end_to_end(
    freeze_cli: Callable[..., int], checkout_like: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """docs/freeze.md's freeze of tiny.keras writes a version that computes what the Keras model does."""
    import keras

    (command,) = [c for c in COMMANDS if c.startswith("tiny.keras --name tiny ")]
    monkeypatch.chdir(checkout_like)
    assert freeze_cli(_as_run_here(command, tmp_path)) == 0
    out = capsys.readouterr().out
    shown = re.search(r"```\n(froze keras tiny.keras .*?)```", SECTION, re.S)
    assert shown, "docs/freeze.md shows the summary of freezing tiny.keras"
    for line in shown.group(1).splitlines():  # the page's output is real (but for time, size, path)
        if line.lstrip().startswith(("nodes:", "input:", "output:", "image:")):
            assert line.split("size:")[0] in out, line

    version = tmp_path / "graphs" / "tiny" / "1"
    manifest = load(version / MANIFEST_FILE)
    assert (manifest.input.height, manifest.input.width, manifest.input.channels) == (32, 32, 3)
    assert manifest.output.kind == "probabilities" and manifest.preprocessing.scale == "[0,1]"
    assert (version / LABELS_FILE).read_text().split() == ["cat", "dog", "bird"]
    graph_def = tf.compat.v1.GraphDef.FromString((version / "model.pb").read_bytes())
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    (probs,) = run_frozen(graph_def, {manifest.input.tensor: x}, [manifest.output.tensor])
    model = keras.models.load_model(checkout_like / "tiny.keras", compile=False)
    np.testing.assert_allclose(probs, model(x, training=False).numpy(), atol=1e-5)


def test_readme_library_example(checkout_like: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "tiny.keras").symlink_to(checkout_like / "tiny.keras")
    monkeypatch.chdir(tmp_path)  # its graphs_dir="graphs" must not be the checkout's
    exec(compile(LIBRARY[0], "docs/freeze.md", "exec"), {})
    assert "wrote graphs/tiny/1" in capsys.readouterr().out
    assert load(tmp_path / "graphs" / "tiny" / "1" / MANIFEST_FILE).input.tensor == "input:0"


def test_pipeline_docstring_library_example(checkout_like: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``freeze.pipeline``'s own example, as written in its docstring, on docs/freeze.md's tiny.keras."""
    import freeze.pipeline

    block = freeze.pipeline.__doc__.split('Freeze your own model")::\n\n', 1)[1].split("\n\n", 2)
    code = "\n\n".join(block[:2])
    assert "freeze_model(" in code and "WriteOptions(" in code
    (tmp_path / "tiny.keras").symlink_to(checkout_like / "tiny.keras")
    monkeypatch.chdir(tmp_path)
    exec(compile(textwrap.dedent(code), "freeze/pipeline.py", "exec"), {})
    assert "wrote graphs/tiny/1" in capsys.readouterr().out
    assert load(tmp_path / "graphs" / "tiny" / "1" / MANIFEST_FILE).input.tensor == "input:0"


def test_text_file_named_keras_is_a_one_line_error(freeze_cli: Callable[..., int], tmp_path: Path, capsys) -> None:
    """Not Keras's ``File not found: filepath=bad.keras`` of a file that is there."""
    bad = tmp_path / "bad.keras"
    bad.write_text("hello\n")
    assert freeze_cli([str(bad), "--inspect"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"freeze: error: {bad} is not a Keras file (a .keras file is a zip archive; this one starts with b'hello\\n')\n"
    )
