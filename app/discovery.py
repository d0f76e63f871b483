"""Find the model versions to serve: ``graphs/<model>/<version>/model.pb``.

The highest integer version folder that holds a ``model.pb`` is served. Anything that
looks like a model folder but is not usable is an error naming the path, because a
silently skipped model is worse than a refused start.
"""

from __future__ import annotations

import re
from pathlib import Path

from app.manifest import GRAPH_FILE
from app.servable import ServableSpec

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DiscoveryError(ValueError):
    """The graphs directory or a model folder in it is not laid out as expected."""


def discover(graphs_dir: Path | str) -> list[ServableSpec]:
    """One spec per model (its newest version), sorted by model name."""
    root = Path(graphs_dir)
    if not root.is_dir():
        raise DiscoveryError(f"graphs directory '{root}' does not exist")
    specs = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if not MODEL_NAME.match(model_dir.name):
            raise DiscoveryError(
                f"'{model_dir}': model folder names use letters, digits, '_', '.', '-' (max 64)"
            )
        versions = sorted(
            (int(p.name), p) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()
        )
        servable = [(v, p) for v, p in versions if (p / GRAPH_FILE).is_file()]
        if not servable:
            raise DiscoveryError(
                f"'{model_dir}' has no version folder with a {GRAPH_FILE} "
                f"(expected {model_dir}/<integer version>/{GRAPH_FILE})"
            )
        version, path = servable[-1]
        specs.append(ServableSpec(name=model_dir.name, version=version, directory=path))
    return specs
