"""Domain errors. The HTTP layer maps them to status codes in one place (api/errors.py)."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of errors the service reports to callers."""

    #: Whether the same request can succeed later without anyone changing anything: a 503 carries
    #: ``Retry-After`` only when it is.
    retryable: bool = True

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


class ModelInvalidError(ConflictError):
    """A model version cannot serve: its checkpoint does not load, does not fit the catalogue or the
    state width, or gives non-finite Q-values on a probe state (→ 409 on activation; the message is a
    one-line reason)."""

    retryable = False


class ModelWidthError(ModelInvalidError):
    """A model version's state width (``model_dim``) disagrees with the width the service uses."""

    def __init__(self, message: str, model_dim: int, field: str | None = None) -> None:
        super().__init__(message, field)
        self.model_dim = model_dim


class NoModelError(ServiceError):
    """No model is loaded yet, so no action can be served (→ 503 with Retry-After)."""


class ModelUnservableError(NoModelError):
    """A model exists but cannot serve: its state width disagrees with the imported logs or with
    ``DQFD_STATE_DIM`` (→ 503 without Retry-After: someone has to retrain or fix the setting)."""

    retryable = False


class StateWidthError(ServiceError):
    """The state width is unknown, or two of its sources (the settings, the imported logs, a file, a
    model) disagree; the message names both and the fix."""

    retryable = False


class StateWidthMismatchError(StateWidthError, ConflictError):
    """Two sources of the state width disagree (→ 409 where it reaches HTTP)."""


class StateWidthUnknownError(StateWidthError):
    """No width is set (``DQFD_STATE_DIM``) and none is recorded yet (no logs imported)."""


class UnavailableError(ServiceError):
    """A dependency (the database) does not answer (→ 503 with Retry-After)."""


# Short names (the importer may use either).
StateWidthMismatch = StateWidthMismatchError
StateWidthUnknown = StateWidthUnknownError
