"""Settings read once from the environment (contract §7), checked before anything starts."""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from config.registry import PROVIDERS

ENVIRONMENTS = ("development", "staging", "production")
WORKER_CLASSES = ("gthread", "gevent")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Flask-Limiter's notation, checked here without importing it: the gunicorn master reads these
# settings, and the limits package imports ssl, which the gevent worker must patch first.
_RATE = re.compile(r"\s*[1-9][0-9]*\s*(/|\s+per\s+)\s*([1-9][0-9]*\s*)?"
                   r"(second|minute|hour|day|month|year)s?\s*", re.IGNORECASE)
RATE_LIMIT_STORES = ("memory", "redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")


class ConfigError(ValueError):
    """A variable has a value the service cannot run with; the message names it."""


def _default_workers(worker_class: str = "gevent") -> int:
    """One gevent worker per core (each holds many calls at once in greenlets); gthread's
    blocking threads want gunicorn's usual 2 x cores + 1."""
    cores = os.cpu_count() or 1
    return cores if worker_class == "gevent" else 2 * cores + 1


@dataclass(frozen=True)
class Settings:
    environment: str = "development"
    port: int = 8000
    web_concurrency: int = field(default_factory=_default_workers)
    gunicorn_worker_class: str = "gevent"
    gunicorn_threads: int = 8
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 300.0
    upstream_pool_size: int = 32
    upstream_retries: int = 2
    max_request_bytes: int = 10 * 1024 * 1024
    client_body_timeout: float = 30.0
    cors_origins: tuple[str, ...] = ("*",)
    log_level: str = "INFO"
    cohere_generate_model: str = "command-a-03-2025"
    metrics_enabled: bool = True
    metrics_token: str | None = field(default=None, repr=False)  # a secret: never printed
    # Bearer tokens that may use the proxy; empty means open to anyone. Secrets: never printed.
    proxy_access_tokens: tuple[str, ...] = field(default=(), repr=False)
    # Requests per caller, in Flask-Limiter's notation ("60/minute"); None means no limit.
    rate_limit: str | None = None
    # May hold a Redis password: never printed.
    rate_limit_storage_uri: str = field(default="memory://", repr=False)
    # Peers whose X-Forwarded-For is believed (load balancers the operator names).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # provider name -> base URL without a trailing slash
    base_urls: Mapping[str, str] = field(
        default_factory=lambda: {p.name: p.base_url for p in PROVIDERS.values()})

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse and check every variable; raise ConfigError naming the first bad one."""
        environment = _choice(environ, "ENVIRONMENT", "development", ENVIRONMENTS, str.lower)
        cors_default = "*" if environment == "development" else ""
        worker_class = _choice(environ, "GUNICORN_WORKER_CLASS", "gevent", WORKER_CLASSES,
                               str.lower)
        return cls(
            environment=environment,
            port=_integer(environ, "PORT", 8000, minimum=1, maximum=65535),
            web_concurrency=_integer(environ, "WEB_CONCURRENCY", _default_workers(worker_class)),
            gunicorn_worker_class=worker_class,
            gunicorn_threads=_integer(environ, "GUNICORN_THREADS", 8),
            upstream_connect_timeout=_seconds(environ, "UPSTREAM_CONNECT_TIMEOUT", 5.0),
            upstream_read_timeout=_seconds(environ, "UPSTREAM_READ_TIMEOUT", 300.0),
            upstream_pool_size=_integer(environ, "UPSTREAM_POOL_SIZE", 32),
            upstream_retries=_integer(environ, "UPSTREAM_RETRIES", 2, minimum=0),
            max_request_bytes=_integer(environ, "MAX_REQUEST_BYTES", 10 * 1024 * 1024),
            client_body_timeout=_seconds(environ, "CLIENT_BODY_TIMEOUT", 30.0),
            cors_origins=_origins(environ.get("CORS_ORIGINS", cors_default)),
            log_level=_choice(environ, "LOG_LEVEL", "INFO", LOG_LEVELS, str.upper),
            cohere_generate_model=environ.get("COHERE_GENERATE_MODEL", "").strip()
            or "command-a-03-2025",
            metrics_enabled=_boolean(environ, "METRICS_ENABLED", True),
            metrics_token=_raw(environ, "METRICS_TOKEN"),
            proxy_access_tokens=_tokens(environ, "PROXY_ACCESS_TOKENS"),
            rate_limit=_rate_limit(environ, "RATE_LIMIT"),
            rate_limit_storage_uri=_storage_uri(environ, "RATE_LIMIT_STORAGE_URI"),
            trusted_proxies=_networks(environ, "TRUSTED_PROXIES"),
            base_urls={p.name: _base_url(environ, p.base_url_env, p.base_url)
                       for p in PROVIDERS.values()},
        )


def _raw(environ: Mapping[str, str], name: str) -> str | None:
    """The variable's value, or None when it is unset or blank (blank means default)."""
    value = environ.get(name, "").strip()
    return value or None


def _integer(environ: Mapping[str, str], name: str, default: int, *,
             minimum: int = 1, maximum: int | None = None) -> int:
    raw = _raw(environ, name)
    if raw is None:
        return default
    kind = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        limit = f" no larger than {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name} must be {kind}{limit}, got {raw!r}")
    return value


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = _raw(environ, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _choice(environ: Mapping[str, str], name: str, default: str,
            choices: tuple[str, ...], normalise) -> str:
    raw = _raw(environ, name)
    if raw is None:
        return default
    if normalise(raw) not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return normalise(raw)


def _boolean(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _raw(environ, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _tokens(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in environ.get(name, "").split(",") if t.strip())
    if not all(t.isascii() and t.isprintable() and " " not in t for t in tokens):
        raise ConfigError(f"{name} must be comma-separated tokens of printable ASCII "
                          "without spaces")  # the value is a secret: not repeated here
    return tokens


def _rate_limit(environ: Mapping[str, str], name: str) -> str | None:
    raw = _raw(environ, name)
    if raw is None:
        return None
    if not all(_RATE.fullmatch(part) for part in re.split("[;,]", raw)):
        raise ConfigError(f"{name} must be a rate such as 60/minute or 10/second;1000/day, "
                          f"got {raw!r}")
    return raw


def _storage_uri(environ: Mapping[str, str], name: str) -> str:
    raw = _raw(environ, name) or "memory://"
    scheme = raw.partition("://")[0].lower()
    if scheme not in RATE_LIMIT_STORES or "://" not in raw:
        # The value may hold a password: only its scheme is repeated.
        raise ConfigError(f"{name} must be memory:// or a redis:// URL, got scheme {scheme!r}")
    return raw


def _networks(environ: Mapping[str, str], name: str) -> tuple:
    try:
        return tuple(ipaddress.ip_network(item.strip())
                     for item in environ.get(name, "").split(",") if item.strip())
    except ValueError as e:
        raise ConfigError(f"{name} must be comma-separated IP addresses or networks: {e}") from None


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())


def _base_url(environ: Mapping[str, str], name: str, default: str) -> str:
    raw = _raw(environ, name)
    if raw is None:
        return default
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{name} must be an http(s) URL with a host and no query, got {raw!r}")
    return raw.rstrip("/")
