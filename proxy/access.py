"""Who may use the proxy: access tokens, the caller's identity, and the per-caller rate limit."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import time

from flask import Flask, Response, current_app, g, request

from config import Settings
from proxy import logs
from proxy.errors import RateLimitedError, UnauthorizedError, error_response

_OPEN_ENDPOINTS = ("proxy.health",)  # probes never need a token and are never limited


def _settings() -> Settings:
    return current_app.extensions["proxy"].settings


def _guarded() -> bool:
    """Routes behind tokens and limits: the blueprint's, but health and browser preflights."""
    return (request.blueprint == "proxy" and request.endpoint not in _OPEN_ENDPOINTS
            and request.method != "OPTIONS")


def matched_token() -> str | None:
    """The configured access token this request presents, if any (cached for the request).

    Every token is compared, in constant time, whichever matched.
    """
    if "access_token" not in g:
        presented = request.headers.get("Authorization", "")
        logs.hide(presented.removeprefix("Bearer "))
        matched = None
        for token in _settings().proxy_access_tokens:
            if hmac.compare_digest(presented.encode(), b"Bearer " + token.encode()):
                matched = token
        g.access_token = matched
    return g.access_token


def require_access_token() -> None:
    """With PROXY_ACCESS_TOKENS set, every guarded route needs one: 401 otherwise."""
    if _settings().proxy_access_tokens and _guarded() and matched_token() is None:
        raise UnauthorizedError("A valid access token is required: Authorization: Bearer <token>.")


def client_address(remote: str, forwarded: str, trusted: tuple) -> str:
    """The caller's address: the socket's peer, or, while that peer is one of the trusted
    proxies, the next address leftwards in X-Forwarded-For. Each proxy appends the address it
    saw, so only the entries our own proxies appended are believed; the rest is the client's say.
    """
    hops = [hop.strip() for hop in forwarded.split(",")] if forwarded else []
    address = remote
    while hops and _is_trusted(address, trusted):
        address = hops.pop()
    return address


def _is_trusted(address: str, trusted: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def caller_key() -> str:
    """Whom a request counts against: its access token (as a digest: no token is ever stored
    in the counters) when tokens are on and it holds one, else its client address."""
    settings = _settings()
    token = matched_token() if settings.proxy_access_tokens else None
    if token is not None:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    forwarded = ",".join(request.headers.getlist("X-Forwarded-For"))
    return "addr:" + client_address(request.remote_addr or "", forwarded,
                                    settings.trusted_proxies)


def register_rate_limit(app: Flask, settings: Settings) -> None:
    """Limit each caller to RATE_LIMIT across the guarded routes, with counters in memory (per
    worker process) or in Redis (shared by every process and instance).

    Should the store fail, each process goes on counting in its own memory with the same limit
    (Flask-Limiter logs "Rate limit storage unreachable") and returns to the shared store once it
    answers again ("Rate limit storage recovered"): the proxy stays up, the limit holds per
    process meanwhile.
    """
    # Imported only when a limit is set: it costs each worker about 5 MB.
    from flask_limiter import Limiter, RateLimitExceeded

    limiter = Limiter(
        caller_key, application_limits=[settings.rate_limit],
        storage_uri=settings.rate_limit_storage_uri,
        # A store that hangs must not hang the proxy: give up on it within a second.
        storage_options={"socket_timeout": 1, "socket_connect_timeout": 1}
        if settings.rate_limit_storage_uri.startswith("redis") else {},
        strategy="sliding-window-counter", key_prefix="byok-proxy",
        in_memory_fallback=[settings.rate_limit], in_memory_fallback_enabled=True,
        swallow_errors=True, headers_enabled=False)
    limiter.request_filter(lambda: not _guarded())
    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(e: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        reset_at = current.window.reset_time if current is not None else 0
        retry_after = max(1, math.ceil(reset_at - time.time()))
        return error_response(RateLimitedError(
            f"Rate limit of {e.limit.limit} exceeded; retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)}))
