"""``GET /metrics``: the Prometheus scrape target (docs/service.md, "Metrics").

It reads the metrics from memory (or, in multi-process mode, from the processes' files), never from the
database: gauges such as the jobs by state are kept current by background loops. It is open unless
``DQFD_METRICS_TOKEN`` is set, then it needs ``Authorization: Bearer <token>`` (Prometheus's
``authorization`` scrape setting). It is left out of the OpenAPI document: it is an operator's endpoint
in Prometheus's text format, not part of the JSON API that clients are generated from.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from service.metrics_exposition import CONTENT_TYPE, authorized, configured_token, render
from service.settings import Settings


def add_routes(app: FastAPI, settings: Settings) -> None:
    """Register ``GET /metrics`` on ``app``, guarded by ``settings.metrics_token`` when it is set."""
    token = configured_token(settings.metrics_token)

    async def metrics(request: Request) -> Response:
        if not authorized(request.headers.get("authorization"), token):
            return Response(
                "a valid metrics bearer token is required (DQFD_METRICS_TOKEN)\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
                media_type="text/plain",
            )
        # Formatting every series (or reading every process's files) takes a millisecond or more: off
        # the event loop, so /act requests are not held behind a scrape.
        body = await run_in_threadpool(render)
        return Response(body, media_type=CONTENT_TYPE)

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
