"""Writing the metrics of :mod:`service.metrics` out for a Prometheus scrape: the API's ``GET /metrics``
and, in the ``worker`` process (which has no HTTP API), a small HTTP server of its own on
``DQFD_METRICS_PORT``. Both answer from memory (or, in multi-process mode, from the processes' files):
never from the database.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer
from pydantic import SecretStr

from service.metrics import multiprocess_dir

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The text format every Prometheus version reads (``text/plain; version=0.0.4``)."""


def scrape_registry() -> CollectorRegistry:
    """The registry a scrape reads: this process's own, or in multi-process mode
    (``PROMETHEUS_MULTIPROC_DIR``) a fresh one that sums the files of every process in that folder."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


def render() -> bytes:
    """The current metrics in the Prometheus text format."""
    return generate_latest(scrape_registry())


def configured_token(secret: SecretStr | None) -> str | None:
    """The metrics token of the settings; a blank one (``DQFD_METRICS_TOKEN=``) is none."""
    return (secret.get_secret_value() or None) if secret is not None else None


def authorized(header: str | None, token: str | None) -> bool:
    """Whether a request may read the metrics: always when no token is configured, else only with
    ``Authorization: Bearer <token>`` (compared in constant time)."""
    if token is None:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].encode(), token.encode())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log: say nothing."""


def _app(token: str | None) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: the metrics are at /metrics\n"]
        if not authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("WWW-Authenticate", "Bearer")])
            return [b"a valid metrics bearer token is required (DQFD_METRICS_TOKEN)\n"]
        body = render()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body]

    return app


def start_server(host: str, port: int, token: str | None) -> ThreadingWSGIServer:
    """Serve ``GET /metrics`` on ``host:port`` from a daemon thread (the worker process); returns the
    server (``shutdown()`` stops it)."""
    server = make_server(host, port, _app(token), ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
