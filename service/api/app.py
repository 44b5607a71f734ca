"""The FastAPI application factory and its lifespan (catalogue, model, poller, trainer)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import (
    routes_admin,
    routes_dashboard,
    routes_evaluation,
    routes_health,
    routes_metrics,
    routes_modes,
    routes_serving,
)
from service.api.errors import install_error_handlers
from service.api.http_metrics import HttpMetricsMiddleware
from service.api.limits import MaxBodySizeMiddleware
from service.api.openapi import install_openapi
from service.api.state import ServiceState
from service.feedback.feedback_log import FeedbackWriter
from service.learning.trainer import Trainer
from service.metrics import mark_process_dead
from service.serving.decision_log import DecisionWriter
from service.serving.policy_store import PolicyStore
from service.serving.poller import ModelPoller
from service.settings import Settings, get_settings
from service.store.db import make_engine, make_session_factory

log = logging.getLogger(__name__)


def build_state(settings: Settings) -> ServiceState:
    """Database handles, an empty policy store, the poller, the decision and feedback writers and (role
    ``all``) the trainer."""
    engine = make_engine(
        settings.database_url,
        settings.db_pool_size,
        connect_timeout_s=settings.db_connect_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s,
        pool_timeout_s=settings.db_pool_timeout_s,
    )
    sessions = make_session_factory(engine)
    store = PolicyStore(settings.state_dim)
    poller = ModelPoller(store, sessions, settings.model_poll_s)
    trainer = None
    if settings.role == "all":  # its own engine: loading demonstrations has no statement timeout
        trainer_engine = make_engine(settings.database_url, connect_timeout_s=settings.db_connect_timeout_s)
        trainer = Trainer(settings, trainer_engine, make_session_factory(trainer_engine), store)
    decisions = DecisionWriter(engine)
    feedback = FeedbackWriter(engine, settings.aggregation, settings.reward_window_s)
    decisions.timeout_s = feedback.timeout_s = settings.request_db_timeout_s  # a request's wait: then 503
    return ServiceState(
        settings, engine, sessions, store, poller, trainer, decisions=decisions, feedback=feedback
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API. The schema must already be migrated (``python -m service migrate``)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings)
        app.state.service = state
        try:
            state.poller.refresh()  # first catalogue + active model before accepting requests
        except Exception:
            log.exception("initial model load failed; the poller keeps trying")
        state.poller.start()
        state.decisions.start()
        state.feedback.start()
        # The start-up heap (torch, SQLAlchemy, the model) is long-lived: keep it out of the garbage
        # collector's full passes, which otherwise stall every request for tens of milliseconds.
        gc.collect()
        gc.freeze()
        if state.trainer is not None:
            state.trainer.start()
        try:
            yield
        finally:
            if state.trainer is not None:
                state.trainer.stop()
                state.trainer.engine.dispose()
            # Each commits what is queued (every waiting request gets its answer).
            state.feedback.stop()
            state.decisions.stop()
            gc.unfreeze()
            state.poller.stop()
            state.engine.dispose()
            mark_process_dead()  # multi-process metrics: drop this process's live gauges

    app = FastAPI(
        title="DQfD recommender",
        version="0.1.0",
        description="Greedy actions from a DQfD agent pretrained on logged interactions, with live feedback.",
        lifespan=lifespan,
    )
    app.add_middleware(MaxBodySizeMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetricsMiddleware)  # outermost: counts the 413s refused before routing too
    install_error_handlers(app)
    routes_serving.add_routes(app)  # first, and not through a router: the hot path matches them first
    routes_metrics.add_routes(app, settings)
    app.include_router(routes_health.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_evaluation.router)
    app.include_router(routes_modes.router)  # apprentice and shadow modes
    routes_dashboard.add_routes(app)  # read-only page + data (viewer or admin token), static files
    install_openapi(app)
    return app
