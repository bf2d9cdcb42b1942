"""Composition root: settings, logging, the upstream pool, the blueprint and the error handlers."""
from __future__ import annotations

import os

from flask import Flask

from config import OPTION_HEADERS, ConfigError, Settings
from proxy.access import register_rate_limit
from proxy.cors import register_cors
from proxy.errors import register_error_handlers
from proxy.logs import configure_logging
from proxy.metrics import register_metrics
from proxy.routes import bp
from proxy.upstream import Upstream

# Our headers and every provider's option headers (from the registry), so browsers may send them.
_CORS_ALLOW = ["Content-Type", "Authorization", "X-Request-ID", *OPTION_HEADERS]


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env(os.environ)
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.extensions["proxy"] = Upstream(settings)  # per app: two test apps never share a pool
    if settings.cors_origins:
        register_cors(app, settings.cors_origins, _CORS_ALLOW)
    app.register_blueprint(bp)
    if settings.rate_limit:
        register_rate_limit(app, settings)
    if settings.metrics_enabled:
        register_metrics(app, settings)
    register_error_handlers(app)
    return app


try:
    app = create_app()
except ConfigError as e:
    raise SystemExit(f"config error: {e}") from None
