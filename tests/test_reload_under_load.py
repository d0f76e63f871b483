"""Zero-downtime reload: client threads hammer one model over a real waitress server while
versions are added, refused and removed. Not one request fails, the answers' versions move
as each reload says, and an old version's session is closed only once no request holds it."""

from __future__ import annotations

import threading
import time

import requests

from app import create_app
from app.registry import ModelHandle
from app.services import services_of
from tests.digits import png_bytes
from tests.server import running
from tests.test_versions import policy, publish

CLIENTS = 6
IMAGES_PER_REQUEST = 8  # keeps each request in flight long enough to straddle a switch


def test_reload_under_concurrent_load(tmp_path, digit_weights, digits, monkeypatch):
    root = tmp_path / "graphs"
    publish(root, "d", 1, digit_weights)
    policy(root, "d", {"policy": "latest", "num_versions": 2})
    closes: list[tuple[int, int]] = []  # (version, requests holding it when its session closed)
    original_close = ModelHandle.close

    def recording_close(self: ModelHandle) -> None:
        closes.append((self.version, self.in_flight))
        original_close(self)

    monkeypatch.setattr(ModelHandle, "close", recording_close)
    app = create_app({"GRAPHS_DIR": str(root), "ADMIN_TOKEN": "t", "POLL_INTERVAL_S": 0})  # reloads by hand
    files = [("image", (f"{k}.png", png_bytes(digits.test_images[k]), "image/png")) for k in range(IMAGES_PER_REQUEST)]
    answers: list[tuple[float, float, int, int | None, float]] = []  # start, end, status, version, accuracy
    stop = threading.Event()

    def hammer(url: str) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                started = time.monotonic()
                response = session.post(f"{url}/image_classification?model=d&top_k=1", files=files, timeout=30)
                body = response.json() if response.status_code == 200 else {}
                model = body.get("models", {}).get("d", {})
                predicted = [r["top_k"][0]["class_id"] for r in model.get("results", [])]
                accuracy = sum(p == y for p, y in zip(predicted, digits.test_y)) / IMAGES_PER_REQUEST
                answers.append((started, time.monotonic(), response.status_code, model.get("version"), accuracy))

    def settle(count: int = 30) -> None:
        target = len(answers) + count
        deadline = time.monotonic() + 30
        while len(answers) < target and time.monotonic() < deadline:
            time.sleep(0.01)

    try:
        with running(app, threads=16) as url:
            def reload() -> dict:
                response = requests.post(f"{url}/admin/reload", headers={"Authorization": "Bearer t"}, timeout=60)
                assert response.status_code == 200
                return response.json()

            threads = [threading.Thread(target=hammer, args=(url,)) for _ in range(CLIENTS)]
            for thread in threads:
                thread.start()
            began: list[float] = []  # when each reload was asked for
            switched: list[float] = []  # when it had answered
            settle()
            steps = []
            publish(root, "d", 2, digit_weights, size=16)  # 1. a new version: 1 and 2 served, 2 answers
            began.append(time.monotonic())
            steps.append(reload())
            switched.append(time.monotonic())
            settle()
            publish(root, "d", 3, digit_weights, broken=True)  # 2. broken: refused, 2 keeps answering
            began.append(time.monotonic())
            steps.append(reload())
            switched.append(time.monotonic())
            settle()
            publish(root, "d", 4, digit_weights)  # 3. a good one: 2 and 4 served (policy keeps two), 1 goes
            began.append(time.monotonic())
            steps.append(reload())
            switched.append(time.monotonic())
            settle()
            (root / "d" / "4").rename(root / "d" / ".4.removed")  # 4. remove 4: back to 2 (and 1)
            began.append(time.monotonic())
            steps.append(reload())
            switched.append(time.monotonic())
            settle()
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            models = requests.get(f"{url}/models", timeout=10).json()["models"]
    finally:
        stop.set()
        services_of(app).registry.close()

    pairs = lambda entries: [(e["model"], e["version"]) for e in entries]  # noqa: E731
    assert [(pairs(s["loaded"]), pairs(s["unloaded"]), pairs(s["refused"])) for s in steps] == [
        ([("d", 2)], [], []),
        ([], [], [("d", 3)]),
        ([("d", 4)], [("d", 1)], []),
        ([("d", 1)], [("d", 4)], []),
    ]
    # not one failed request, and every answer right
    assert answers and all(status == 200 for _, _, status, _, _ in answers), {a[2] for a in answers}
    assert sum(a[4] for a in answers) / len(answers) >= 0.85
    # the answers' versions move as each reload said: a request that started after reload i
    # had answered and ended before reload i+1 was asked for got version expected[i]
    expected = [1, 2, 2, 4, 2]
    windows = [(0.0, began[0])] + [(switched[i], began[i + 1] if i + 1 < len(began) else float("inf"))
                                   for i in range(len(switched))]
    for version, (after, before) in zip(expected, windows):
        in_window = {v for start, end, _, v, _ in answers if start > after and end < before}
        assert in_window == {version}, (version, in_window)
    # old sessions were closed only after their last request: versions 1 and 4 were unloaded
    # mid-traffic with nobody holding them; at the end every session closed the same way
    unloaded = [(version, holding) for version, holding in closes if version in (1, 4)]
    assert (1, 0) in unloaded and (4, 0) in unloaded
    assert all(holding == 0 for _, holding in closes)
    d = models[0]
    assert [(v["version"], v["state"]) for v in d["versions"]] == [(1, "available"), (2, "available"), (3, "failed")]

