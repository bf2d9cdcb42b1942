"""CORS for browser clients of /api/ (contract §7: CORS_ORIGINS).

Only browsers need CORS headers, and they always send Origin: every other caller's answer is
left alone after one look-up. (flask-cors did the same job for ~5% of a proxied request's CPU,
even for callers that send no Origin.)
"""
from __future__ import annotations

from typing import Iterable

from flask import Flask, Response, request

from proxy.envelope import is_passed_on

_METHODS = "GET, POST, OPTIONS"  # every method the API serves
_MAX_AGE = "600"  # seconds a browser may keep a preflight's answer


def register_cors(app: Flask, origins: Iterable[str], allow_headers: Iterable[str]) -> None:
    """Answer browsers from `origins` ("*" for any): the origin is echoed back, the listed
    request headers may be sent, and scripts may read every header the answer passes on from
    the provider (and X-Request-ID), named one by one as they vary by answer; a preflight
    (OPTIONS with Access-Control-Request-Method) is answered by Flask with a 200."""
    origins = frozenset(origins)
    any_origin = "*" in origins
    allowed = {name.lower() for name in allow_headers}

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.environ.get("HTTP_ORIGIN")
        if origin is None or not (any_origin or origin in origins):
            return response
        if not request.path.startswith("/api/"):
            return response
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = origin
        response.vary.add("Origin")  # the answer differs by Origin: caches must key on it
        headers["Access-Control-Expose-Headers"] = ", ".join(
            ["X-Request-ID", *(name for name in headers.keys() if is_passed_on(name))])
        if request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.environ:
            headers["Access-Control-Allow-Methods"] = _METHODS
            headers["Access-Control-Max-Age"] = _MAX_AGE
            asked = request.environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "").split(",")
            granted = [name for name in map(str.strip, asked) if name.lower() in allowed]
            if granted:
                headers["Access-Control-Allow-Headers"] = ", ".join(granted)
        return response
