"""Hostile requests, one table: each gets its documented status and error code in the
envelope, none a 500, and none reaches a provider (no provider is registered with `mocked`,
so any call would fail the test)."""
from __future__ import annotations

import io
import json

import pytest

from gunicorn.http.errors import (ChunkMissingTerminator, InvalidChunkExtension,
                                  InvalidChunkSize, NoMoreData)

from tests.conftest import FAKE_KEY
from tests.unit.conftest import body

MiB = 1024 * 1024
VALID = json.dumps(body()).encode()
NEST = 100_000


def raw(data: bytes, content_type: str | None = "application/json", **kwargs) -> dict:
    return {"data": data, "content_type": content_type, **kwargs}


def fields(**changes) -> dict:
    """A body with fields replaced; a value of ... removes the field."""
    sent = body()
    for name, value in changes.items():
        if value is ...:
            del sent[name]
        else:
            sent[name] = value
    return raw(json.dumps(sent).encode())


def text(json_text: str) -> dict:
    return raw(json_text.encode())


def with_payload(payload_json: str) -> dict:
    return text('{"target_service": "openai_chat", "api_key": "%s", "payload": %s}'
                % (FAKE_KEY, payload_json))


def option(service: str, name: str, value: str) -> dict:
    # Set in the WSGI environ directly: the test client refuses to build some of these itself.
    return raw(json.dumps(body(service)).encode(),
               environ_base={"HTTP_" + name.upper().replace("-", "_"): value})


def chunked(size: int) -> dict:
    # No Content-Length: the body ends when the stream does, as a chunked upload's does.
    return {"input_stream": io.BytesIO(b'{"payload": "' + b"x" * size + b'"}'),
            "content_type": "application/json", "environ_base": {"wsgi.input_terminated": True}}


class BrokenBody(io.RawIOBase):
    """A request body that gives `data`, then fails as gunicorn's reader does when the client
    breaks it off: NoMoreData (ended before the last chunk), a malformed chunk size or
    terminator, or a reset."""

    def __init__(self, data: bytes, error: Exception) -> None:
        self._data, self._error = data, error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._data:
            raise self._error
        size = min(len(buffer), len(self._data))
        buffer[:size], self._data = self._data[:size], self._data[size:]
        return size


def broken(error: Exception) -> dict:
    # No Content-Length, as in a chunked upload; set in the environ, past the test client's
    # own stream handling (which would seek in it).
    return {"content_type": "application/json", "environ_overrides": {
        "wsgi.input": io.BufferedReader(BrokenBody(VALID[:20], error)),
        "wsgi.input_terminated": True}}


BAD = ("VALIDATION_ERROR", 400)
MISSING_KEY = ("MISSING_API_KEY", 400)
TOO_LARGE = ("PAYLOAD_TOO_LARGE", 413)
NOT_ALLOWED = ("METHOD_NOT_ALLOWED", 405)
NOT_FOUND = ("NOT_FOUND", 404)

CASES = {
    # -- malformed, truncated, not-quite JSON ----------------------------------------------
    "empty body": (raw(b""), BAD),
    "white space only": (raw(b" \n\t "), BAD),
    "truncated at the start": (raw(b"{"), BAD),
    "truncated in a string": (raw(VALID[:25]), BAD),
    "truncated in the payload": (raw(VALID[:-3]), BAD),
    "trailing comma": (raw(VALID[:-1] + b",}"), BAD),
    "single quotes": (text("{'target_service': 'openai_chat'}"), BAD),
    "a comment": (raw(VALID[:-1] + b"/* hi */}"), BAD),
    "two objects": (raw(VALID + VALID), BAD),
    "trailing garbage": (raw(VALID + b" x"), BAD),
    "a string": (text('"openai_chat"'), BAD),
    "an array of a valid body": (raw(b"[" + VALID + b"]"), BAD),
    "null": (text("null"), BAD),
    "a number": (text("42"), BAD),
    "true": (text("true"), BAD),
    "invalid UTF-8": (raw(VALID.replace(b"openai_chat", b"openai\xff_chat")), BAD),
    "overlong UTF-8": (raw(VALID.replace(b'"m"', b'"\xc0\xaf"')), BAD),
    "UTF-16 with a BOM": (raw(b"\xff\xfe" + VALID.decode().encode("utf-16-le")), BAD),
    "UTF-8 BOM": (raw(b"\xef\xbb\xbf" + VALID), BAD),
    "NaN": (with_payload('{"temperature": NaN}'), BAD),
    "Infinity": (with_payload('{"temperature": Infinity}'), BAD),
    "-Infinity": (with_payload('{"temperature": -Infinity}'), BAD),
    "a float that overflows": (with_payload('{"temperature": 1e999}'), BAD),
    "a negative float that overflows": (with_payload('{"temperature": -1e999}'), BAD),
    "a 5,000-digit integer": (with_payload('{"seed": %s}' % ("9" * 5000)), BAD),
    "100,000 nested arrays": (with_payload("[" * NEST + "]" * NEST), BAD),
    "100,000 nested objects": (with_payload('{"a":' * NEST + "1" + "}" * NEST), BAD),
    "100,000 unclosed brackets": (with_payload("[" * NEST), BAD),
    "duplicate target_service": (text(
        '{"target_service": "openai_chat", "target_service": "anthropic_claude", '
        '"api_key": "%s", "payload": {}}' % FAKE_KEY), BAD),
    "duplicate api_key": (text(
        '{"target_service": "openai_chat", "api_key": "a", "api_key": "%s", "payload": {}}'
        % FAKE_KEY), BAD),
    "duplicate key inside the payload": (with_payload('{"model": "a", "x": {"k": 1, "k": 2}}'),
                                         BAD),
    "a lone surrogate escape": (with_payload('{"input": "\\ud800"}'), BAD),
    "a lone surrogate in an unknown field's name": (text(
        '{"target_service": "openai_chat", "api_key": "%s", "payload": {}, "\\udc00": 1}'
        % FAKE_KEY), BAD),
    "a raw control character in a string": (with_payload('{"input": "a\x00b"}'), BAD),
    "a raw newline in a string": (with_payload('{"input": "a\nb"}'), BAD),

    # -- a chunked body the client breaks off, as gunicorn reports it ---------------------------
    "a chunked body that ends mid-chunk": (broken(NoMoreData(b"")), BAD),
    "a chunk size of zz": (broken(InvalidChunkSize(b"zz")), BAD),
    "a chunk without its CRLF": (broken(ChunkMissingTerminator(b"XX")), BAD),
    "a chunk extension gunicorn refuses": (broken(InvalidChunkExtension("\x00")), BAD),
    "a client that resets mid-body": (broken(ConnectionResetError(104, "reset")), BAD),

    # -- sizes ---------------------------------------------------------------------------------
    "a 10 MB api_key": (fields(api_key="k" * (10 * 1000 * 1000)), BAD),
    "a 10 MB target_service": (fields(target_service="x" * (10 * 1000 * 1000)), BAD),
    "an 11 MB body with Content-Length": (fields(payload={"input": "x" * (11 * MiB)}),
                                          TOO_LARGE),
    "an 11 MB body, chunked": (chunked(11 * MiB), TOO_LARGE),
    "a Content-Length over the limit": (
        raw(VALID, environ_overrides={"CONTENT_LENGTH": str(20 * MiB)}), TOO_LARGE),

    # -- every wrong type in every field ----------------------------------------------------
    **{f"target_service {label}": (fields(target_service=value), BAD) for label, value in {
        "null": None, "a number": 1, "true": True, "an array": ["openai_chat"],
        "an object": {"name": "openai_chat"}, "empty": "", "unknown": "openai_image",
        "upper case": "OPENAI_CHAT", "with a space": "openai_chat ", "missing": ...}.items()},
    **{f"api_key {label}": (fields(api_key=value), BAD) for label, value in {
        "a number": 12345678, "a float": 1.5, "true": True, "an array": [FAKE_KEY],
        "an object": {"key": FAKE_KEY}, "over 4,096 characters": "k" * 4097,
        "with a newline": "sk-abc\ndef", "not ASCII": "sk-ключ-1234", "with a NUL": "sk-a\x00b",
        "with a tab": "sk-a\tb"}.items()},
    **{f"api_key {label}": (fields(api_key=value), MISSING_KEY) for label, value in {
        "null": None, "empty": "", "blank": "   \t", "missing": ...}.items()},
    **{f"payload {label}": (fields(payload=value), BAD) for label, value in {
        "null": None, "a string": "hi", "a number": 1, "an array": [], "true": True,
        "missing": ...}.items()},
    "an unknown top-level field": (fields(extra=1), BAD),
    "cohere_generate without a prompt": (raw(json.dumps(body("cohere_generate", {})).encode()),
                                         BAD),
    "cohere_generate with a number as prompt": (raw(json.dumps(
        body("cohere_generate", {"prompt": 1})).encode()), BAD),

    # -- option headers: injection, bytes, absurd sizes --------------------------------------
    "CRLF injection in anthropic-version": (
        option("anthropic_claude", "anthropic-version", "2023-06-01\r\nX-Evil: 1"), BAD),
    "LF injection in anthropic-beta": (
        option("anthropic_claude", "anthropic-beta", "a\nX-Evil: 1"), BAD),
    "a bad anthropic-version on an OpenAI call": (
        option("openai_chat", "anthropic-version", "1\r\nX-Evil: 1"), BAD),
    "NUL in OpenAI-Organization": (option("openai_chat", "OpenAI-Organization", "org\x00x"), BAD),
    "non-ASCII in OpenAI-Project": (option("openai_chat", "OpenAI-Project", "proj-é"), BAD),
    "a 300-byte anthropic-beta": (option("anthropic_claude", "anthropic-beta", "b" * 300), BAD),
    "a 100 KB OpenAI-Project": (option("openai_chat", "OpenAI-Project", "p" * 100_000), BAD),

    # -- wrong methods, content types and routes ----------------------------------------------
    **{f"{method} on external": (raw(VALID, method=method), NOT_ALLOWED)
       for method in ("GET", "PUT", "DELETE", "PATCH")},
    "POST on health": (raw(VALID, path="/api/proxy/health"), NOT_ALLOWED),
    "POST on services": (raw(VALID, path="/api/proxy/services"), NOT_ALLOWED),
    "text/plain": (raw(VALID, "text/plain"), BAD),
    "a form": (raw(b"target_service=openai_chat", "application/x-www-form-urlencoded"), BAD),
    "multipart": (raw(VALID, "multipart/form-data; boundary=x"), BAD),
    "no Content-Type": (raw(VALID, None), BAD),
    "application/jsonx": (raw(VALID, "application/jsonx"), BAD),
    "an unknown route": (raw(VALID, path="/api/proxy/externals"), NOT_FOUND),
    "a trailing slash": (raw(VALID, path="/api/proxy/external/"), NOT_FOUND),
}


def test_the_table_is_at_least_sixty_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", CASES)
def test_hostile_request_gets_its_envelope_and_reaches_no_provider(client, mocked, name):
    request, (code, status) = CASES[name]
    request = dict(request)
    path = request.pop("path", "/api/proxy/external")
    method = request.pop("method", "POST")
    response = client.open(path, method=method, **request)
    assert (response.status_code, response.content_type) == (status, "application/json"), (
        response.get_data()[:300])
    answer = response.get_json()
    assert answer["success"] is False
    assert answer["error"]["code"] == code
    assert answer["requestId"] == response.headers["X-Request-ID"]
    assert "Traceback" not in response.get_data(as_text=True)
    assert len(mocked.calls) == 0
