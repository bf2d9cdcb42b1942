"""gunicorn settings, derived from the same checked Settings as the app (contract §7).

A platform's GUNICORN_CMD_ARGS overrides what is set here; see the README.
"""
import ctypes
import glob
import os
import tempfile

from gunicorn.glogging import Logger
from gunicorn.workers import gthread

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


class ThreadWorker(gthread.ThreadWorker):
    """gthread, but once shutdown begins its listeners close at once: new connections are
    refused (a router retries them elsewhere) instead of waiting in the backlog until the
    calls in flight have finished, which can take up to graceful_timeout."""

    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled)
        if not self.alive:
            for listener in self.sockets:
                listener.close()


def _keep_large_buffers_on_the_heap() -> None:
    """glibc maps each allocation over its mmap threshold (128 KB, moved at run time) on its own
    and gives freed heap tops back to the OS: a 1 MB answer, read and enveloped in two ~1 MB
    buffers, cost each request some 500 page faults. Up to 2 MB now come from the heap, which
    keeps up to 4 MB free: a 1 MB answer costs 31% less CPU and memory after load is lower
    (README, Performance). Set in the master, inherited by every forked worker; a C library
    without mallopt (not glibc) is left as it is."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(-3, 2 << 20)  # M_MMAP_THRESHOLD
        mallopt(-1, 4 << 20)  # M_TRIM_THRESHOLD


_keep_large_buffers_on_the_heap()

# gevent by default: each worker holds thousands of calls and streams in greenlets, and costs
# less CPU per request than gthread's thread hand-offs (README, Performance); it closes its
# listeners itself within a second of SIGTERM. gthread remains a setting.
worker_class = "gevent" if settings.gunicorn_worker_class == "gevent" else ThreadWorker

if settings.gunicorn_worker_class == "gevent":
    from gunicorn.workers import ggevent

    class StreamServer(ggevent.StreamServer):
        """gevent's server, taking up to 8 waiting connections a turn of its worker's loop.

        With several workers gunicorn lets each take one a turn, to share them out. But a
        busy worker's turn serves a request on every connection it holds, 30-50 ms under
        load: a burst of 64 new connections was accepted over 800 ms while their first
        requests waited, the worst of the tail under load (README, Performance). Eight a turn
        still leaves a burst to both workers."""

        @property
        def max_accept(self) -> int:
            return 8

        @max_accept.setter
        def max_accept(self, value: int) -> None:
            pass  # gunicorn's 1

    ggevent.StreamServer = StreamServer  # what gunicorn's gevent worker serves its sockets with
threads = settings.gunicorn_threads
# A heartbeat for gthread, not a request limit: long streams keep their worker.
timeout = 30
# Below a PaaS's 30 s stop timeout, so in-flight calls finish before the platform kills us.
graceful_timeout = 25
# Above the idle timeout of the router or balancer in front (Heroku's Router 2.0: 90 s; AWS ALB
# and nginx: 60 s), so it is always the one to close an idle connection: were gunicorn to close
# it first, a request the router sends on it at that moment would fail.
keepalive = 95
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


# Prometheus multiprocess mode: each worker writes its values to files in this directory and
# GET /metrics adds them up. Set before the workers import the app (there is no preload).
if settings.metrics_enabled:
    metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR",
                                        tempfile.mkdtemp(prefix="byok-proxy-metrics-"))
    for stale in glob.glob(os.path.join(metrics_dir, "*.db")):  # a previous run's counts
        os.remove(stale)


def child_exit(server, worker):
    """A dead worker's live gauges (in flight, streams open) must stop counting."""
    if settings.metrics_enabled:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
