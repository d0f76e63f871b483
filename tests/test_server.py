"""The same API through a real waitress server and real sockets, under concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.digits import png_bytes
from tests.server import running


@pytest.fixture(scope="module")
def base_url(app):
    with running(app, threads=16) as url:
        yield url


def test_multipart_over_http(base_url, digits):
    files = [("image", (f"d{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(digits.test_images[:10])]
    response = requests.post(f"{base_url}/image_classification", params={"model": "digits8,digits16", "top_k": 1},
                             files=files, timeout=30)
    assert response.status_code == 200
    for name in ("digits8", "digits16"):
        predicted = [r["top_k"][0]["class_id"] for r in response.json()["models"][name]["results"]]
        assert np.mean(np.array(predicted) == digits.test_y[:10]) >= 0.9


def test_sixteen_threads_at_once_all_get_their_own_correct_answers(base_url, digits):
    count = 48
    files = [("image", (f"{k}.png", png_bytes(digits.test_images[k]), "image/png")) for k in range(count)]
    alone = requests.post(f"{base_url}/image_classification?model=all&top_k=1", files=files, timeout=60).json()
    expected = {name: [r["top_k"][0]["class_id"] for r in alone["models"][name]["results"]]
                for name in ("digits8", "digits16")}
    sessions = [requests.Session() for _ in range(16)]

    def one_client(index: int) -> list[tuple[str, int, int]]:
        answers = []
        for j in range(6):
            k = (index * 6 + j) % count
            response = sessions[index].post(f"{base_url}/image_classification?model=all&top_k=1",
                                            data=png_bytes(digits.test_images[k]),
                                            headers={"Content-Type": "image/png"}, timeout=60)
            assert response.status_code == 200
            for name, result in response.json()["models"].items():
                answers.append((name, k, result["results"][0]["top_k"][0]["class_id"]))
        return answers

    with ThreadPoolExecutor(16) as pool:
        answers = [a for per_client in pool.map(one_client, range(16)) for a in per_client]
    assert len(answers) == 16 * 6 * 2
    # Each caller got the answer for its own image (the same as the isolated request's) ...
    assert all(predicted == expected[name][k] for name, k, predicted in answers)
    # ... and those answers are right.
    assert np.mean([predicted == digits.test_y[k] for _, k, predicted in answers]) >= 0.9


def test_errors_over_http_are_json(base_url):
    response = requests.post(f"{base_url}/image_classification", data=b"garbage",
                             headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "invalid_image"
    assert requests.get(f"{base_url}/readyz", timeout=10).status_code == 200
