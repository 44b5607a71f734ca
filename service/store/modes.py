"""The serving modes an admin (or the promotion gate) switches, kept in ``service_meta`` so that every
replica's poller follows them: apprentice mode on or off, and the shadow version.

Keys: ``apprentice`` (``"true"``/``"false"``; absent: the deployment's ``DQFD_MODE`` decides),
``apprentice_reason`` (why it was last switched, in words, with when), ``shadow_version`` (a version
number; absent: no shadow). The counts and the rows the reports need are in :mod:`service.store.mode_stats`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.store.models import ServiceMeta, utcnow

APPRENTICE_KEY = "apprentice"
APPRENTICE_REASON_KEY = "apprentice_reason"
SHADOW_KEY = "shadow_version"


@dataclass(frozen=True)
class StoredModes:
    """The modes as stored: ``apprentice`` None means no switch was ever stored (``DQFD_MODE`` decides)."""

    apprentice: bool | None
    apprentice_reason: str | None
    shadow_version: int | None


def _put(session: Session, key: str, value: str | None) -> None:
    if value is None:
        session.execute(delete(ServiceMeta).where(ServiceMeta.key == key))
        return
    row = session.get(ServiceMeta, key)
    if row is None:
        session.add(ServiceMeta(key=key, value=value))
    else:
        row.value = value


def read_modes(session: Session) -> StoredModes:
    """The stored modes (one query)."""
    keys = (APPRENTICE_KEY, APPRENTICE_REASON_KEY, SHADOW_KEY)
    values = dict(
        session.execute(select(ServiceMeta.key, ServiceMeta.value).where(ServiceMeta.key.in_(keys))).all()
    )
    apprentice = values.get(APPRENTICE_KEY)
    shadow = values.get(SHADOW_KEY)
    return StoredModes(
        None if apprentice is None else apprentice == "true",
        values.get(APPRENTICE_REASON_KEY),
        None if shadow is None else int(shadow),
    )


def set_apprentice(session: Session, enabled: bool, reason: str) -> None:
    """Switch apprentice mode on or off for every replica (within ``DQFD_MODEL_POLL_S``); the caller
    commits. ``reason`` says who and why (``admin``, or the promotion gate's verdict): it is shown in
    ``GET /admin/apprentice``. This is the function the promotion gate calls to hand serving to the model.
    """
    _put(session, APPRENTICE_KEY, "true" if enabled else "false")
    _put(session, APPRENTICE_REASON_KEY, f"{reason} ({utcnow().isoformat(timespec='seconds')})")


def set_shadow_version(session: Session, version: int | None) -> None:
    """Score ``version`` beside the active one on live traffic (None: stop); the caller commits."""
    _put(session, SHADOW_KEY, None if version is None else str(int(version)))
