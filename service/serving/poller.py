"""Keeps a serving replica's policy and catalogue in step with the database.

Every version is checked before it serves (:func:`service.serving.model_check.validate_checkpoint`).
When the active version cannot serve, the replica keeps the policy it has; with none (a start), it
serves the newest version that passes the checks and says so in ``/readyz`` problems and
``/admin/stats``. The database's active flag is left as it is: which version is active is the
operator's decision (and every replica would race to change it); activating a valid version, or a
retrain, ends the fallback. With no valid version at all, ``/act`` answers 503 naming the problem and
the fix (retrain).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.errors import ModelInvalidError, ModelWidthError
from service.ingest.catalogue import Catalogue, load_catalogue
from service.metrics import DATABASE_ERRORS, record_jobs
from service.serving.model_check import actions_problem, validate_checkpoint
from service.serving.policy_store import PolicyStore
from service.serving.shadow import Modes
from service.store import catalogue_revision, jobs, registry, shape
from service.store.db import database_unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejection:
    """Why a version cannot serve, and what it was checked against ((state width, catalogue size)): it
    is not checked again until one of those changes."""

    reason: str
    key: tuple[int | None, int]
    model_dim: int | None = None  # set when the reason is a state-width disagreement


class ModelPoller:
    """Every ``interval`` seconds: refresh the catalogue and the state width, load a newly activated
    version off the request path. A version that fails its checks is remembered (with the width and
    catalogue size it was checked against) so it is not retried in a loop; a change of either tries it
    again."""

    def __init__(self, store: PolicyStore, sessions: sessionmaker[Session], interval: float) -> None:
        self.store = store
        self.sessions = sessions
        self.interval = interval
        self.rejected: dict[int, Rejection] = {}
        self.modes = Modes()
        """Apprentice mode and the shadow version, as stored (service.serving.shadow)."""
        self.last_error: str | None = None
        self._reported: tuple[int, int] | None = None  # (active, served) of store.fallback
        self._catalogue_revision: catalogue_revision.Fingerprint | None = None  # of the stored catalogue
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """One synchronisation with the database (and the jobs by state, for the metrics)."""
        with self.sessions() as session:
            record_jobs(jobs.count_by_state(session))
            catalogue = self._sync_catalogue(session)
            # DQFD_STATE_DIM against the imported logs' width: a policy of another width stops serving.
            width = shape.serving_width(self.store.configured_state_dim, session)
            self.store.set_width(width)
            self.modes.sync(session, self.store)  # apprentice switch and shadow version
            active = registry.active_version_number(session)
            if active is None or width.problem is not None:  # nothing to serve / no model can fix it
                return
            policy = self.store.policy
            if policy is not None and policy.model_version == active:
                self.store.fallback = None
                return
            key = (width.dim, catalogue.n_actions)
            rejection = self.rejected.get(active)
            if rejection is None or rejection.key != key:
                network = self._check(session, active, key, width)
                if network is not None and self._publish(network, active, key):
                    self.store.fallback = None
                    log.info("serving model version %s", active)
                    return
            if policy is not None:  # keep serving what serves (the previous version, or a fallback)
                self._report(active, policy.model_version, "the one served before")
                return
            self._fall_back(session, active, key, width)

    def _sync_catalogue(self, session: Session) -> Catalogue:
        """The stored catalogue, read (with the item attributes a feature model scores by) and swapped into
        the store only when its fingerprint changed (service.store.catalogue_revision): reading 100,000
        items on every poll would hold the GIL against requests."""
        revision = catalogue_revision.fingerprint(session)
        current = self.store.catalogue
        if current is not None and revision == self._catalogue_revision:
            return current
        catalogue = load_catalogue(session, attributes=True)
        self.store.set_catalogue(catalogue)
        self._catalogue_revision = revision
        return catalogue

    def _check(self, session: Session, version: int, key: tuple[int | None, int], width: Any) -> Any:
        """The version's network if it passes the checks; None (and remembered) if not."""
        try:
            return validate_checkpoint(registry.load_checkpoint(session, version), version, key[1], width)
        except ModelInvalidError as exc:
            dim = exc.model_dim if isinstance(exc, ModelWidthError) else None
            self._reject(version, Rejection(exc.message, key, dim))
            return None

    def _publish(self, network: Any, version: int, key: tuple[int | None, int]) -> bool:
        if self.store.publish(network, version):
            self.rejected.pop(version, None)
            return True
        self._reject(version, Rejection(self.store.last_error or f"model version {version} was refused", key))
        return False

    def _reject(self, version: int, rejection: Rejection) -> None:
        self.rejected[version] = rejection
        self.store.last_error = rejection.reason
        log.error("model version %s cannot be served: %s", version, rejection.reason)

    def _report(self, active: int, served: int, which: str) -> None:
        if self.store.fallback is not None and self._reported == (active, served):
            return  # already said (and which one it is does not change while it serves)
        self._reported = (active, served)
        reason = self.rejected[active].reason
        self.store.fallback = (
            f"active version {active} cannot be served ({reason}); serving version {served}, {which}"
        )

    def _fall_back(self, session: Session, active: int, key: tuple[int | None, int], width: Any) -> None:
        """Serve the newest other version that passes the checks; with none, say why and how to fix it."""
        for row in registry.list_versions(session):  # newest first, checkpoints not loaded
            version = row.version
            known = self.rejected.get(version)
            if version == active or (known is not None and known.key == key):
                continue
            if row.n_actions > key[1] or (key[0] is not None and row.state_dim != key[0]):
                # Its recorded shape already rules it out: no need to read the checkpoint.
                self._reject(version, Rejection(_shape_reason(version, row, key, width), key))
                continue
            network = self._check(session, version, key, width)
            if network is not None and self._publish(network, version, key):
                self._report(active, version, "the newest valid one")
                log.warning("%s", self.store.fallback)
                return
        self.store.fallback = None
        self.store.problem = self._no_model_problem(active, key, width)

    def _no_model_problem(self, active: int, key: tuple[int | None, int], width: Any) -> str:
        rejection = self.rejected[active]
        others = [
            r.reason for v, r in sorted(self.rejected.items(), reverse=True) if v != active and r.key == key
        ]
        if not others and rejection.model_dim is not None:
            return shape.model_problem(active, rejection.model_dim, width) or rejection.reason
        detail = f" ({'; '.join(others[:3])}{'; ...' if len(others) > 3 else ''})" if others else ""
        return (
            f"the active {rejection.reason}; no other model version can serve{detail}: {shape.RETRAIN_HINT}"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
                self.last_error = None
            except Exception as exc:  # the database may be away: keep serving, retry next tick
                self.last_error = f"{type(exc).__name__}: {exc}"
                if database_unavailable(exc):
                    DATABASE_ERRORS.labels("poller").inc()
                log.warning("model poll failed: %s", self.last_error)

    def start(self) -> None:
        """Poll in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _shape_reason(version: int, row: Any, key: tuple[int | None, int], width: Any) -> str:
    if row.n_actions > key[1]:  # fewer is fine: a grown catalogue (model_check.actions_problem)
        return actions_problem(version, row.n_actions, key[1]) or ""
    return f"model version {version} takes {row.state_dim} features but {width.origin}"
