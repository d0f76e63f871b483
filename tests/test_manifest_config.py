"""The manifest and settings parsers: strict, with messages that name the field."""

from __future__ import annotations

import pytest

from app import manifest
from app.config import ConfigError, Settings

BASE = {"input": {"tensor": "in", "height": 8, "width": 8, "channels": 3}, "output": {"tensor": "out:0"}}


def test_defaults_and_round_trip():
    parsed = manifest.parse(BASE)
    assert parsed.input.tensor == "in:0"
    assert parsed.output.kind == "probabilities"
    assert parsed.preprocessing.scale == "[0,1]" and parsed.batch_size is None
    assert manifest.parse(parsed.to_json()) == parsed


def test_mean_std_per_channel():
    data = {**BASE, "preprocessing": {"scale": "mean_std", "mean": [1, 2, 3], "std": 2}}
    parsed = manifest.parse(data)
    assert parsed.preprocessing.mean == (1.0, 2.0, 3.0) and parsed.preprocessing.std == (2.0, 2.0, 2.0)
    assert manifest.parse(parsed.to_json()) == parsed


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m.pop("input"), "input"),
        (lambda m: m["input"].update(channels=2), "input.channels"),
        (lambda m: m["input"].update(height="8"), "input.height"),
        (lambda m: m["input"].update(width=0), "input.width"),
        (lambda m: m["output"].update(kind="softmax"), "output.kind"),
        (lambda m: m.update(extra=1), "extra"),
        (lambda m: m.update(batch_size=0), "batch_size"),
        (lambda m: m.update(preprocessing={"central_crop": 1.5}), "preprocessing.central_crop"),
        (lambda m: m.update(preprocessing={"scale": "mean_std"}), "preprocessing.mean"),
        (lambda m: m.update(preprocessing={"mean": [1, 2, 3]}), "preprocessing.mean"),
        (lambda m: m.update(preprocessing={"scale": "mean_std", "mean": [1, 2], "std": 1}), "preprocessing.mean"),
        (lambda m: m.update(preprocessing={"flatten": "yes"}), "preprocessing.flatten"),
        (lambda m: m.update(batching={"batch_timeout_ms": -1}), "batching.batch_timeout_ms"),
        (lambda m: m.update(batching={"max_batch": 3}), "batching.max_batch"),
    ],
)
def test_bad_fields_are_named(change, field):
    import copy

    data = copy.deepcopy(BASE)
    change(data)
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse(data, "graphs/m/1/model.json")
    assert info.value.field == field
    assert "graphs/m/1/model.json" in str(info.value)


def test_settings_from_env_and_overrides():
    settings = Settings.from_env({"GRAPHSERVE_PORT": "9000", "GRAPHSERVE_BATCHING": "off", "OTHER": "x"})
    assert settings.port == 9000 and settings.batching is False
    assert settings.replace({"PORT": 1, "graphs_dir": "g"}).port == 1
    with pytest.raises(ConfigError, match="port"):
        Settings.from_env({"GRAPHSERVE_PORT": "eighty"})
    with pytest.raises(ConfigError, match="unknown setting 'NOPE'"):
        Settings().replace({"NOPE": 1})
    with pytest.raises(ConfigError, match="batching"):
        Settings().replace({"batching": "maybe"})


def test_log_levels_are_checked_once_at_start():
    assert Settings().replace({"log_requests": "debug"}).request_log_level == 10
    assert Settings().replace({"log_requests": "off"}).request_log_level is None
    for name in ("log_requests", "log_level"):
        with pytest.raises(ConfigError, match=name):
            Settings().replace({name: "VERBOSE"})
