"""Gemini's RetryInfo read into Retry-After (proxy/translations.py): never failing an answer."""
import json

import pytest

from proxy.translations import google_retry_info


def retry_info(delay) -> bytes:
    return json.dumps({"error": {"code": 429, "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}}).encode()


@pytest.mark.parametrize(("delay", "seconds"), [
    ("34.4s", "35"), ("7s", "7"), ("0s", "0"), ("0.000000001s", "1"), ("7.000000001s", "8"),
    ("59.999s", "60"), ("3600s", "3600")])
def test_retry_delay_becomes_whole_seconds_rounded_up(delay, seconds):
    assert google_retry_info(retry_info(delay)) == seconds


def test_an_error_wrapped_in_a_list_is_read_too():
    assert google_retry_info(b"[" + retry_info("52758s") + b"]") == "52758"


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b"null", b'{"error": null}', b'{"error": {"details": {}}}',
    b'{"error": {"details": "x"}}', b'{"error": {"details": [1, "a", null]}}',
    b'{"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo"}]}}',
    retry_info(5), retry_info(None), retry_info("5"), retry_info("-5s"), retry_info("5 s"),
    retry_info("5m"), retry_info("1e3s"), retry_info("5.s"), retry_info("5s\n"),
    retry_info("9" * 13 + "s"), retry_info("5." + "0" * 10 + "s"),
    b"[" * 10_000 + b"]" * 10_000, b"[1, 2]", b"[[]]",
    b'{"error": {"details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure"}]}}',
])
def test_anything_else_gives_no_retry_after(body):
    assert google_retry_info(body) is None
