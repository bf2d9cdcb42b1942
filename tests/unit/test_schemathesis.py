"""Property-based tests of the API from openapi.yaml (schemathesis): for generated requests,
valid and invalid, no 5xx from the service itself and every answer as the spec says."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import responses
import schemathesis
from hypothesis import HealthCheck, settings

from app import create_app
from tests.e2e.upstream import COHERE_CHAT_ANSWER
from tests.unit.conftest import make_settings, service_url

schema = schemathesis.openapi.from_path(Path(__file__).resolve().parents[2] / "openapi.yaml")


@pytest.fixture(scope="module")
def app():
    flask_app = create_app(make_settings())
    yield flask_app
    flask_app.extensions["proxy"].close()


@pytest.fixture
def providers():
    """Every provider answers 200 with a small JSON body in its own shape."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        def answer(request):
            chat = request.url == service_url("cohere_chat")
            return 200, {}, json.dumps(COHERE_CHAT_ANSWER if chat else {"ok": True})

        rsps.add_callback(responses.POST, re.compile(r"http://127\.0\.0\.\d+:9/.*"), answer)
        yield rsps


@schema.parametrize()
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_spec(case, app, providers):
    case.call_and_validate(app=app)  # its checks include: no 5xx, and the answer as specified
