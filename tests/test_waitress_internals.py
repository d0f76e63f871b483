"""The check that waitress still has the internals ``app/http_server.py`` relies on (no TensorFlow, no app)."""

from __future__ import annotations

import inspect
import re
import socket
from importlib import metadata
from pathlib import Path

import pytest
from waitress import channel, server, trigger

from app.config import Settings
from app.lifecycle import listen
from app.waitress_internals import CHECKED_WAITRESS_VERSION, check_waitress_internals, missing_waitress_internals

ROOT = Path(__file__).resolve().parent.parent


def test_the_pinned_waitress_has_every_internal():
    assert missing_waitress_internals() == []
    check_waitress_internals()


def test_the_checked_version_is_the_pinned_and_installed_one():
    pins = re.findall(r"^waitress==(\S+)", (ROOT / "requirements.txt").read_text(), flags=re.MULTILINE)
    assert pins == [CHECKED_WAITRESS_VERSION]
    assert metadata.version("waitress") == CHECKED_WAITRESS_VERSION


def test_a_missing_method_is_named_with_the_waitress_version(monkeypatch):
    monkeypatch.delattr(trigger.trigger, "_physical_pull")
    with pytest.raises(RuntimeError) as caught:
        check_waitress_internals()
    message = str(caught.value)
    assert "waitress.trigger.trigger._physical_pull" in message
    assert f"waitress {metadata.version('waitress')}" in message
    assert f"checked against waitress {CHECKED_WAITRESS_VERSION}" in message
    assert "app/waitress_internals.py" in message


def test_an_attribute_no_longer_set_by_init_is_named(monkeypatch):
    def init_without_lock(self, server, sock, addr, adj, map=None):
        self.server, self.adj, self.requests = server, adj, []

    monkeypatch.setattr(channel.HTTPChannel, "__init__", init_without_lock)
    with pytest.raises(RuntimeError, match=r"waitress\.channel\.HTTPChannel\.requests_lock \(set by __init__\)"):
        check_waitress_internals()


def test_a_parameter_gone_from_a_signature_is_named(monkeypatch):
    init = server.BaseWSGIServer.__init__
    signature = inspect.signature(init)
    renamed = signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "_sock"])
    monkeypatch.setattr(init, "__signature__", renamed, raising=False)  # as if waitress dropped _sock
    with pytest.raises(RuntimeError, match=r"waitress\.server\.BaseWSGIServer\.__init__\(\) parameter '_sock'"):
        check_waitress_internals()


def test_listen_checks_before_binding_anything(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delattr(channel.HTTPChannel, "total_outbufs_len")
    with pytest.raises(RuntimeError, match=r"HTTPChannel\.total_outbufs_len"):
        listen(Settings(), host="127.0.0.1", port=port)
    with socket.socket() as again:  # nothing was left bound
        again.bind(("127.0.0.1", port))
