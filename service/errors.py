"""Domain errors. The HTTP layer maps them to status codes in one place (api/errors.py)."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of errors the service reports to callers."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInputError(ServiceError):
    """The request is well-formed JSON but a field's value is unacceptable (→ 422)."""


class NotFoundError(ServiceError):
    """The referenced entity does not exist (→ 404)."""


class ConflictError(ServiceError):
    """The request contradicts stored state, e.g. a different second reward (→ 409)."""


class NoModelError(ServiceError):
    """No model is loaded yet, so no action can be served (→ 503 with Retry-After)."""


class UnavailableError(ServiceError):
    """A dependency (the database) does not answer (→ 503 with Retry-After)."""
