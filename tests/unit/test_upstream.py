import email.parser
import http.client
import io
import json
import shutil
import socket
import ssl
import subprocess
import threading
import types
from typing import Iterable, Iterator

import pytest
import requests
import urllib3.connection
import urllib3.exceptions

from config import SERVICES
from proxy.envelope import passed_headers
from proxy.errors import NetworkError, client_status
from proxy.logs import RequestLog
from proxy.upstream import (Upstream, _HTTPConnection, _HTTPSConnection, _maskable,
                            _parse_headers, _Response, _transport_error)
from tests.conftest import FAKE_KEY
from tests.unit.conftest import body, make_settings, service_url

URL = service_url("openai_chat")


def post(client, **extra):
    return client.post("/api/proxy/external", json=body(**extra))


# One row per line of the contract's error table for provider answers.
@pytest.mark.parametrize(("upstream", "client_gets"), [
    (400, 400), (401, 401), (402, 402), (403, 403), (404, 404), (408, 408), (409, 409),
    (413, 413), (422, 422), (429, 429), (498, 498), (499, 499),
    (500, 502), (502, 502), (503, 502), (504, 502), (529, 502),
    (301, 502), (302, 502), (307, 502), (308, 502),
])
def test_provider_status_maps_to_client_status(client, mocked, upstream, client_gets):
    mocked.post(URL, status=upstream, json={"error": {"message": "nope", "type": "x"}},
                headers={"Location": "http://127.0.0.9:9/elsewhere"})
    response = post(client)
    assert response.status_code == client_gets
    error = response.get_json()["error"]
    assert error == {"code": "EXTERNAL_SERVICE_ERROR", "message": f"openai_chat answered {upstream}",
                     "service": "openai_chat", "upstreamStatus": upstream,
                     "details": {"error": {"message": "nope", "type": "x"}}}
    assert len(mocked.calls) == 1  # a redirect is never followed


@pytest.mark.parametrize("status", range(400, 600))
def test_client_status_is_a_pure_function_of_the_number(status):
    assert client_status(status) == (status if status < 500 else 502)


@pytest.mark.parametrize(("exc", "status", "code"), [
    (requests.exceptions.ConnectTimeout(), 504, "UPSTREAM_TIMEOUT"),
    (requests.exceptions.ReadTimeout(), 504, "UPSTREAM_TIMEOUT"),
    (requests.exceptions.ConnectionError(), 502, "NETWORK_ERROR"),
    (requests.exceptions.ChunkedEncodingError(), 502, "NETWORK_ERROR"),
    (requests.exceptions.SSLError(), 502, "NETWORK_ERROR"),
    (requests.exceptions.ProxyError(), 502, "NETWORK_ERROR"),
])
def test_transport_failure_maps_to_its_code(client, mocked, exc, status, code):
    mocked.post(URL, body=exc)
    response = post(client)
    assert response.status_code == status
    assert response.get_json()["error"] == {
        "code": code, "service": "openai_chat",
        "message": ("openai_chat did not answer in time" if status == 504
                    else "the connection to openai_chat failed")}


@pytest.mark.parametrize(("exc", "code"), [
    (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), "UPSTREAM_TIMEOUT"),
    (urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead"), "NETWORK_ERROR"),
    (ConnectionResetError(104, "reset"), "NETWORK_ERROR"),
    (requests.ConnectionError(urllib3.exceptions.ProtocolError("reset")), "NETWORK_ERROR"),
])
def test_failures_while_reading_the_body_are_classified(exc, code):
    assert _transport_error(exc, "openai_chat").code == code


def test_success_data_is_the_provider_body_byte_for_byte(client, mocked):
    raw = b'{"b": 1e-05, "a": [1.0, 2.50], "u": "\\u00e9t\xc3\xa9",  "n": 12345678901234567890}'
    mocked.post(URL, body=raw, content_type="application/json")
    response = post(client)
    assert response.status_code == 200
    rid = response.headers["X-Request-ID"]
    assert response.data == b'{"success":true,"data":' + raw + b',"requestId":"' + rid.encode() + b'"}'
    assert response.get_json()["data"]["b"] == 1e-05


@pytest.mark.parametrize("raw", [
    b"", b"<html>oops</html>", b'{"a": NaN}', b'{"a":', b"\xff\xfe", b"\xef\xbb\xbf{}",
    b'{"a": 1} {"b": 2}', b'{"a": "\\ud800"}', b'{"a": "\xff"}', b'{"a": "\xed\xa0\x80"}',
    b'{"a": "\xc0\xaf"}', b'{"a": "tab\there"}', b"[" * 2000 + b"]" * 2000])
def test_2xx_without_valid_json_is_502(client, mocked, raw):
    mocked.post(URL, body=raw, status=200)
    response = post(client)
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert (error["code"], error["upstreamStatus"]) == ("EXTERNAL_SERVICE_ERROR", 200)


@pytest.mark.parametrize("raw", ['{"t": "é – 日本 🙂"}',
                                 "[1e400, -0, 123456789012345678901234567890]"])
def test_any_valid_json_in_utf8_is_relayed_byte_for_byte(client, mocked, raw):
    mocked.post(URL, body=raw.encode(), status=200)
    response = post(client)
    assert response.status_code == 200
    assert response.data.startswith(b'{"success":true,"data":' + raw.encode() + b',')


def test_non_json_error_body_is_text_cut_to_2kb(client, mocked):
    mocked.post(URL, status=503, body="é" * 3000, content_type="text/html")
    details = post(client).get_json()["error"]["details"]
    assert isinstance(details, str) and details == "é" * 1024
    assert len(details.encode()) <= 2048


def test_provider_error_body_is_passed_as_sent(client, mocked):
    raw = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"r1"}'
    mocked.post(service_url("anthropic_claude"), status=529, body=raw)
    response = post(client, service="anthropic_claude")
    assert response.status_code == 502
    assert b'"details":' + raw + b"}" in response.data


def test_rate_limit_headers_and_request_id_pass_through_on_errors(client, mocked):
    mocked.post(URL, status=429, json={"error": {}}, headers={
        "Retry-After": "7", "retry-after-ms": "7000", "x-ratelimit-remaining-requests": "0",
        "x-should-retry": "true", "x-request-id": "req_up_1", "Set-Cookie": "s=1",
        "Server": "cloudflare", "openai-processing-ms": "12"})
    response = post(client)
    assert response.status_code == 429
    h = response.headers
    assert (h["Retry-After"], h["retry-after-ms"], h["x-ratelimit-remaining-requests"]) == (
        "7", "7000", "0")
    assert (h["x-should-retry"], h["X-Upstream-Request-ID"]) == ("true", "req_up_1")
    assert "Set-Cookie" not in h and "openai-processing-ms" not in h
    assert h.get("Server") != "cloudflare"


def test_anthropic_headers_pass_through_on_success(client, mocked):
    mocked.post(service_url("anthropic_claude"), json={"id": "msg"}, headers={
        "anthropic-ratelimit-requests-remaining": "49", "request-id": "req_011",
        "Set-Cookie": "__cf_bm=abc"})
    response = post(client, service="anthropic_claude")
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert response.headers["X-Upstream-Request-ID"] == "req_011"
    assert "Set-Cookie" not in response.headers


def test_a_repeated_provider_header_is_passed_once_with_its_values_joined(client, mocked):
    mocked.post(URL, json={}, headers=[("x-ratelimit-limit-requests", "60"),
                                       ("X-RateLimit-Limit-Requests", "1000")])
    response = post(client)
    assert response.headers.getlist("x-ratelimit-limit-requests") == ["60, 1000"]


@pytest.mark.parametrize(("value", "passed"), [
    ("60\r\n per minute", "60 per minute"),  # a folded line, as the e-mail parser leaves it
    ("60\r\n\t\tper minute", "60 per minute"),
    ("a\rb", "a b"), ("a\nb", "a b"), ("a\x00b", "a b"), ("a\x1fb\x7f", "a b"),
    ("a\x01\x02 \tb", "a b"),
    ("a\tb", "a\tb"), ("caf\xe9", "caf\xe9"), ("\x85", "\x85"),  # allowed as they are
])
def test_passed_header_values_lose_their_control_characters(value, passed):
    assert passed_headers({"x-ratelimit-note": value, "x-request-id": value}) == {
        "x-ratelimit-note": passed, "X-Upstream-Request-ID": passed}


@pytest.mark.parametrize("name", ["x-ratelimit-reset(tokens)", "x-ratelimit-a b",
                                  "anthropic-ratelimit-x/y", 'x-ratelimit-"q"'])
def test_a_passed_header_whose_name_is_no_token_is_dropped(name):
    assert passed_headers({name: "1", "x-ratelimit-ok_1.a~": "2"}) == {"x-ratelimit-ok_1.a~": "2"}


def test_provider_cookies_are_never_sent_back(client, mocked):
    mocked.post(URL, json={}, headers={"Set-Cookie": "session=abc; Path=/"})
    mocked.post(URL, json={})
    post(client)
    post(client)
    assert "Cookie" not in mocked.calls[1].request.headers


def test_pools_spell_out_their_size_and_retries():
    upstream = Upstream(make_settings(upstream_retries=3, upstream_pool_size=5))
    for session in upstream._sessions.values():
        adapter = session.get_adapter("https://api.openai.com/")
        assert adapter._pool_maxsize == 5
        retry = adapter.max_retries
        assert (retry.connect, retry.read, retry.redirect, retry.status) == (3, False, False, 0)
    upstream.close()


def test_a_service_finds_its_pool_once_and_a_new_one_after_close():
    upstream = Upstream(make_settings())
    request = requests.Request("POST", URL).prepare()
    adapter = upstream._sessions["openai"].get_adapter(URL)
    pool = adapter.get_connection_with_tls_context(request, True)
    assert adapter.get_connection_with_tls_context(request, True) is pool
    assert (pool.scheme, pool.host, pool.port) == ("http", "127.0.0.1", 9)
    # The pool's connections are ours (liveness check, header parsing), TLS ones too.
    assert pool.ConnectionCls is _HTTPConnection and pool.ConnectionCls.response_class is _Response
    tls = adapter.get_connection_with_tls_context(
        requests.Request("POST", "https://127.0.0.1:9/v1").prepare(), True)
    assert tls.ConnectionCls is _HTTPSConnection
    assert adapter.request_url(request, None) == "/v1/chat/completions"
    upstream.close()
    assert pool.pool is None  # its connections were closed
    reopened = adapter.get_connection_with_tls_context(request, True)
    assert reopened is not pool and reopened.pool is not None
    upstream.close()


@pytest.mark.parametrize("key", [":", "ok", "true", "a-b-c"])
def test_a_key_too_short_to_be_real_leaves_the_answer_whole(client, mocked, key):
    """Found by schemathesis: the key ":" masked in {"ok": true} made it invalid JSON (a 502)."""
    mocked.post(URL, json={"ok": True, "id": "a-b-c"})
    response = post(client, api_key=key)
    assert response.status_code == 200
    assert response.get_json()["data"] == {"ok": True, "id": "a-b-c"}


def test_a_key_echoed_by_the_provider_is_masked(client, mocked):
    mocked.post(URL, status=401, json={"error": {"message": f"Incorrect API key {FAKE_KEY}"}})
    response = post(client)
    assert response.get_json()["error"]["details"]["error"]["message"] == (
        "Incorrect API key [REDACTED]")


@pytest.mark.parametrize("status", [200, 429])
def test_a_key_echoed_in_a_passed_header_is_masked(client, mocked, status):
    mocked.post(URL, status=status, json={}, headers={
        "x-request-id": f"req-{FAKE_KEY}", "x-ratelimit-note": f"{FAKE_KEY} {FAKE_KEY}"})
    response = post(client)  # the client sweeps its headers too
    assert response.headers["X-Upstream-Request-ID"] == "req-[REDACTED]"
    assert response.headers["x-ratelimit-note"] == "[REDACTED] [REDACTED]"


def test_a_key_echoed_in_a_stream_is_masked(client, mocked):
    sse = f'data: {{"delta": "{FAKE_KEY}"}}\n\ndata: [DONE]\n\n'.encode()
    mocked.post(URL, body=sse, content_type="text/event-stream")
    response = post(client, payload={"model": "m", "stream": True})  # the client sweeps it too
    assert response.data == b'data: {"delta": "[REDACTED]"}\n\ndata: [DONE]\n\n'


def relaying(chunks: Iterable[bytes], api_key: str = FAKE_KEY,
             log: RequestLog | None = None) -> Iterator[bytes]:
    """Upstream._relay over a provider stream that arrives in these chunks."""
    raw = types.SimpleNamespace(chunked=True, read_chunked=lambda decode_content: iter(chunks))
    response = types.SimpleNamespace(raw=raw, close=lambda: None)
    return Upstream._relay(response, SERVICES["openai_chat"], _maskable(api_key),
                           log or RequestLog("r", "POST", "/"))


def relay(chunks: list[bytes], api_key: str = FAKE_KEY) -> list[bytes]:
    return list(relaying(chunks, api_key))


STREAM = f'data: {{"a": "{FAKE_KEY}"}}\n\ndata: {{"b": "{FAKE_KEY[:9]}"}}\n\n'.encode()


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_key_split_across_stream_chunks_is_masked_and_only_its_start_waits(cut):
    key = FAKE_KEY.encode()
    sent = relay([STREAM[:cut], STREAM[cut:]])
    assert b"".join(sent) == STREAM.replace(key, b"[REDACTED]")
    # What waits for the next chunk: the longest end of the first chunk that starts the key.
    # So a whole event (it ends in a blank line) never waits.
    first = STREAM[:cut].replace(key, b"[REDACTED]")
    waits = max(n for n in range(len(key)) if first.endswith(key[:n]))
    assert sent[0] == first[:len(first) - waits]


def test_a_stream_in_single_bytes_comes_out_whole_and_masked():
    sent = relay([STREAM[i:i + 1] for i in range(len(STREAM))])
    assert b"".join(sent) == STREAM.replace(FAKE_KEY.encode(), b"[REDACTED]")


def test_a_stream_that_ends_on_the_start_of_a_key_sends_it_at_the_end():
    assert relay([b"data: ", b"sk-te"]) == [b"data: ", b"sk-te"]
    assert relay([b"data: sk-te"]) == [b"data: ", b"sk-te"]


def test_a_stream_that_breaks_on_the_start_of_a_key_sends_it_before_the_error():
    def chunks():
        yield b"data: sk-te"
        raise urllib3.exceptions.ProtocolError("reset")

    log = RequestLog("r", "POST", "/")
    sent = relaying(chunks(), log=log)
    assert next(sent) == b"data: "
    assert next(sent) == b"sk-te"
    with pytest.raises(NetworkError):
        next(sent)
    assert log.ended == "upstream_error"


def test_a_key_too_short_to_be_real_is_not_held_back_in_a_stream():
    assert relay([b"data: o", b"k\n\n"], api_key="ok") == [b"data: o", b"k\n\n"]


@pytest.mark.parametrize("extra", [{}, {"seed": 2 ** 70}])  # past 64 bits too
def test_payload_is_sent_as_compact_utf8_json(client, mocked, extra):
    mocked.post(URL, json={})
    payload = {"model": "m", "temperature": 1e-05, "text": "é", "n": [1, {"a": None}], **extra}
    post(client, payload=payload)
    sent = mocked.calls[0].request.body
    assert json.loads(sent) == payload
    assert b" " not in sent and "é".encode() in sent
    assert mocked.calls[0].request.headers["Content-Length"] == str(len(sent))


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if not s.streams
                                  and n != "cohere_generate"])
def test_stream_flag_on_a_service_that_does_not_stream_gets_a_plain_answer(client, mocked, name):
    mocked.post(service_url(name), json={"object": "list"})
    response = post(client, service=name, payload={"input": "x", "stream": True})
    assert response.get_json()["data"] == {"object": "list"}
    assert mocked.calls[0].request.headers["Accept"] == "application/json"


@pytest.mark.parametrize("provider_does", ["nothing", "close", "send unasked bytes"])
def test_a_pooled_connection_is_reused_only_while_the_provider_keeps_it_quiet(provider_does):
    with socket.create_server(("127.0.0.1", 0)) as server:
        connection = _HTTPConnection("127.0.0.1", server.getsockname()[1])
        assert not connection.is_connected  # not yet opened
        connection.connect()
        peer, _ = server.accept()
        with peer:
            if provider_does == "close":
                peer.shutdown(socket.SHUT_WR)
            elif provider_does == "send unasked bytes":
                peer.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            assert connection.is_connected == (provider_does == "nothing")
        connection.close()


NGINX_BLOCK = (b"Server: nginx\r\nDate: Tue, 24 Nov 2026 23:47:40 GMT\r\nContent-Type: "
               b"application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n")


@pytest.mark.parametrize("block", [
    NGINX_BLOCK,
    b"\r\n",  # no headers at all
    b"Set-Cookie: a=1\r\nset-cookie: b=2\r\nX-Empty:\r\nX-Blank: \r\n\r\n",
    b"X-Pad:\t  spaced out  \r\nX-Colons: a:b::c\r\nX-Latin: caf\xe9\r\n\r\n",
    # Not plain: left to the e-mail parser, whose answer stays the answer.
    b"X-Folded: one\r\n two\r\n\tthree\r\nA: 1\r\n\r\n",
    b"A: 1\nB: 2\n\n",
    b"A: 1\r\nnot a header\r\nB: 2\r\n\r\n",
    b"A : 1\r\n: empty name\r\nB: 2\r\n\r\n",
    b"A: 1\r2\r\nB: 3\r\n\r\n",
    b"A: 1\r\nB: 2\r\n",  # the connection ended inside the block
])
def test_a_header_block_is_read_as_the_e_mail_parser_reads_it(block):
    ours, theirs = (io.BufferedReader(io.BytesIO(block + b"{}")) for _ in range(2))
    expected = http.client.parse_headers(theirs)
    message = _parse_headers(ours)
    assert message.items() == expected.items()
    assert [type(d) for d in message.defects] == [type(d) for d in expected.defects]
    assert message.get_payload() == expected.get_payload()
    assert ours.read() == theirs.read()  # the body starts where it did


def test_a_providers_usual_header_block_never_reaches_the_e_mail_parser(monkeypatch):
    provider_block = (b"Date: Tue, 24 Nov 2026 23:47:40 GMT\r\nContent-Type: application/json\r\n"
                      b"openai-processing-ms: 412\r\nx-ratelimit-remaining-requests: 9999\r\n"
                      b'set-cookie: __cf_bm=a.b-c; path=/; expires=Wed, 25-Nov-26 00:17:40 GMT\r\n'
                      b'alt-svc: h3=":443"; ma=86400\r\n\r\n')
    expected = [http.client.parse_headers(io.BufferedReader(io.BytesIO(block))).items()
                for block in (NGINX_BLOCK, provider_block)]
    parsed = []

    def refuse(**_):
        raise AssertionError("the e-mail parser was used")

    monkeypatch.setattr(email.parser, "Parser", refuse)
    for block in (NGINX_BLOCK, provider_block):
        parsed.append(_parse_headers(io.BufferedReader(io.BytesIO(block))).items())
    assert parsed == expected
    with pytest.raises(AssertionError, match="e-mail parser"):  # a folded line still goes there
        _parse_headers(io.BufferedReader(io.BytesIO(b"X-Folded: one\r\n two\r\n\r\n")))


@pytest.mark.parametrize(("interim", "status", "body", "kept"), [
    (b"", 200, b"{}", True),
    (b"HTTP/1.1 100 Continue\r\n\r\n", 200, b"{}", True),
    (b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n"
     b"Link: </b.js>\r\n\r\n", 200, b"{}", True),
    (b"HTTP/1.1 199 Whatever\r\nX-A: 1\r\n\r\n", 200, b"{}", True),
    # A 101 is the answer (a 502 for the client), and the connection is not the pool's any more.
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", 101, b"", False),
])
def test_a_pooled_connection_reads_the_final_answer_with_its_headers(interim, status, body, kept):
    """Interim answers (any 1xx but 101) are skipped for the one that follows them."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        connection = _HTTPConnection("127.0.0.1", server.getsockname()[1])
        connection.request("POST", "/v1", body=b"{}")
        peer, _ = server.accept()
        with peer:
            peer.recv(65536)
            peer.sendall(interim + b"HTTP/1.1 200 OK\r\n" + NGINX_BLOCK + b"{}")
            response = connection.getresponse()
            assert (response.status, response.data) == (status, body)
            if status == 200:
                assert response.headers["content-type"] == "application/json"
        assert isinstance(response._original_response, _Response)
        assert (connection.sock is not None) is kept
        connection.close()


def sent_bytes(server, connection_class, method, url, body, headers):
    """What a connection of this class puts on the wire for one request."""
    connection = connection_class("127.0.0.1", server.getsockname()[1])
    connection.request(method, url, body=body, headers=headers)
    connection.close()
    peer, _ = server.accept()
    with peer:
        data = b""
        while chunk := peer.recv(65536):
            data += chunk
        return data


PROVIDER_HEADERS = {"anthropic-version": "2023-06-01", "Content-Type": "application/json",
                    "Accept-Encoding": "identity", "User-Agent": "byok-proxy/test",
                    "x-api-key": FAKE_KEY, "Accept": "application/json", "Content-Length": "2"}


@pytest.mark.parametrize(("method", "body", "headers"), [
    ("POST", b"{}", PROVIDER_HEADERS),  # what the service sends: the header block in one piece
    ("POST", b"{}", {**PROVIDER_HEADERS, "X-Latin": "caf\xe9"}),
    # Anything else is urllib3's own request().
    ("POST", b"{}", {"Accept": "application/json"}),  # no Content-Length
    ("POST", '{"text": "é"}', {"Content-Type": "application/json"}),  # a str body
    ("GET", None, None),
])
def test_a_request_goes_out_as_urllib3_would_send_it(method, body, headers):
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours, urllib3s = (sent_bytes(server, cls, method, "/v1/messages?x=1", body, headers)
                          for cls in (_HTTPConnection, urllib3.connection.HTTPConnection))
    assert ours == urllib3s
    assert ours.startswith(f"{method} /v1/messages?x=1 HTTP/1.1\r\nHost: 127.0.0.1:".encode())


def test_the_services_request_head_is_written_in_one_piece(monkeypatch):
    """Only http.client's putrequest adds a header (Host) by itself; the provider headers go
    out as one block, not through putheader one by one."""
    names = []
    put_one = urllib3.connection.HTTPConnection.putheader
    monkeypatch.setattr(urllib3.connection.HTTPConnection, "putheader",
                        lambda self, name, *values: names.append(name) or put_one(
                            self, name, *values))
    with socket.create_server(("127.0.0.1", 0)) as server:
        sent = sent_bytes(server, _HTTPConnection, "POST", "/v1", b"{}", PROVIDER_HEADERS)
    assert names == ["Host"]
    assert sent.endswith(b"Content-Length: 2\r\n\r\n{}")


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
def test_a_tls_connection_takes_the_same_paths(tmp_path):
    """HTTPS connections are ours too: the header block in one piece, our header parsing."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    received = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        def serve():
            peer, _ = server.accept()
            with context.wrap_socket(peer, server_side=True) as tls:
                data = b""
                while not data.endswith(b"\r\n\r\n{}"):
                    data += tls.recv(65536)
                received.append(data)
                tls.sendall(b"HTTP/1.1 200 OK\r\n" + NGINX_BLOCK + b"{}")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        connection = _HTTPSConnection("127.0.0.1", server.getsockname()[1], ca_certs=str(cert))
        connection.request("POST", "/v1/messages", body=b"{}", headers=PROVIDER_HEADERS)
        response = connection.getresponse()
        assert (response.status, response.data) == (200, b"{}")
        assert isinstance(response._original_response, _Response)
        connection.close()
        thread.join(5)
    head = received[0].split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert head[0] == "POST /v1/messages HTTP/1.1"
    assert head[2:] == [f"{k}: {v}" for k, v in PROVIDER_HEADERS.items()]


@pytest.mark.parametrize("value", [f"{FAKE_KEY}\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b",
                                   "a\tb"])
def test_a_control_character_in_a_request_header_is_refused_before_sending(value):
    with socket.create_server(("127.0.0.1", 0)) as server:
        connection = _HTTPConnection("127.0.0.1", server.getsockname()[1])
        with pytest.raises(ValueError, match="control character"):
            connection.request("POST", "/v1", body=b"{}",
                               headers={**PROVIDER_HEADERS, "x-api-key": value})
        assert connection.sock is None  # not even connected
        connection.close()


def test_a_chat_answer_only_scanning_as_json_cannot_be_translated(client, mocked):
    """A number past a double's range is valid JSON to relay, but no value to translate."""
    mocked.post(service_url("cohere_generate"), status=200,
                body=b'{"id": "c1", "message": {"content": []}, "usage": {"n": 1e400}}')
    response = post(client, service="cohere_generate", payload={"prompt": "hi"})
    assert response.status_code == 502
    assert response.get_json()["error"]["message"] == (
        "cohere_generate: chat answered in an unexpected shape")
