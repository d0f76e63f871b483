#!/usr/bin/env python3
"""Print the table of every service setting, generated from ``app.config.Settings``.

One row per field of the dataclass: its environment variable (``GRAPHSERVE_<NAME>``), the
``graphserve serve`` flag that sets it (from ``app.cli.serve_parser``; most settings have
none), its type, its default, and its description: the trailing ``# comment`` of the field's
line in app/config.py, else its flag's help. Nothing here imports TensorFlow (neither ``app.config`` nor
``app.cli`` needs it).

    .venv/bin/python scripts/settings_table.py            # print the markdown table
    .venv/bin/python scripts/settings_table.py --write    # put it into docs/configuration.md

``--write`` replaces what lies between ``<!-- settings:start -->`` and
``<!-- settings:end -->`` in docs/configuration.md; tests/test_docs.py fails when that part
differs from what this prints, i.e. when a setting was added or changed without rerunning it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize
from pathlib import Path

# The scripts that import app or freeze start with this line. Run as a script, Python puts
# this folder first on sys.path: the checkout is not on it (app and freeze would import only
# if installed), and this file would be found as ``freeze``. The checkout first fixes both.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import cli, config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"
HEADER = ("setting", "environment", "flag", "type", "default", "meaning")


def comments() -> dict[str, str]:
    """Field name -> the trailing ``# comment`` on its line in ``Settings``' source."""
    source = inspect.getsource(config.Settings)
    lines: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            if source.splitlines()[row - 1][:col].strip():  # code before it: a trailing comment
                lines[row] = token.string.lstrip("#").strip()
    found: dict[str, str] = {}
    (cls,) = ast.parse(source).body
    assert isinstance(cls, ast.ClassDef)
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            end = node.end_lineno or node.lineno
            text = lines.get(end, "")
            if text:
                found[node.target.id] = text
    return found


def _flag_actions() -> list[argparse.Action]:
    return [a for a in cli.serve_parser()._actions if a.option_strings and a.dest != "help"]


def flags() -> dict[str, list[str]]:
    """Field name -> how ``graphserve serve`` sets it, e.g. ``--port``, ``--no-batching`` (= false)."""
    found: dict[str, list[str]] = {}
    for action in _flag_actions():
        spelling = ", ".join(f"`{option}`" for option in action.option_strings)
        if isinstance(action, argparse._StoreConstAction):
            const = action.const
            spelling += f" (= {str(const).lower() if isinstance(const, bool) else const})"
        found.setdefault(action.dest, []).append(spelling)
    return found


def flag_help() -> dict[str, str]:
    """Field name -> its flag's help, without the "(default ...)" the table shows apart.

    The description of a field whose line has no trailing comment."""
    found: dict[str, str] = {}
    for action in _flag_actions():
        if action.help and action.dest not in found:
            found[action.dest] = re.sub(r" ?\(default [^);]*\)", "", action.help).replace("(default ", "(")
    return found


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor and value % factor == 0:
            return f"{value // factor} {unit}"
    return f"{value:,}"


def default_text(field: dataclasses.Field, value: object) -> str:
    """The default as one writes it in the environment (with a readable size for byte counts)."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "(empty)"
    if isinstance(value, int) and field.name.endswith("_bytes"):
        return f"`{value}` ({_size(value)})"
    if isinstance(value, int) and value >= 10_000:
        return f"`{value}` ({value:,})"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table() -> str:
    """The markdown table, one row per setting, in the dataclass's order."""
    descriptions, set_by = {**flag_help(), **comments()}, flags()
    defaults = config.Settings()
    rows = [HEADER, ("---",) * len(HEADER)]
    for field in dataclasses.fields(config.Settings):
        value = getattr(defaults, field.name)
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        rows.append((
            f"`{field.name}`",
            f"`{config.ENV_PREFIX}{field.name.upper()}`",
            "; ".join(set_by.get(field.name, [])) or "",
            f"`{kind}`",
            default_text(field, value),
            _cell(descriptions.get(field.name, "")),
        ))
    return "".join("|" + "|".join(f" {cell} " if cell else " " for cell in row) + "|\n" for row in rows)


def replaced(text: str, generated: str) -> str:
    """``text`` with the part between the markers replaced by ``generated``."""
    try:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"{DOC}: the markers {START} and {END} are missing") from None
    return f"{head}{START}\n{generated}{END}{tail}"


def current(text: str) -> str:
    """The table now between the markers of ``text`` (what ``--write`` last wrote)."""
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/settings_table.py",
        description="Print the settings table generated from app.config.Settings (markdown).",
    )
    parser.add_argument("--write", action="store_true",
                        help=f"replace the table between the markers in {DOC.relative_to(ROOT)} instead of printing it")
    args = parser.parse_args(argv)
    generated = table()
    if not args.write:
        sys.stdout.write(generated)
        return 0
    text = DOC.read_text()
    new = replaced(text, generated)
    if new != text:
        DOC.write_text(new)
        print(f"wrote the settings table into {DOC.relative_to(ROOT)}")
    else:
        print(f"{DOC.relative_to(ROOT)}: the settings table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
