"""An ASGI middleware that counts and times every HTTP request by method, route template and status.

The route is the template the router matched (``/admin/jobs/{job_id}``), never the raw path: one series
per route, whatever ids clients send. A request refused before routing (a 413 by Content-Length) is
matched here against the routes to find its template; one that matches no route is ``unmatched``.
"""

from __future__ import annotations

import time

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import HTTP_DURATION, HTTP_REQUESTS

UNMATCHED = "unmatched"
# Any other method is "other": the label values must stay few whatever clients send.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


class HttpMetricsMiddleware:
    """Records ``dqfd_http_requests_total`` and ``dqfd_http_request_duration_seconds``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (method, route, status) → its two children: the label lookup is done once per series.
        self._children: dict[tuple[str, str, str], tuple[object, object]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception escaping the app: the server answers 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) if route is not None else _match(scope)
        method = scope["method"] if scope["method"] in METHODS else "other"
        key = (method, template or UNMATCHED, str(status))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (HTTP_REQUESTS.labels(*key), HTTP_DURATION.labels(*key))
        count, duration = children
        count.inc()  # type: ignore[attr-defined]
        duration.observe(seconds)  # type: ignore[attr-defined]


def _match(scope: Scope) -> str | None:
    """The template of the route ``scope`` would have matched (requests refused before routing)."""
    app = scope.get("app")
    router = getattr(app, "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", None)
    return None
