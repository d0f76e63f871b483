"""The package's version, as installed (``pyproject.toml``): what ``--version`` and ``GET /v2`` report."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    try:
        return metadata.version("graphserve")
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown (not installed)"
