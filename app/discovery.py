"""Find what to serve (TF Serving's *source*): version folders and each model's version policy.

Layout::

    graphs/<model>/<version>/model.pb       every folder named by digits only is a version
    graphs/<model>/<version>/model.json     (its manifest, see ``manifest``)
    graphs/<model>/versions.json            optional: which versions are served, labels, placement

Folders whose names start with ``.`` or ``_`` or are not all digits are ignored: that is
where half-written versions live (``scripts/freeze.py`` writes ``.3.writing-*`` and then
renames it to ``3``), so a version only ever appears complete. A version folder without a
``model.pb`` is ignored too; one whose ``model.pb`` is there but is no regular file (a folder,
a FIFO) is a version, which the loader refuses (``app.model_files`` reads regular files only).

A folder that changes while it is scanned (a version removed mid-listing) or a ``versions.json``
that cannot be read in time is that model's ``DiscoveryError``: a lenient scan leaves just that
model out. Each version's ``fingerprint`` (type, size, mtime, inode of its files) is taken
during the scan, so the reconciler can tell when a served version's files change.

``versions.json`` (every field optional; validated strictly, errors name the file and field)::

    {
      "policy": "latest", "num_versions": 2,       # default: latest 1
      # or  "policy": "all"
      # or  "policy": "specific", "versions": [1, 3]   # each must be on disk, as a label's must
      "labels": {"stable": 1, "canary": 2},        # names a request may use (version_label=...)
      "device": "/GPU:0",                          # placement of every version (default: TF's choice)
      "gpu_memory_mb": 2048,                       # GPU memory budget per version (see docs/models.md)
      "resident": true                             # with a memory budget: always loaded, never
                                                   # unloaded to make room (or a list: [1, 3])
    }

``scan(graphs_dir)`` reads everything into ``ModelSource`` objects; ``discover(graphs_dir)``
is the short form that returns the newest served version of each model.

Exceptions: ``DiscoveryError`` (the layout is wrong), and its subclass ``PolicyError``
(a ``versions.json`` is wrong; carries ``path`` and ``field``).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from . import model_files
from .manifest import GRAPH_FILE, LABELS_FILE, MANIFEST_FILE, FileFieldError
from .servable import ServableSpec

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEVICE = re.compile(r"^/(CPU|GPU):(\d+)$")
POLICY_FILE = "versions.json"
POLICIES = ("latest", "all", "specific")


class DiscoveryError(ValueError):
    """The graphs directory or a model folder in it is not laid out as expected.

    ``model``: the model folder's name when the error is about one (set by ``scan``), so a
    reload can skip that model and apply the others without parsing the message."""

    model: str | None = None


class GraphsDirMissing(DiscoveryError):
    """The graphs directory itself is not there (a new user's first start, or a typo)."""


class PolicyError(FileFieldError, DiscoveryError):
    """A ``versions.json`` is unreadable or has an unknown, missing or invalid field."""


class FileMark(NamedTuple):
    """One file of a version as it was on disk: a change to any field means new content."""

    name: str
    size: int
    mtime_ns: int
    inode: int
    kind: int  # stat.S_IFMT: a model.pb replaced by a folder changes it


Fingerprint = tuple[FileMark, ...]


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of one model are served (TF Serving's ``model_version_policy``)."""

    policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)
    device: str | None = None  # "/CPU:0", "/GPU:1"; None: TensorFlow places ops
    gpu_memory_mb: int | None = None
    resident: bool | tuple[int, ...] = False  # True: every served version; a tuple: those versions

    def is_resident(self, version: int) -> bool:
        return self.resident is True or (isinstance(self.resident, tuple) and version in self.resident)

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those on disk, ascending."""
        ordered = sorted(available)
        if self.policy == "all":
            return ordered
        if self.policy == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :]


@dataclass(frozen=True)
class ModelSource:
    """One model folder as found on disk: its version folders and its policy."""

    name: str
    directory: Path
    versions: dict[int, Path]  # every complete-looking version folder (has a model.pb)
    policy: VersionPolicy
    marks: dict[int, Fingerprint] = field(default_factory=dict)  # each version's files, at the scan

    def aspired(self) -> list[int]:
        return self.policy.select(list(self.versions))

    def spec(self, version: int) -> ServableSpec:
        return ServableSpec(name=self.name, version=version, directory=self.versions[version])


def scan(
    graphs_dir: Path | str, *, strict: bool = True, read_timeout_s: float = model_files.DEFAULT_TIMEOUT_S,
) -> tuple[list[ModelSource], list[DiscoveryError]]:
    """Every model folder under ``graphs_dir``, sorted by name, and the errors found.

    ``strict``: raise the first error (start-up). Otherwise a model whose folder or policy is
    wrong, or changed under the scan, is left out and its error returned, so a reload can keep
    serving what it has. ``read_timeout_s`` bounds each ``versions.json`` read.
    """
    root = Path(graphs_dir)
    if not root.is_dir():
        raise GraphsDirMissing(
            f"graphs directory '{root}' does not exist: build the demo models there with "
            f"`graphserve demo-models --graphs-dir {root}`, freeze your own with `graphserve freeze`, "
            "or point --graphs-dir (GRAPHSERVE_GRAPHS_DIR) at your models"
        )
    sources: list[ModelSource] = []
    errors: list[DiscoveryError] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        try:
            source = read_model(model_dir, read_timeout_s=read_timeout_s)
        except DiscoveryError as exc:
            exc.model = model_dir.name
            if strict:
                raise
            errors.append(exc)
            continue
        if strict and not source.versions:
            error = DiscoveryError(
                f"'{model_dir}' has no version folder with a {GRAPH_FILE} "
                f"(expected {model_dir}/<integer version>/{GRAPH_FILE})"
            )
            error.model = model_dir.name
            raise error
        sources.append(source)
    return sources, errors


def read_model(model_dir: Path, *, read_timeout_s: float = model_files.DEFAULT_TIMEOUT_S) -> ModelSource:
    """One model folder (with no versions when none is complete yet). A folder that vanishes or
    changes while it is read is a ``DiscoveryError`` (this model is skipped this round)."""
    if not MODEL_NAME.match(model_dir.name):
        raise DiscoveryError(f"'{model_dir}': model folder names use letters, digits, '_', '.', '-' (max 64)")
    try:
        return _read_model(model_dir, read_timeout_s)
    except OSError as exc:  # removed or replaced under the scan: PolicyError (a ValueError) passes
        raise DiscoveryError(f"'{model_dir}' changed while it was read ({exc}); "
                             "it is skipped until a later reload") from None


def _read_model(model_dir: Path, read_timeout_s: float) -> ModelSource:
    versions: dict[int, Path] = {}
    for path in sorted(model_dir.iterdir()):
        if path.is_dir() and path.name.isascii() and path.name.isdigit() and (path / GRAPH_FILE).exists():
            other = versions.setdefault(int(path.name), path)
            if other is not path:  # "1" and "01": which one is served must not depend on listing order
                raise DiscoveryError(f"'{model_dir}': folders '{other.name}' and '{path.name}' are both version "
                                     f"{int(path.name)}; keep one")
    policy = (load_policy(model_dir / POLICY_FILE, available=sorted(versions), read_timeout_s=read_timeout_s)
              if versions else VersionPolicy())
    marks = {v: fingerprint(path) for v, path in versions.items()}
    return ModelSource(name=model_dir.name, directory=model_dir, versions=dict(sorted(versions.items())),
                       policy=policy, marks=marks)


def discover(graphs_dir: Path | str) -> list[ServableSpec]:
    """The newest served version of every model, sorted by model name (strict)."""
    sources, _ = scan(graphs_dir)
    return [source.spec(source.aspired()[-1]) for source in sources if source.aspired()]


def load_policy(
    path: Path, *, available: list[int] | None = None, read_timeout_s: float = model_files.DEFAULT_TIMEOUT_S,
) -> VersionPolicy:
    """Read ``versions.json`` at ``path`` (absent: latest 1; a regular file, read within
    ``read_timeout_s``) and validate it."""
    try:
        text = model_files.read_text(path, timeout_s=read_timeout_s)
    except FileNotFoundError:
        return VersionPolicy()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(path, None, f"cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(path, None, f"not valid JSON: {exc}") from None
    return parse_policy(data, path, available=available)


def parse_policy(data: Any, path: Path | str = POLICY_FILE, *, available: list[int] | None = None) -> VersionPolicy:
    """Validate a decoded ``versions.json``. With ``available`` (versions on disk), labels and
    a ``specific`` policy's versions must name versions on disk: a policy that would serve
    nothing, or not what it says, is refused like a bad label. (Whether that version ends up served is only known after loading:
    the registry warns when a label points at a version it does not serve.)"""
    if not isinstance(data, dict):
        raise PolicyError(path, None, "must be a JSON object")
    known = {"policy", "num_versions", "versions", "labels", "device", "gpu_memory_mb", "resident"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PolicyError(path, unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
    policy = data.get("policy", "latest")
    if policy not in POLICIES:
        raise PolicyError(path, "policy", f"must be one of {', '.join(POLICIES)}; got {policy!r}")
    num_versions = 1
    if "num_versions" in data:
        if policy != "latest":
            raise PolicyError(path, "num_versions", f"is only used with policy 'latest', not {policy!r}")
        num_versions = _integer(path, "num_versions", data["num_versions"], minimum=1)
    versions: tuple[int, ...] = ()
    if policy == "specific":
        raw = data.get("versions")
        if not isinstance(raw, list) or not raw:
            raise PolicyError(path, "versions", "policy 'specific' needs a non-empty list of version numbers")
        versions = tuple(sorted({_integer(path, f"versions[{i}]", v, minimum=0) for i, v in enumerate(raw)}))
    elif "versions" in data:
        raise PolicyError(path, "versions", f"is only used with policy 'specific', not {policy!r}")
    labels: dict[str, int] = {}
    raw_labels = data.get("labels", {})
    if not isinstance(raw_labels, dict):
        raise PolicyError(path, "labels", 'must be an object such as {"stable": 1, "canary": 2}')
    for name, version in raw_labels.items():
        if not LABEL_NAME.match(name):
            raise PolicyError(path, f"labels.{name}", "label names use letters, digits, '_', '.', '-' (max 64)")
        labels[name] = _integer(path, f"labels.{name}", version, minimum=0)
    device = data.get("device")
    if device is not None:
        if not isinstance(device, str) or not DEVICE.match(device.upper()):
            raise PolicyError(path, "device", f"must be '/CPU:0', '/GPU:0', '/GPU:1', ...; got {device!r}")
        device = device.upper()
    gpu_memory_mb = None
    if data.get("gpu_memory_mb") is not None:
        gpu_memory_mb = _integer(path, "gpu_memory_mb", data["gpu_memory_mb"], minimum=1)
    resident: bool | tuple[int, ...] = False
    raw_resident = data.get("resident", False)
    if isinstance(raw_resident, bool):
        resident = raw_resident
    elif isinstance(raw_resident, list):
        resident = tuple(sorted({_integer(path, f"resident[{i}]", v, minimum=0) for i, v in enumerate(raw_resident)}))
    else:
        raise PolicyError(path, "resident", f"must be true, false or a list of version numbers; got {raw_resident!r}")
    result = VersionPolicy(policy=policy, num_versions=num_versions, versions=versions, labels=labels,
                           device=device, gpu_memory_mb=gpu_memory_mb, resident=resident)
    if available is not None:
        shown = ", ".join(map(str, sorted(available))) or "none"
        for version in versions:  # policy "specific" only
            if version not in available:
                raise PolicyError(path, "versions", f"version {version} is not on disk (versions: {shown})")
        for name, version in labels.items():
            if version not in available:
                raise PolicyError(path, f"labels.{name}", f"version {version} is not on disk (versions: {shown})")
    return result


def _integer(path: Path | str, name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(path, name, f"must be an integer, got {value!r}")
    if value < minimum:
        raise PolicyError(path, name, f"must be >= {minimum}, got {value}")
    return value


def fingerprint(directory: Path) -> Fingerprint:
    """Type, size, modification time and inode of a version's files: a refused version is
    retried only after it changed (so polling does not log the same failure forever), and a
    served version whose files changed is loaded again (see ``app.reconcile``)."""
    marks = []
    for name in (GRAPH_FILE, MANIFEST_FILE, LABELS_FILE):
        try:
            info = os.stat(directory / name)
        except OSError:
            continue
        marks.append(FileMark(name, info.st_size, info.st_mtime_ns, info.st_ino, stat.S_IFMT(info.st_mode)))
    return tuple(marks)
