"""Unit-tier fixtures: apps built from explicit Settings, providers faked with `responses`."""
from __future__ import annotations

import logging

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from config import PROVIDERS, Settings
from proxy.logs import JsonFormatter
from tests.conftest import FAKE_KEY, SECRETS

# Each provider on its own loopback address and the closed port 9: even a request that
# `responses` failed to intercept could never leave this machine.
BASE_URLS = {"openai": "http://127.0.0.1:9/v1", "anthropic": "http://127.0.0.2:9",
             "jina": "http://127.0.0.3:9/v1", "cohere": "http://127.0.0.4:9",
             "google": "http://127.0.0.5:9", "mistral": "http://127.0.0.6:9",
             "deepseek": "http://127.0.0.7:9", "openrouter": "http://127.0.0.8:9/api/v1",
             "groq": "http://127.0.0.9:9", "voyage": "http://127.0.0.10:9/v1"}


def make_settings(**overrides) -> Settings:
    values = {"base_urls": dict(BASE_URLS), "upstream_retries": 0, "cors_origins": ()}
    values.update(overrides)
    return Settings(**values)


def service_url(name: str, model: str = "models/m", stream: bool = False) -> str:
    """Where the proxy sends a call of `name`; `model` fills a path that holds one."""
    from config import SERVICES
    service = SERVICES[name]
    path = service.stream_path if stream and service.stream_path else service.path
    return BASE_URLS[service.provider] + path.replace("{model}", model)


def body(service: str = "openai_chat", payload: dict | None = None, **extra) -> dict:
    return {"target_service": service, "api_key": FAKE_KEY,
            "payload": {"model": "m", "messages": []} if payload is None else payload, **extra}


class SweptClient(FlaskClient):
    """A test client that closes every response (so its log line is written) and checks
    that no key or access token is in any of them."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        data = response.get_data()
        response.close()
        for secret in SECRETS:
            assert secret.encode() not in data
            assert secret not in str(response.headers)
        return response


@pytest.fixture(autouse=True)
def swept_clients(monkeypatch):
    """Every app's test client closes its responses, as a server does, and checks them."""
    monkeypatch.setattr(Flask, "test_client_class", SweptClient)


@pytest.fixture
def app():
    flask_app = create_app(make_settings())
    yield flask_app
    flask_app.extensions["proxy"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


class Lines(logging.Handler):
    """Formats each record as it is emitted, as the service's stderr handler does: a request's
    secrets are masked only while that request is served, so a line formatted later could
    hide a leak."""

    def __init__(self):
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture(autouse=True)
def no_key_in_logs(caplog):
    """The secret sweep: at DEBUG, in every logger, no key or token appears in any line."""
    caplog.set_level(logging.DEBUG)
    printed, root = Lines(), logging.getLogger()
    root.addHandler(printed)
    yield
    root.removeHandler(printed)
    for line in printed.lines:
        assert not any(secret in line for secret in SECRETS), line


assert set(BASE_URLS) == set(PROVIDERS)
