import pytest

from app import create_app
from config import ConfigError, Settings
from tests.conftest import FAKE_KEY
from tests.unit.conftest import body, make_settings, service_url

TOKENS = ("tok-alpha-1", "tok-beta-2")


@pytest.fixture
def guarded():
    app = create_app(make_settings(proxy_access_tokens=TOKENS))
    return app.test_client()


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong", "tok-alpha-1",
                                           "Basic dG9rLWFscGhhLTE=", "Bearer tok-alpha-1x",
                                           "bearer tok-alpha-1"])
def test_proxy_without_a_valid_token_is_401_and_reaches_no_provider(guarded, mocked,
                                                                     authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = guarded.post("/api/proxy/external", json=body(), headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "UNAUTHORIZED"
    assert response.headers["X-Request-ID"]


@pytest.mark.parametrize("token", TOKENS)
def test_each_configured_token_opens_the_proxy(guarded, mocked, token):
    mocked.post(service_url("openai_chat"), json={"ok": True})
    response = guarded.post("/api/proxy/external", json=body(),
                            headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    # The provider gets the user's key, never the client's access token.
    assert mocked.calls[0].request.headers["Authorization"] == f"Bearer {FAKE_KEY}"


def test_services_needs_a_token_and_health_does_not(guarded):
    assert guarded.get("/api/proxy/services").status_code == 401
    assert guarded.get("/api/proxy/services",
                       headers={"Authorization": "Bearer tok-beta-2"}).status_code == 200
    assert guarded.get("/api/proxy/health").status_code == 200


def test_browser_preflight_needs_no_token():
    app = create_app(make_settings(proxy_access_tokens=TOKENS, cors_origins=("https://a.example",)))
    response = app.test_client().options("/api/proxy/external", headers={
        "Origin": "https://a.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://a.example"


def test_without_tokens_the_proxy_is_open(client, mocked):
    mocked.post(service_url("openai_chat"), json={})
    assert client.post("/api/proxy/external", json=body()).status_code == 200


def test_tokens_are_never_logged_or_printed(guarded, caplog):
    guarded.post("/api/proxy/external", json=body(), headers={"Authorization": "Bearer tok-alpha-1"})
    guarded.post("/api/proxy/external", json=body(), headers={"Authorization": "Bearer nope-3"})
    for secret in (*TOKENS, "nope-3"):
        assert secret not in caplog.text
    assert "tok-alpha-1" not in repr(make_settings(proxy_access_tokens=TOKENS))


def test_access_tokens_setting():
    assert Settings.from_env({"PROXY_ACCESS_TOKENS": " a1, b2 ,,"}).proxy_access_tokens == (
        "a1", "b2")
    assert Settings.from_env({}).proxy_access_tokens == ()
    with pytest.raises(ConfigError, match="^PROXY_ACCESS_TOKENS must be") as caught:
        Settings.from_env({"PROXY_ACCESS_TOKENS": "ok,bad\u00e9secret"})
    assert "secret" not in str(caught.value)
