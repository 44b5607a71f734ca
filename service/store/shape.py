"""The state width (number of features of a state): learned from the imported logs, stored in the
database (table ``service_meta``, key ``state_dim``), checked against ``DQFD_STATE_DIM`` and the models.

Every disagreement is a one-line :class:`~service.errors.StateWidthError` (or, on the serving side, a
problem string) that names the two sources that disagree, their widths and the fix.

- :func:`stored_state_dim` — the width recorded in the database (None before the first import).
- :func:`record_state_dim` — the importer records a file's width (in its transaction); a different
  width already stored is a :class:`~service.errors.StateWidthMismatchError`.
- :func:`resolve_state_dim` — the width everything else uses: ``DQFD_STATE_DIM`` if set (it must agree
  with the stored one), else the stored one, else :class:`~service.errors.StateWidthUnknownError`.
- :func:`state_dim_for` — :func:`resolve_state_dim` for a command holding no session.
- :func:`serving_width` / :func:`model_problem` — the same without raising, for the serving replicas
  (``/readyz`` problems and the 503 body of ``/act``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.errors import StateWidthMismatchError, StateWidthUnknownError
from service.settings import Settings
from service.store.features import FEATURE_DTYPE
from service.store.models import LoggedInteraction, ServiceMeta

STATE_DIM_KEY = "state_dim"
STATE_DIM_SOURCE_KEY = "state_dim_source"
SETTING = "DQFD_STATE_DIM"
RETRAIN_HINT = (
    'retrain on the imported logs (python -m service pretrain, or POST /admin/retrain {"activate": true})'
)


def _get(session: Session, key: str) -> str | None:
    return session.scalar(select(ServiceMeta.value).where(ServiceMeta.key == key))


def _put(session: Session, key: str, value: str) -> None:
    row = session.get(ServiceMeta, key)
    if row is None:
        session.add(ServiceMeta(key=key, value=value))
    else:
        row.value = value


def _logs_width(session: Session) -> int | None:
    """The width of one stored logged state (float32 bytes), None when there are no logs."""
    length = session.scalar(select(func.length(LoggedInteraction.state)).limit(1))
    return None if length is None else int(length) // FEATURE_DTYPE.itemsize


def _logs_have_width(session: Session, dim: int) -> bool:
    found = session.scalar(
        select(LoggedInteraction.id)
        .where(func.length(LoggedInteraction.state) == dim * FEATURE_DTYPE.itemsize)
        .limit(1)
    )
    return found is not None


def stored_state_dim(session: Session) -> int | None:
    """The state width recorded in the database; None when nothing is recorded and no logs exist.

    Logs stored without a record (written by something that did not call :func:`record_state_dim`)
    give their width too.
    """
    value = _get(session, STATE_DIM_KEY)
    if value is not None:
        return int(value)
    return _logs_width(session)


def stored_state_dim_source(session: Session) -> str | None:
    """Where the recorded width was learned from (e.g. the first imported file), if known."""
    return _get(session, STATE_DIM_SOURCE_KEY)


def logs_description(dim: int, source: str | None = None) -> str:
    """'the imported logs have 17 features (from logs.csv)': the stored width as a message names it."""
    origin = f" (from {source})" if source else ""
    return f"the imported logs have {dim} features{origin}"


def record_state_dim(session: Session, dim: int, source: str) -> None:
    """Record ``dim`` (the width of the file ``source`` being imported) in the caller's transaction.

    The first import records its width. A later one must have the same width, unless no stored log
    has the recorded width any more (the logs were deleted): then the new width replaces it.
    A different width raises :class:`~service.errors.StateWidthMismatchError` naming both and the fix.
    """
    dim = int(dim)
    if dim < 1:
        raise ValueError(f"a state width must be positive, got {dim}")
    recorded = _get(session, STATE_DIM_KEY)
    if recorded is not None and int(recorded) == dim:
        return
    stored = int(recorded) if recorded is not None else _logs_width(session)
    if stored is not None and stored != dim and _logs_have_width(session, stored):
        raise StateWidthMismatchError(
            f"{logs_description(stored, stored_state_dim_source(session))}, {source} has {dim}: "
            f"import logs with {stored} features, or use a new database (DATABASE_URL) for "
            f"{dim}-feature data",
            field="state",
        )
    _put(session, STATE_DIM_KEY, str(dim))
    _put(session, STATE_DIM_SOURCE_KEY, source)
    session.flush()


def settings_mismatch(configured: int, stored: int, source: str | None) -> str:
    """The message of ``DQFD_STATE_DIM`` disagreeing with the imported logs."""
    return (
        f"{SETTING}={configured} but {logs_description(stored, source)}: unset {SETTING} (the width is "
        f"learned from the logs) or set it to {stored}"
    )


UNKNOWN = (
    "the state width is not known yet: import the logged interactions first "
    f"(python -m service import logs.csv), or set {SETTING}"
)


def resolve_state_dim(settings: Settings, session: Session) -> int:
    """The state width to use: ``DQFD_STATE_DIM`` when set (checked against the stored width), else the
    width learned from the imported logs.

    Raises :class:`~service.errors.StateWidthMismatchError` when both exist and differ, and
    :class:`~service.errors.StateWidthUnknownError` when neither does.
    """
    stored = stored_state_dim(session)
    configured = settings.state_dim
    if configured is not None:
        if stored is not None and stored != configured:
            raise StateWidthMismatchError(
                settings_mismatch(configured, stored, stored_state_dim_source(session)), field="state_dim"
            )
        return configured
    if stored is None:
        raise StateWidthUnknownError(UNKNOWN, field="state_dim")
    return stored


@dataclass(frozen=True)
class StateWidth:
    """What the serving side knows about the width: ``dim`` (None = not known yet), a phrase naming
    where it comes from, and ``problem`` when the settings and the logs disagree."""

    dim: int | None
    origin: str = ""
    problem: str | None = None


def serving_width(configured: int | None, session: Session) -> StateWidth:
    """:func:`resolve_state_dim` for the serving replicas: never raises, a disagreement is a problem."""
    stored = stored_state_dim(session)
    source = stored_state_dim_source(session) if stored is not None else None
    if configured is not None:
        if stored is not None and stored != configured:
            return StateWidth(None, "", settings_mismatch(configured, stored, source))
        if stored is None:
            return StateWidth(configured, f"{SETTING}={configured}")
    if stored is None:
        return StateWidth(None)
    return StateWidth(stored, logs_description(stored, source))


def model_problem(model_version: int, model_dim: int, width: StateWidth) -> str | None:
    """Why model ``model_version`` (``model_dim`` features) cannot serve with ``width``; None: it fits."""
    if width.problem is not None:
        return width.problem
    if width.dim is None or width.dim == model_dim:
        return None
    if width.origin.startswith(SETTING):
        fix = f"set {SETTING}={model_dim} or unset it, or import {width.dim}-feature logs and retrain"
    else:
        fix = RETRAIN_HINT
    return f"the active model version {model_version} takes {model_dim} features but {width.origin}: {fix}"


def state_dim_for(settings: Settings) -> int:
    """:func:`resolve_state_dim` on a short-lived connection to ``settings.database_url`` (commands that
    hold no session, e.g. the quickstart printing an example request)."""
    from service.store.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return resolve_state_dim(settings, session)
    finally:
        engine.dispose()
