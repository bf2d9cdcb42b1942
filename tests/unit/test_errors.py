import logging

import pytest

from app import create_app
from proxy.errors import (ExternalServiceError, MissingApiKeyError, NetworkError,
                          PayloadTooLargeError, ProxyError, UpstreamTimeoutError, ValidationError)
from tests.unit.conftest import make_settings


@pytest.mark.parametrize(("cls", "code", "status"), [
    (ProxyError, "INTERNAL_ERROR", 500), (ValidationError, "VALIDATION_ERROR", 400),
    (MissingApiKeyError, "MISSING_API_KEY", 400),
    (ExternalServiceError, "EXTERNAL_SERVICE_ERROR", 502), (NetworkError, "NETWORK_ERROR", 502),
    (UpstreamTimeoutError, "UPSTREAM_TIMEOUT", 504),
    (PayloadTooLargeError, "PAYLOAD_TOO_LARGE", 413)])
def test_error_class_carries_its_code_and_status(cls, code, status):
    assert (cls.code, cls.status) == (code, status)


def test_unknown_route_is_not_found(client):
    response = client.get("/api/proxy/nothing")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "NOT_FOUND"
    assert response.get_json()["requestId"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("get", "/api/proxy/external", {"POST", "OPTIONS"}),
    ("post", "/api/proxy/health", {"GET", "HEAD", "OPTIONS"}),
    ("delete", "/api/proxy/services", {"GET", "HEAD", "OPTIONS"})])
def test_wrong_method_is_405_with_allow(client, method, path, allow):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert set(response.headers["Allow"].split(", ")) == allow


@pytest.mark.parametrize("testing", [True, False])
def test_a_bug_is_internal_error_logged_with_traceback_but_not_answered(caplog, testing):
    app = create_app(make_settings())
    app.testing = testing

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals at /srv/app.py")

    response = app.test_client().get("/boom", headers={"X-Request-ID": "rid-boom"})
    assert response.status_code == 500
    assert response.get_json() == {
        "success": False, "requestId": "rid-boom",
        "error": {"code": "INTERNAL_ERROR", "message": "Internal error; quote the request id."}}
    assert b"secret internals" not in response.data and b"Traceback" not in response.data
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR
                and r.name == "proxy.errors"]
    assert record.fields == {"requestId": "rid-boom"}
    assert "secret internals" in str(record.exc_info[1])
