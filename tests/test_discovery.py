"""Unit tests for app.discovery: scan / read_model / discover / load_policy / fingerprint.

Discovery only looks at names and at which files exist (``model.pb`` marks a complete version;
``versions.json`` is parsed), never inside a graph, so these tests write empty placeholder files
into tmp_path instead of frozen models: no TensorFlow, no trained weights. The versions.json
field-by-field error table and the policies' ``select`` are in tests/test_versions.py; here:
the folder layout rules, strict versus lenient scans and the ``.model`` each error carries (what
a reload uses to skip one model and apply the others), ``discover``'s choice, and fingerprints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.discovery import (
    DiscoveryError,
    GraphsDirMissing,
    PolicyError,
    VersionPolicy,
    discover,
    fingerprint,
    load_policy,
    read_model,
    scan,
)
from app.manifest import GRAPH_FILE, LABELS_FILE, MANIFEST_FILE
from app.servable import ServableSpec


def version(root: Path, model: str, number: int | str, *, graph: bool = True) -> Path:
    """graphs/<model>/<number>/ with placeholder model.pb and model.json (discovery never opens them)."""
    folder = root / model / str(number)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).write_text("{}", encoding="utf-8")
    if graph:
        (folder / GRAPH_FILE).write_bytes(b"")
    return folder


def policy(root: Path, model: str, data: dict | str) -> Path:
    path = root / model / "versions.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def layout(sources: list) -> list[tuple[str, list[int]]]:
    return [(s.name, list(s.versions)) for s in sources]


def test_version_folders_are_all_digit_names_with_a_graph_and_sorted(tmp_path: Path) -> None:
    for number in (10, 2, "007"):
        version(tmp_path, "m", number)
    for ignored in (".3.writing-abc", "_4", "5.tmp", "v6", "٣"):  # hidden, private, not (ASCII) digits
        version(tmp_path, "m", ignored)
    version(tmp_path, "m", 8, graph=False)  # no model.pb yet
    (tmp_path / "m" / "9").write_bytes(b"")  # a file, not a folder
    source = read_model(tmp_path / "m")
    assert source.name == "m" and source.directory == tmp_path / "m"
    assert source.versions == {2: tmp_path / "m" / "2", 7: tmp_path / "m" / "007", 10: tmp_path / "m" / "10"}
    assert list(source.versions) == [2, 7, 10]  # ascending, whatever the directory order
    assert source.policy == VersionPolicy() and source.aspired() == [10]


def test_scan_lists_model_folders_by_name_and_skips_hidden_ones(tmp_path: Path) -> None:
    for model in ("zeta", "alpha", ".trash", "_staging"):
        version(tmp_path, model, 1)
    (tmp_path / "README.txt").write_text("not a model", encoding="utf-8")
    sources, errors = scan(tmp_path)
    assert layout(sources) == [("alpha", [1]), ("zeta", [1])] and errors == []


def test_a_source_makes_the_spec_of_each_version(tmp_path: Path) -> None:
    folder = version(tmp_path, "m", 3)
    [source], _ = scan(tmp_path)
    spec = source.spec(3)
    assert spec == ServableSpec(name="m", version=3, directory=folder)
    assert (spec.graph_path, spec.manifest_path, spec.labels_path) == (
        folder / GRAPH_FILE, folder / MANIFEST_FILE, folder / LABELS_FILE)
    with pytest.raises(KeyError):
        source.spec(4)


def test_each_model_reads_its_own_policy(tmp_path: Path) -> None:
    for model in ("a", "b", "c"):
        for number in (1, 2, 3):
            version(tmp_path, model, number)
    policy(tmp_path, "a", {"policy": "latest", "num_versions": 2, "labels": {"stable": 2}})
    policy(tmp_path, "b", {"policy": "specific", "versions": [1, 3], "device": "/gpu:0"})
    sources, _ = scan(tmp_path)
    by_name = {s.name: s for s in sources}
    assert by_name["a"].aspired() == [2, 3] and by_name["a"].policy.labels == {"stable": 2}
    assert by_name["b"].aspired() == [1, 3] and by_name["b"].policy.device == "/GPU:0"
    assert by_name["c"].aspired() == [3]  # no versions.json: latest 1


def test_discover_gives_the_newest_served_version_of_each_model(tmp_path: Path) -> None:
    for model, numbers in {"b": [1, 2], "a": [1, 2, 3], "pinned": [1, 2]}.items():
        for number in numbers:
            version(tmp_path, model, number)
    policy(tmp_path, "a", {"policy": "all"})
    policy(tmp_path, "pinned", {"policy": "specific", "versions": [1]})
    specs = discover(tmp_path)
    assert [(s.name, s.version) for s in specs] == [("a", 3), ("b", 2), ("pinned", 1)]
    assert specs[2].directory == tmp_path / "pinned" / "1"


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strict", [True, False])
def test_a_missing_graphs_folder_is_an_error_strict_or_not(tmp_path: Path, strict: bool) -> None:
    with pytest.raises(GraphsDirMissing, match=r"does not exist.*demo-models"):
        scan(tmp_path / "nowhere", strict=strict)
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    with pytest.raises(GraphsDirMissing):
        scan(tmp_path / "a-file", strict=strict)
    assert issubclass(GraphsDirMissing, DiscoveryError)


def test_a_bad_model_folder_name_stops_a_strict_scan_and_names_the_model(tmp_path: Path) -> None:
    version(tmp_path, "good", 1)
    version(tmp_path, "bad name", 1)
    with pytest.raises(DiscoveryError, match="model folder names use letters") as info:
        scan(tmp_path)
    assert info.value.model == "bad name"


def test_a_lenient_scan_leaves_out_broken_models_and_returns_their_errors(tmp_path: Path) -> None:
    version(tmp_path, "good", 1)
    version(tmp_path, "bad name", 1)
    version(tmp_path, "bad_policy", 1)
    policy(tmp_path, "bad_policy", {"policy": "newest"})
    version(tmp_path, "empty", 1, graph=False)  # no complete version yet
    sources, errors = scan(tmp_path, strict=False)
    assert layout(sources) == [("empty", []), ("good", [1])]
    assert [e.model for e in errors] == ["bad name", "bad_policy"]
    bad_policy = errors[1]
    assert isinstance(bad_policy, PolicyError)
    assert bad_policy.field == "policy" and bad_policy.path == str(tmp_path / "bad_policy" / "versions.json")


def test_a_broken_versions_json_stops_a_strict_scan_with_its_file_and_model(tmp_path: Path) -> None:
    version(tmp_path, "m", 1)
    path = policy(tmp_path, "m", {"labels": {"stable": 4}})
    with pytest.raises(PolicyError, match=r"field 'labels\.stable': version 4 is not on disk \(versions: 1\)") as info:
        scan(tmp_path)
    assert (info.value.model, info.value.path, info.value.field) == ("m", str(path), "labels.stable")


def test_a_model_without_a_complete_version_stops_a_strict_scan(tmp_path: Path) -> None:
    version(tmp_path, "lonely", 1, graph=False)
    with pytest.raises(DiscoveryError, match=r"lonely' has no version folder with a model\.pb"):
        scan(tmp_path)


def test_the_no_version_error_names_its_model_as_data(tmp_path: Path) -> None:
    version(tmp_path, "lonely", 1, graph=False)
    with pytest.raises(DiscoveryError) as info:
        scan(tmp_path)
    assert info.value.model == "lonely"


def test_two_folders_naming_the_same_version_are_refused(tmp_path: Path) -> None:
    """Which of '1' and '01' would be served depended on the directory listing order."""
    version(tmp_path, "m", "1")
    version(tmp_path, "m", "01")
    version(tmp_path, "ok", 1)
    with pytest.raises(DiscoveryError, match=r"folders '01' and '1' are both version 1") as info:
        scan(tmp_path)
    assert info.value.model == "m"
    sources, errors = scan(tmp_path, strict=False)
    assert layout(sources) == [("ok", [1])] and [e.model for e in errors] == ["m"]


# -- load_policy and fingerprint ------------------------------------------------------------


def test_an_absent_versions_json_is_latest_one(tmp_path: Path) -> None:
    assert load_policy(tmp_path / "versions.json") == VersionPolicy(policy="latest", num_versions=1)
    assert VersionPolicy().select([4, 1, 9]) == [9]
    assert VersionPolicy(num_versions=5).select([2, 1]) == [1, 2]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{not json", "not valid JSON"), (b"\xff\xfe{}", "cannot read"), ([1, 2], "must be a JSON object")],
)
def test_an_unreadable_versions_json_names_its_file(tmp_path: Path, content: str | bytes | list, fragment: str) -> None:
    path = tmp_path / "versions.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(str(path)) and fragment in str(info.value)
    assert info.value.field is None


def test_a_versions_json_that_is_a_folder_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "versions.json").mkdir()
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "versions.json")


def test_a_fingerprint_changes_when_a_versions_files_change(tmp_path: Path) -> None:
    folder = version(tmp_path, "m", 1)
    first = fingerprint(folder)
    assert [mark.name for mark in first] == [GRAPH_FILE, MANIFEST_FILE]  # no labels.txt: skipped
    assert fingerprint(folder) == first
    (folder / GRAPH_FILE).write_bytes(b"a rewritten graph")
    second = fingerprint(folder)
    assert second != first and second[0][1] == len(b"a rewritten graph")
    (folder / LABELS_FILE).write_text("cat\ndog\n", encoding="utf-8")
    assert [mark.name for mark in fingerprint(folder)] == [GRAPH_FILE, MANIFEST_FILE, LABELS_FILE]
    stat = (folder / MANIFEST_FILE).stat()
    os.utime(folder / MANIFEST_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same size, touched
    assert fingerprint(folder)[1].mtime_ns == stat.st_mtime_ns + 1_000_000_000
    assert fingerprint(tmp_path / "missing") == ()
