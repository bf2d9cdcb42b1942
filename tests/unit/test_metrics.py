import pytest
from prometheus_client import REGISTRY

from app import create_app
from proxy import metrics
from proxy.logs import RequestLog
from tests.conftest import FAKE_KEY
from tests.unit.conftest import body, make_settings, service_url


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0


def scrape(client, **headers):
    return client.get("/metrics", headers=headers)


def test_metrics_count_requests_errors_and_bytes_by_service(client, mocked):
    mocked.post(service_url("openai_chat"), body=b'{"ok":true}')
    mocked.post(service_url("openai_chat"), status=429, json={"error": {}})
    before = {
        "ok": sample("byok_proxy_requests_total", service="openai_chat", model="m", status="200"),
        "limited": sample("byok_proxy_requests_total", service="openai_chat", model="m", status="429"),
        "invalid": sample("byok_proxy_requests_total", service="none", model="none", status="400"),
        "errors": sample("byok_proxy_upstream_errors_total", service="openai_chat",
                         code="EXTERNAL_SERVICE_ERROR"),
        "bytes": sample("byok_proxy_relayed_bytes_total", service="openai_chat"),
        "timed": sample("byok_proxy_upstream_duration_seconds_count", service="openai_chat"),
        "durations": sample("byok_proxy_request_duration_seconds_count", service="openai_chat",
                            model="m"),
    }
    client.post("/api/proxy/external", json=body())
    client.post("/api/proxy/external", json=body())
    client.post("/api/proxy/external", json={"target_service": "x", "payload": {}})
    assert sample("byok_proxy_requests_total", service="openai_chat", model="m", status="200") == before["ok"] + 1
    assert sample("byok_proxy_requests_total", service="openai_chat", model="m",
                  status="429") == before["limited"] + 1
    assert sample("byok_proxy_requests_total", service="none", model="none", status="400") == before["invalid"] + 1
    assert sample("byok_proxy_upstream_errors_total", service="openai_chat",
                  code="EXTERNAL_SERVICE_ERROR") == before["errors"] + 1
    assert sample("byok_proxy_relayed_bytes_total", service="openai_chat") == before["bytes"] + 11
    assert sample("byok_proxy_upstream_duration_seconds_count",
                  service="openai_chat") == before["timed"] + 2
    assert sample("byok_proxy_request_duration_seconds_count",
                  service="openai_chat", model="m") == before["durations"] + 2
    assert sample("byok_proxy_requests_in_flight") == 0


def test_metrics_page_is_prometheus_text(client):
    response = scrape(client)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    for name in ("byok_proxy_requests_total", "byok_proxy_request_duration_seconds",
                 "byok_proxy_upstream_duration_seconds", "byok_proxy_upstream_errors_total",
                 "byok_proxy_requests_in_flight", "byok_proxy_streams_open",
                 "byok_proxy_relayed_bytes_total", "byok_proxy_tokens_total"):
        assert f"# TYPE {name} " in text


def test_no_client_input_but_a_plausible_model_becomes_a_label(client, mocked):
    mocked.post(service_url("openai_chat"), json={})
    client.post("/api/proxy/external", json=body(payload={"model": "model from client 77"}),
                headers={"X-Request-ID": "rid-label-check"})
    client.post("/api/proxy/external", json={"target_service": "service-from-client-77",
                                             "api_key": FAKE_KEY, "payload": {}})
    text = scrape(client).get_data(as_text=True)
    for value in ("model from client 77", "service-from-client-77", "rid-label-check", FAKE_KEY):
        assert value not in text


@pytest.mark.parametrize("model", ["", " gpt", "gpt 4", "gpt\n", "-gpt", "a" * 129, "<b>",
                                   'a"b', "a{b}", "gpt-4o\u2028", "é"])
def test_an_implausible_model_is_labelled_other(model):
    assert metrics.model_label(model) == "other"


def test_ten_thousand_model_names_make_at_most_fifty_one_labels(monkeypatch):
    monkeypatch.setattr(metrics, "_models", set())
    seen_before = {labels["model"] for labels in series("byok_proxy_requests_total")}
    for i in range(10_000):
        log = RequestLog(f"req_{i}", "POST", metrics.EXTERNAL_PATH)
        log.target_service, log.model, log.status = "openai_embedding", f"model-{i}", 200
        log.usage = {"inputTokens": 1}
        metrics.request_started(log)
        metrics.request_ended(log)
    for name in ("byok_proxy_requests_total", "byok_proxy_tokens_total",
                 "byok_proxy_request_duration_seconds_count"):
        labels = {s["model"] for s in series(name) if s["service"] == "openai_embedding"}
        assert len(labels - seen_before) <= metrics.MAX_MODELS + 1, name
    assert metrics.model_label("model-0") == "model-0"
    assert metrics.model_label("model-9999") == "other"
    assert sample("byok_proxy_tokens_total", service="openai_embedding", model="other",
                  type="input") >= 10_000 - metrics.MAX_MODELS


def series(name):
    return [sample.labels for metric in REGISTRY.collect() for sample in metric.samples
            if sample.name == name]


def test_metrics_token_is_required_when_set():
    app = create_app(make_settings(metrics_token="m-token-1"))
    client = app.test_client()
    assert scrape(client).status_code == 401
    assert scrape(client).get_json()["error"]["code"] == "UNAUTHORIZED"
    assert scrape(client, Authorization="Bearer wrong").status_code == 401
    assert scrape(client, Authorization="Bearer m-token-1").status_code == 200


def test_metrics_token_is_never_printed():
    assert "m-token-2" not in repr(make_settings(metrics_token="m-token-2"))


def test_metrics_can_be_turned_off():
    app = create_app(make_settings(metrics_enabled=False))
    assert app.test_client().get("/metrics").status_code == 404


@pytest.mark.parametrize(("raw", "value"), [("false", False), ("0", False), ("off", False),
                                            ("true", True), ("1", True), ("", True)])
def test_metrics_enabled_setting(raw, value):
    from config import Settings
    assert Settings.from_env({"METRICS_ENABLED": raw}).metrics_enabled is value


def test_bad_metrics_enabled_names_the_variable():
    from config import ConfigError, Settings
    with pytest.raises(ConfigError, match="^METRICS_ENABLED must be true or false"):
        Settings.from_env({"METRICS_ENABLED": "maybe"})
