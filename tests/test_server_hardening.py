"""The HTTP layer under hostile clients: slow clients are cut off, every error waitress answers is JSON.

Real server (``app/http_server.py`` via ``tests.server.serving``) and real sockets on 127.0.0.1,
with short deadlines so the slow-client test takes seconds.
"""

from __future__ import annotations

import json
import select
import selectors
import socket
import threading
import time

import pytest
import requests

from app.config import Settings
from app.lifecycle import FD_RESERVE, FDS_PER_CONNECTION, connection_limit
from app.services import services_of
from tests.digits import png_bytes
from tests.server import serving

HEADER_DEADLINE = 2.0
READ_DEADLINE = 3.0
MAX_BODY = 1024 * 1024
MAX_HEADER = 16 * 1024


@pytest.fixture(scope="module")
def server(app):
    with serving(app, threads=8, read_header_timeout_s=HEADER_DEADLINE, read_timeout_s=READ_DEADLINE,
                 idle_timeout_s=1.0, max_body_bytes=MAX_BODY, max_header_bytes=MAX_HEADER) as running_server:
        yield running_server


def counter(app, name: str, **labels: str) -> float:
    return services_of(app).metrics.registry.get_sample_value(name, labels) or 0.0


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data``, read until the server closes (every error here closes the connection)."""
    with connect(port) as sock:
        sock.settimeout(timeout)
        sock.sendall(data)
        return parse(read_all(sock))


def read_all(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:  # the server closed with our unread bytes in its buffer; the answer came first
        pass
    return received


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected_status: int, code: str) -> dict:
    assert status == expected_status, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]
    return error


# -- slow clients -------------------------------------------------------------------------

def test_hundreds_of_slow_clients_are_cut_off_while_a_normal_request_is_answered_at_once(app, server, digits):
    dribblers, stalled, silent = 300, 300, 50
    before = {reason: counter(app, "graphserve_http_cut_off_total", reason=reason)
              for reason in ("headers", "body", "silent")}
    opened = time.monotonic()
    headers_socks = [connect(server.port) for _ in range(dribblers)]
    body_socks = [connect(server.port) for _ in range(stalled)]
    silent_socks = [connect(server.port) for _ in range(silent)]
    for sock in headers_socks:
        sock.sendall(b"POST /image_classification HTTP/1.1\r\nHost: graphserve\r\nX-Slow: ")
    for sock in body_socks:  # headers complete, half the body, then nothing
        sock.sendall(b"POST /image_classification HTTP/1.1\r\nHost: graphserve\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 20000\r\n\r\n" + b"\x89" * 10000)

    stop = threading.Event()

    def dribble() -> None:  # one byte per connection every 0.25 s: never idle, never done
        while not stop.wait(0.25):
            for sock in headers_socks:
                try:
                    sock.send(b"a")
                except OSError:
                    pass

    dribbler = threading.Thread(target=dribble, daemon=True)
    dribbler.start()
    try:
        time.sleep(0.5)
        image = png_bytes(digits.test_images[0])
        started = time.perf_counter()
        response = requests.post(f"http://127.0.0.1:{server.port}/image_classification?model=digits8&top_k=1",
                                 data=image, headers={"Content-Type": "image/png"}, timeout=10)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200
        assert response.json()["models"]["digits8"]["results"][0]["top_k"][0]["class_id"] == digits.test_y[0]
        assert elapsed < 1.0, f"a normal request took {elapsed:.2f} s with {dribblers + stalled + silent} slow clients"
        assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status_code == 200

        answers = read_until_closed(headers_socks + body_socks + silent_socks, timeout=READ_DEADLINE + 5)
        took = time.monotonic() - opened
    finally:
        stop.set()
        dribbler.join(5)
        for sock in headers_socks + body_socks + silent_socks:
            sock.close()
    assert took < READ_DEADLINE + 4, f"the slow clients were cut off only after {took:.1f} s"
    for sock in headers_socks + body_socks:
        status, headers, body = parse(answers[sock])
        error = assert_json_error(status, headers, body, 408, "request_timeout")
        assert headers["connection"] == "close"
        assert ("headers did not arrive" in error["message"]) == (sock in headers_socks)
    assert all(answers[sock] == b"" for sock in silent_socks)  # sent nothing: closed without an answer
    after = {reason: counter(app, "graphserve_http_cut_off_total", reason=reason) for reason in before}
    assert after["headers"] - before["headers"] == dribblers
    assert after["body"] - before["body"] == stalled
    assert after["silent"] - before["silent"] == silent
    assert counter(app, "graphserve_errors_total", code="request_timeout") >= dribblers + stalled


def read_until_closed(socks: list[socket.socket], timeout: float) -> dict[socket.socket, bytes]:
    received = {sock: b"" for sock in socks}
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    open_count = len(socks)
    while open_count and time.monotonic() < end:
        for key, _ in selector.select(timeout=0.2):
            sock = key.fileobj
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[sock] += chunk
            else:
                selector.unregister(sock)
                open_count -= 1
    selector.close()
    assert open_count == 0, f"{open_count} slow connection(s) still open after {timeout} s"
    return received


def test_keep_alive_connection_idle_too_long_is_closed(server):
    with connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: graphserve\r\n\r\n")
        sock.settimeout(5)
        answer = b""
        while not answer.endswith(b'{"status":"ok"}\n'):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert 0.8 < time.monotonic() - started < 3.0


def test_the_connection_limit_fits_the_open_file_limit(monkeypatch):
    monkeypatch.setattr("app.lifecycle.resource.getrlimit", lambda _: (1024, 1024))
    monkeypatch.setattr("app.lifecycle.resource.setrlimit", lambda *_: None)
    assert connection_limit(Settings(connection_limit=100)) == 100
    assert connection_limit(Settings(connection_limit=10_000)) == (1024 - FD_RESERVE) // FDS_PER_CONNECTION


# -- errors waitress answers itself: JSON -------------------------------------------------

def test_content_length_over_the_limit_is_refused_before_the_body_is_sent(server):
    started = time.monotonic()
    status, headers, body = exchange(server.port, b"POST /image_classification HTTP/1.1\r\nHost: graphserve\r\n"
                                     b"Content-Type: image/png\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    assert time.monotonic() - started < 1.0
    error = assert_json_error(status, headers, body, 413, "payload_too_large")
    assert "max_body_bytes" in error["message"]


def test_chunked_body_over_the_limit_is_refused_once_it_passes_it(server):
    chunk = b"\x89" * 65536
    sent = 0
    with connect(server.port) as sock:
        sock.sendall(b"POST /image_classification HTTP/1.1\r\nHost: graphserve\r\nContent-Type: image/png\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < 8 * MAX_BODY and not select.select([sock], [], [], 0.01)[0]:  # until an answer comes
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused: the server stopped reading
        sock.settimeout(5)
        status, headers, body = parse(read_all(sock))
    assert_json_error(status, headers, body, 413, "payload_too_large")
    assert MAX_BODY <= sent < 2 * MAX_BODY  # refused as soon as it passed the limit


def test_body_of_exactly_the_limit_reaches_the_app(server):
    status, headers, body = exchange(server.port, b"POST /image_classification HTTP/1.1\r\nHost: graphserve\r\n"
                                     b"Content-Type: image/png\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                                     % MAX_BODY + b"\x89" * MAX_BODY)
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_image"


def test_headers_over_the_limit_answer_431_json(server):
    status, headers, body = exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: graphserve\r\nX-Big: "
                                     + b"a" * (MAX_HEADER + 10) + b"\r\n\r\n")
    assert "max_header_bytes" in assert_json_error(status, headers, body, 431, "headers_too_large")["message"]


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"get /healthz HTTP/1.1\r\nHost: graphserve\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: graphserve\r\nNo colon here\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: graphserve\r\nContent-Length: -5\r\n\r\n",
    b"GET /healthz\r\n\r\n",
    b"POST /image_classification HTTP/1.1\r\nHost: graphserve\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
], ids=["garbage", "lower-case-method", "bad-header", "bad-content-length", "no-version", "bad-chunk"])
def test_malformed_http_answers_400_json(server, request_bytes):
    status, headers, body = exchange(server.port, request_bytes)
    assert assert_json_error(status, headers, body, 400, "bad_request")["message"].startswith("malformed HTTP request")


def test_echoed_input_in_an_error_is_cut(server):
    status, headers, body = exchange(server.port, b"GET /healthz HTTP/1.1\r\n\tX" + b"y" * 5000 + b"\r\n\r\n")
    error = assert_json_error(status, headers, body, 400, "bad_request")
    assert len(error["message"]) < 300


@pytest.mark.parametrize("version", [b"9.9", b"2.0", b"0.9"])
def test_unsupported_http_version_answers_505_json(app, server, version):
    before = counter(app, "graphserve_errors_total", code="http_version_not_supported")
    status, headers, body = exchange(server.port, b"GET /healthz HTTP/" + version + b"\r\nHost: graphserve\r\n\r\n")
    error = assert_json_error(status, headers, body, 505, "http_version_not_supported")
    assert version.decode() in error["message"]
    assert counter(app, "graphserve_errors_total", code="http_version_not_supported") == before + 1


def test_unsupported_transfer_encoding_answers_501_json(server):
    status, headers, body = exchange(server.port, b"POST /image_classification HTTP/1.1\r\nHost: graphserve\r\n"
                                     b"Transfer-Encoding: gzip\r\n\r\n")
    assert_json_error(status, headers, body, 501, "not_implemented")


def test_supported_versions_still_work(server):
    for version in (b"1.0", b"1.1"):
        status, _, body = exchange(server.port, b"GET /healthz HTTP/" + version + b"\r\nHost: graphserve\r\n"
                                   b"Connection: close\r\n\r\n")
        assert status == 200 and json.loads(body) == {"status": "ok"}


# -- draining, in process -----------------------------------------------------------------

def test_drain_answers_readyz_503_with_connection_close_and_refuses_new_connections(app):
    with serving(app, threads=4) as running_server:
        port = running_server.port
        probe = connect(port)
        probe.sendall(b"GET /readyz HTTP/1.1\r\nHost: graphserve\r\n")  # half-sent when the drain starts
        idle = connect(port)
        time.sleep(0.2)
        running_server.shutdown("test")
        assert services_of(app).draining.is_set()
        probe.sendall(b"\r\n")
        probe.settimeout(5)
        status, headers, body = parse(read_all(probe))
        assert status == 503 and json.loads(body)["status"] == "draining"
        assert headers["connection"] == "close"
        idle.settimeout(5)
        assert idle.recv(1) == b""
        assert running_server.finished.wait(5)
        with pytest.raises(ConnectionRefusedError):
            connect(port)
        probe.close()
        idle.close()
