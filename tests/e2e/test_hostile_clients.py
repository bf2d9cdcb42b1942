"""Hostile clients against the real service, over raw sockets, under both worker classes:
one log record per line whatever a payload holds, and a body broken off is a 400, never a 500."""
import json
import socket
import time
import uuid

import pytest

from tests.conftest import FAKE_KEY

BREAKERS = [chr(c) for c in [*range(0x20), *range(0x7f, 0xa0), 0x2028, 0x2029]]


def lines_of(service, rid: str, deadline_s: float = 3) -> list[dict]:
    """The service's log lines that name `rid`, once its summary line is written."""
    deadline = time.monotonic() + deadline_s
    while True:
        found = [json.loads(line) for line in service.log().split("\n") if rid in line]
        if any(line.get("requestId") == rid and "status" in line for line in found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no summary line for {rid}")
        time.sleep(0.05)


def assert_one_record_per_line(service):
    text = service.log()
    by_newline, by_unicode = text.split("\n")[:-1], text.splitlines()
    assert by_newline == by_unicode  # no reader splits a record anywhere else
    for line in by_unicode:
        assert isinstance(json.loads(line), dict), line
        assert len(line.encode()) <= 8 * 1024, line[:200]


def post_json(service, payload_text: str, rid: str):
    """POST a body whose payload is `payload_text` (raw JSON), with its request id."""
    data = ('{"target_service": "openai_chat", "api_key": "%s", "payload": %s}'
            % (FAKE_KEY, payload_text)).encode()
    import requests
    return requests.post(f"{service.url}/api/proxy/external", data=data, timeout=20,
                         headers={**service.headers, "Content-Type": "application/json",
                                  "X-Request-ID": rid})


def test_line_breaking_characters_in_keys_and_values_stay_inside_one_record(service):
    rid = "logs-" + uuid.uuid4().hex
    keys = {f"k{char}x": f"v{char}" for char in BREAKERS}
    response = post_json(service, json.dumps({"stub": "json", **keys}), rid)
    assert response.status_code == 200, response.text
    assert_one_record_per_line(service)
    line = next(line for line in lines_of(service, rid) if line.get("requestId") == rid)
    assert line["payloadKeys"][0] == "stub"
    assert line["payloadKeys"][1:] == list(keys)[:31] and line["payloadKeyCount"] == len(keys) + 1


@pytest.mark.parametrize(("label", "payload_text"), [
    ("a lone surrogate escape", '{"\\ud800\\u2028": 1}'),
    ("a key of 100 KB", json.dumps({"stub": "json", "\u2028" * 10 + "k" * 100_000: 1})),
    ("50,000 keys", json.dumps({"stub": "json", **{f"\u0085{i}": i for i in range(50_000)}})),
])
def test_hostile_payload_keys_make_one_short_record(service, label, payload_text):
    rid = "logs-" + uuid.uuid4().hex
    response = post_json(service, payload_text, rid)
    assert response.status_code in (200, 400), response.text
    assert_one_record_per_line(service)
    line = next(line for line in lines_of(service, rid) if line.get("requestId") == rid)
    if response.status_code == 200:
        assert len(line["payloadKeys"]) <= 32
        assert all(len(name) <= 64 for name in line["payloadKeys"])
        if label == "a key of 100 KB":
            assert line["payloadKeys"][1] == "\u2028" * 10 + "k" * 53 + "…"
        else:
            assert line["payloadKeyCount"] == 50_001


# -- bodies broken off ---------------------------------------------------------------------

def raw_call(service, rid: str, head_extra: bytes, body: bytes, *, then: str) -> bytes:
    """Send a request head and `body` on a raw socket, then `then`: "stay" (and read), "half"
    (shut our side for writing, then read), or "close" (hang up at once). Returns what came."""
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    sock.sendall(b"POST /api/proxy/external HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nX-Request-ID: " + rid.encode() + b"\r\n"
                 + service.raw_headers + head_extra + b"\r\n" + body)
    if then == "close":
        sock.close()
        return b""
    if then == "half":
        sock.shutdown(socket.SHUT_WR)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pass  # the connection stayed open: the assertions below say so
    finally:
        sock.close()
    return received


CHUNKED = b"Transfer-Encoding: chunked\r\n"
START = b'{"target_service": "openai_chat", '
BROKEN = {
    "stops mid-chunk": (CHUNKED, b"%x\r\n%s" % (len(START) + 10, START)),
    "stops before its last chunk": (CHUNKED, b"%x\r\n%s\r\n" % (len(START), START)),
    "has a chunk size of zz": (CHUNKED, b"zz\r\n" + START + b"\r\n0\r\n\r\n"),
    "has a chunk without its CRLF": (CHUNKED, b"5\r\nhelloXX5\r\nhello\r\n0\r\n\r\n"),
    "stops short of its Content-Length": (b"Content-Length: 200\r\n", START),
}
STAYS = {"has a chunk size of zz", "has a chunk without its CRLF"}


def assert_client_error_without_traceback(service, rid: str):
    lines = lines_of(service, rid)
    summary = next(line for line in lines if line.get("requestId") == rid and "status" in line)
    assert (summary["status"], summary["errorCode"], summary["level"]) == (
        400, "VALIDATION_ERROR", "info")
    assert not [line for line in lines if line["level"] in ("error", "critical")
                or "traceback" in line]
    assert_one_record_per_line(service)


@pytest.mark.parametrize("then", ["half", "close"])
@pytest.mark.parametrize("case", sorted(set(BROKEN) - STAYS))
def test_a_body_the_client_breaks_off_is_a_400_logged_at_info(service, case, then):
    rid = "broken-" + uuid.uuid4().hex
    received = raw_call(service, rid, *BROKEN[case], then=then)
    if then == "half":  # the connection was still there to answer
        head = received.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 400 "), received[:300]
        assert json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]["code"] == (
            "VALIDATION_ERROR")
    assert_client_error_without_traceback(service, rid)


@pytest.mark.parametrize("case", sorted(STAYS))
def test_a_malformed_chunk_is_a_400_and_the_connection_closes(service, upstream, case):
    """The body's framing is lost: were the connection kept, the bytes after it would be read
    as the next request. A valid request sent right behind it must never be answered."""
    rid = "broken-" + uuid.uuid4().hex
    head_extra, body = BROKEN[case]
    follower = json.dumps({"target_service": "openai_chat", "api_key": FAKE_KEY,
                           "payload": {"stub": "json", "id": rid}}).encode()
    smuggled = (b"POST /api/proxy/external HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\n" + service.raw_headers
                + b"Content-Length: %d\r\n\r\n%s" % (len(follower), follower))
    before = len(upstream.requests)
    received = raw_call(service, rid, head_extra, body + smuggled, then="stay")
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), received[:300]
    assert b"\r\nconnection: close" in head.lower()
    assert received.count(b"HTTP/1.1 ") == 1  # the recv loop ended: the server closed it
    assert json.loads(rest)["error"]["code"] == "VALIDATION_ERROR"
    assert not [r for r in upstream.requests[before:] if r["payload"].get("id") == rid]
    assert_client_error_without_traceback(service, rid)
