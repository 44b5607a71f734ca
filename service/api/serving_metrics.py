"""What ``/act`` and ``/feedback`` record in the metrics (:mod:`service.metrics`), and the reason label
of a 503. On the request path: a dictionary lookup and a few additions, no I/O."""

from __future__ import annotations

from typing import Any

from service.errors import ConflictError, ModelUnservableError, NoModelError, NotFoundError
from service.metrics import DECISIONS, EXPLORED, FEEDBACK, PROPENSITY

# model version → its two counter children (the label lookup is done once per version).
_by_version: dict[int, tuple[Any, Any]] = {}


def record_decision(model_version: int, explored: bool, propensity: float) -> None:
    """One committed decision: ``dqfd_decisions_total``, ``dqfd_explored_decisions_total`` and its
    propensity."""
    children = _by_version.get(model_version)
    if children is None:
        label = str(model_version)
        children = _by_version[model_version] = (DECISIONS.labels(label), EXPLORED.labels(label))
    children[0].inc()
    if explored:
        children[1].inc()
    PROPENSITY.observe(propensity)


def record_feedback(outcome: str) -> None:
    """One answered feedback post: ``stored``, ``duplicate``, ``ignored`` or an error's outcome."""
    FEEDBACK.labels(outcome).inc()


def feedback_error_outcome(exc: Exception) -> str | None:
    """The outcome label of a refused feedback post (None: not a verdict on the post, e.g. a 503)."""
    if isinstance(exc, NotFoundError):
        return "unknown_event"
    if isinstance(exc, ConflictError):
        return "conflict"
    return None


def unavailable_reason(exc: Exception) -> str:
    """The ``reason`` label of a 503: ``model_unservable`` (no retry helps), ``no_model`` or
    ``database`` (unavailable, timed out or shutting down)."""
    if isinstance(exc, ModelUnservableError):
        return "model_unservable"
    if isinstance(exc, NoModelError):
        return "no_model"
    return "database"
