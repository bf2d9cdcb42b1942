import os
import runpy
from pathlib import Path

import pytest

from app import create_app
from config import PROVIDERS, ConfigError, Settings
from tests.unit.conftest import make_settings


def test_gthread_defaults_to_two_workers_per_core_and_one():
    s = Settings.from_env({"GUNICORN_WORKER_CLASS": "gthread"})
    assert s.web_concurrency == 2 * (os.cpu_count() or 1) + 1


def test_defaults_match_the_contract_table():
    s = Settings.from_env({})
    assert s.environment == "development"
    assert s.port == 8000
    assert s.web_concurrency == (os.cpu_count() or 1)  # gevent: one worker per core
    assert s.gunicorn_worker_class == "gevent"
    assert s.gunicorn_threads == 8
    assert s.upstream_connect_timeout == 5.0
    assert s.upstream_read_timeout == 300.0
    assert s.upstream_pool_size == 32
    assert s.upstream_retries == 2
    assert s.max_request_bytes == 10485760
    assert s.client_body_timeout == 30.0  # ours; the contract has no such variable
    assert s.cors_origins == ("*",)
    assert s.log_level == "INFO"
    assert s.cohere_generate_model == "command-a-03-2025"
    assert s.base_urls == {"openai": "https://api.openai.com/v1",
                           "anthropic": "https://api.anthropic.com",
                           "jina": "https://api.jina.ai/v1", "cohere": "https://api.cohere.com",
                           "google": "https://generativelanguage.googleapis.com",
                           "mistral": "https://api.mistral.ai",
                           "deepseek": "https://api.deepseek.com",
                           "openrouter": "https://openrouter.ai/api/v1",
                           "groq": "https://api.groq.com", "voyage": "https://api.voyageai.com/v1"}


def test_every_variable_is_read():
    s = Settings.from_env({
        "ENVIRONMENT": "Production", "PORT": "5000", "WEB_CONCURRENCY": "3",
        "GUNICORN_WORKER_CLASS": "gevent", "GUNICORN_THREADS": "4",
        "UPSTREAM_CONNECT_TIMEOUT": "1.5", "UPSTREAM_READ_TIMEOUT": "60",
        "UPSTREAM_POOL_SIZE": "8", "UPSTREAM_RETRIES": "0", "MAX_REQUEST_BYTES": "1000",
        "CLIENT_BODY_TIMEOUT": "2.5", "CORS_ORIGINS": "https://a.example, https://b.example/", "LOG_LEVEL": "debug",
        "COHERE_GENERATE_MODEL": "command-r7b-12-2024",
        "OPENAI_BASE_URL": "http://127.0.0.1:8080/v1/", "ANTHROPIC_BASE_URL": "http://[::1]:81",
        "JINA_BASE_URL": "https://gw.example/jina", "CO_API_URL": "http://localhost:82",
        "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:83/", "MISTRAL_BASE_URL": "http://127.0.0.1:84",
        "DEEPSEEK_BASE_URL": "http://127.0.0.1:85", "OPENROUTER_BASE_URL": "http://127.0.0.1:86/api/v1",
        "GROQ_BASE_URL": "http://127.0.0.1:87", "VOYAGE_BASE_URL": "https://ai.mongodb.com/v1"})
    assert (s.environment, s.port, s.web_concurrency, s.gunicorn_worker_class) == (
        "production", 5000, 3, "gevent")
    assert (s.gunicorn_threads, s.upstream_connect_timeout, s.upstream_read_timeout) == (4, 1.5, 60)
    assert (s.upstream_pool_size, s.upstream_retries, s.max_request_bytes) == (8, 0, 1000)
    assert s.client_body_timeout == 2.5
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert (s.log_level, s.cohere_generate_model) == ("DEBUG", "command-r7b-12-2024")
    assert s.base_urls == {"openai": "http://127.0.0.1:8080/v1", "anthropic": "http://[::1]:81",
                           "jina": "https://gw.example/jina", "cohere": "http://localhost:82",
                           "google": "http://127.0.0.1:83", "mistral": "http://127.0.0.1:84",
                           "deepseek": "http://127.0.0.1:85",
                           "openrouter": "http://127.0.0.1:86/api/v1",
                           "groq": "http://127.0.0.1:87", "voyage": "https://ai.mongodb.com/v1"}


@pytest.mark.parametrize(("environment", "origins"), [
    ("development", ("*",)), ("staging", ()), ("production", ())])
def test_cors_defaults_to_any_origin_only_in_development(environment, origins):
    assert Settings.from_env({"ENVIRONMENT": environment}).cors_origins == origins


def test_empty_cors_origins_turns_cors_off():
    assert Settings.from_env({"CORS_ORIGINS": ""}).cors_origins == ()


@pytest.mark.parametrize(("name", "value"), [
    ("ENVIRONMENT", "prod"),
    ("PORT", "http"), ("PORT", "0"), ("PORT", "70000"),
    ("WEB_CONCURRENCY", "-1"), ("WEB_CONCURRENCY", "two"),
    ("GUNICORN_WORKER_CLASS", "sync"), ("GUNICORN_THREADS", "0"),
    ("UPSTREAM_CONNECT_TIMEOUT", "abc"), ("UPSTREAM_CONNECT_TIMEOUT", "0"),
    ("UPSTREAM_READ_TIMEOUT", "-5"), ("UPSTREAM_READ_TIMEOUT", "inf"),
    ("UPSTREAM_READ_TIMEOUT", "nan"),
    ("UPSTREAM_POOL_SIZE", "0"), ("UPSTREAM_RETRIES", "-1"), ("UPSTREAM_RETRIES", "1.5"),
    ("MAX_REQUEST_BYTES", "10MB"), ("CLIENT_BODY_TIMEOUT", "0"), ("LOG_LEVEL", "LOUD"),
    *[(p.base_url_env, bad) for p in PROVIDERS.values()
      for bad in ("ftp://x.example", "api.openai.com", "http://", "http://h/?q=1")],
])
def test_bad_value_raises_config_error_naming_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value).startswith(f"{name} must be")
    assert repr(value) in str(caught.value)


def test_blank_value_means_default():
    assert Settings.from_env({"PORT": " ", "OPENAI_BASE_URL": ""}).port == 8000


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_factory_takes_its_settings():
    app = create_app(make_settings(max_request_bytes=123))
    assert app.extensions["proxy"].settings.max_request_bytes == 123
    app.extensions["proxy"].close()


def test_two_apps_do_not_share_a_pool():
    a, b = create_app(make_settings()), create_app(make_settings())
    assert a.extensions["proxy"] is not b.extensions["proxy"]


def test_gunicorn_keeps_idle_connections_longer_than_the_router_in_front(monkeypatch):
    # Heroku's Router 2.0 keeps its connections to an app 90 s (AWS's ALB and nginx 60 s): the
    # side that closes an idle connection must be the router, or a request it sends just then
    # fails.
    monkeypatch.setenv("METRICS_ENABLED", "false")  # no metrics directory for this process
    conf = runpy.run_path(str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py"))
    assert conf["keepalive"] > 90


def test_a_busy_gevent_worker_takes_several_waiting_connections_a_turn(monkeypatch):
    # gunicorn lets each of several gevent workers accept one connection a turn of its loop;
    # under load a turn is tens of ms, and a burst of new connections waited for hundreds.
    from gunicorn.workers import ggevent

    monkeypatch.setattr(ggevent, "StreamServer", ggevent.StreamServer)  # put back afterwards
    monkeypatch.setenv("METRICS_ENABLED", "false")
    runpy.run_path(str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py"))
    server = ggevent.StreamServer(("127.0.0.1", 0), handle=lambda *args: None)
    server.max_accept = 1  # what gunicorn's worker sets when there are several
    assert server.max_accept == 8
