"""The transport under the provider Sessions: pooled connections, header parsing, one-piece
request heads, interim answers, TLS (proxy/transport.py), over real loopback sockets."""
import email.parser
import http.client
import io
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import urllib3.connection

from proxy.transport import LeanHTTPConnection, LeanHTTPSConnection, LeanResponse, parse_headers
from tests.conftest import FAKE_KEY


@pytest.mark.parametrize("provider_does", ["nothing", "close", "send unasked bytes"])
def test_a_pooled_connection_is_reused_only_while_the_provider_keeps_it_quiet(provider_does):
    with socket.create_server(("127.0.0.1", 0)) as server:
        connection = LeanHTTPConnection("127.0.0.1", server.getsockname()[1])
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
    message = parse_headers(ours)
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
        parsed.append(parse_headers(io.BufferedReader(io.BytesIO(block))).items())
    assert parsed == expected
    with pytest.raises(AssertionError, match="e-mail parser"):  # a folded line still goes there
        parse_headers(io.BufferedReader(io.BytesIO(b"X-Folded: one\r\n two\r\n\r\n")))


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
        connection = LeanHTTPConnection("127.0.0.1", server.getsockname()[1])
        connection.request("POST", "/v1", body=b"{}")
        peer, _ = server.accept()
        with peer:
            peer.recv(65536)
            peer.sendall(interim + b"HTTP/1.1 200 OK\r\n" + NGINX_BLOCK + b"{}")
            response = connection.getresponse()
            assert (response.status, response.data) == (status, body)
            if status == 200:
                assert response.headers["content-type"] == "application/json"
        assert isinstance(response._original_response, LeanResponse)
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
                          for cls in (LeanHTTPConnection, urllib3.connection.HTTPConnection))
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
        sent = sent_bytes(server, LeanHTTPConnection, "POST", "/v1", b"{}", PROVIDER_HEADERS)
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
        connection = LeanHTTPSConnection("127.0.0.1", server.getsockname()[1], ca_certs=str(cert))
        connection.request("POST", "/v1/messages", body=b"{}", headers=PROVIDER_HEADERS)
        response = connection.getresponse()
        assert (response.status, response.data) == (200, b"{}")
        assert isinstance(response._original_response, LeanResponse)
        connection.close()
        thread.join(5)
    head = received[0].split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert head[0] == "POST /v1/messages HTTP/1.1"
    assert head[2:] == [f"{k}: {v}" for k, v in PROVIDER_HEADERS.items()]


@pytest.mark.parametrize("value", [f"{FAKE_KEY}\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b",
                                   "a\tb"])
def test_a_control_character_in_a_request_header_is_refused_before_sending(value):
    with socket.create_server(("127.0.0.1", 0)) as server:
        connection = LeanHTTPConnection("127.0.0.1", server.getsockname()[1])
        with pytest.raises(ValueError, match="control character"):
            connection.request("POST", "/v1", body=b"{}",
                               headers={**PROVIDER_HEADERS, "x-api-key": value})
        assert connection.sock is None  # not even connected
        connection.close()


GEVENT_CALL = """
import gevent.monkey
gevent.monkey.patch_all()
import socket, sys, time, gevent
from gevent.monkey import get_original
from proxy.transport import LeanHTTPConnection

server = socket.create_server(("127.0.0.1", 0))
def serve():
    peer, _ = server.accept()
    while True:
        data = b""
        while not data.endswith(b"{}"):
            data += peer.recv(65536)
        peer.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\n{}")
gevent.spawn(serve)
connection = LeanHTTPConnection("127.0.0.1", server.getsockname()[1])
connection.request("POST", "/v1", body=b"{}", headers={"Content-Length": "2"})
connection.getresponse().read()  # the first call starts the clock of the loop's turns
connection.request("POST", "/v1", body=b"{}", headers={"Content-Length": "2"})
while not get_original("select", "select")([connection.sock], [], [], 0)[0]:
    gevent.sleep(0.01)  # until the answer is there, before it is asked for
gevent.sleep(0)  # a new turn of the loop begins
turns = []
gevent.spawn(turns.append, "another greenlet ran")
busy_until = time.perf_counter() + float(sys.argv[1])
while time.perf_counter() < busy_until:
    pass  # the turn's other work
response = connection.getresponse()
print(response.status, response.data.decode(), turns)
"""


@pytest.mark.parametrize("busy, turns", [(0.0, []), (0.01, ["another greenlet ran"])])
def test_under_gevent_a_call_late_in_a_loop_turn_lets_the_other_greenlets_run(busy, turns):
    """gevent reads a ready socket without yielding; a worker whose provider answers fast then
    served one connection while its others waited (README, Performance). Past the budget of
    the turn (4 ms) a call yields even with its answer there; early in the turn it reads it."""
    out = subprocess.run([sys.executable, "-c", GEVENT_CALL, str(busy)], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == f"200 {{}} {turns}"
