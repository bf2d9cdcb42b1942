"""gunicorn settings, derived from the same checked Settings as the app (contract §7).

A platform's GUNICORN_CMD_ARGS overrides what is set here; see the README.
"""
import os

from gunicorn.glogging import Logger

from config import ConfigError, Settings
from proxy.logs import JsonFormatter

try:
    settings = Settings.from_env(os.environ)
except ConfigError as e:
    # SystemExit is the one exception gunicorn's config loader passes on without a traceback.
    raise SystemExit(f"config error: {e}") from None

# All IPv4 interfaces, as a PaaS router expects; on a VM, bind to loopback behind a proxy (-b).
bind = [f"0.0.0.0:{settings.port}"]
workers = settings.web_concurrency
# gthread by default; gevent holds thousands of idle streams (needs `pip install gevent`).
worker_class = settings.gunicorn_worker_class
threads = settings.gunicorn_threads
# A heartbeat for gthread, not a request limit: long streams keep their worker.
timeout = 30
# Below a PaaS's 30 s stop timeout, so in-flight calls finish before the platform kills us.
graceful_timeout = 25
# Above the usual load balancer idle timeout (60 s), so the balancer closes idle connections first.
keepalive = 75
# No preload: each worker builds its own connection pool after the fork.
preload_app = False


class JsonLogger(Logger):
    """gunicorn's own lines as JSON, through the app's formatter."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())


# Every line JSON. No access log (and no logconfig, which would make gunicorn build the access
# line's data for every request): the app writes one line per request itself, with its request
# id and duration, the path without its query, and never a body.
logger_class = JsonLogger
loglevel = settings.log_level.lower()
