"""Keeps a serving replica's policy and catalogue in step with the database."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from service.ingest.catalogue import load_catalogue
from service.serving.policy_store import PolicyStore
from service.store import registry, shape

log = logging.getLogger(__name__)


class ModelPoller:
    """Every ``interval`` seconds: refresh the catalogue and the state width, load a newly activated
    version off the request path. A version that fails to load is remembered (with the width it was
    checked against) so it is not retried in a loop; a change of the width tries it again."""

    def __init__(self, store: PolicyStore, sessions: sessionmaker[Session], interval: float) -> None:
        self.store = store
        self.sessions = sessions
        self.interval = interval
        self.failed_version: int | None = None
        self._failed_width: shape.StateWidth | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """One synchronisation with the database."""
        with self.sessions() as session:
            catalogue = load_catalogue(session)
            current = self.store.catalogue
            if (
                current is None
                or current.item_ids != catalogue.item_ids
                or not (current.active == catalogue.active).all()
            ):
                self.store.set_catalogue(catalogue)
            # DQFD_STATE_DIM against the imported logs' width: a policy of another width stops serving.
            width = shape.serving_width(self.store.configured_state_dim, session)
            self.store.set_width(width)
            active = registry.active_version_number(session)
            policy = self.store.policy
            if active is None or (active == self.failed_version and width == self._failed_width):
                return
            if policy is not None and policy.model_version == active:
                return
            checkpoint = registry.load_checkpoint(session, active)
        if self.store.load_checkpoint(checkpoint, active):
            log.info("serving model version %s", active)
        else:
            self.failed_version, self._failed_width = active, width

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
                self.last_error = None
            except Exception as exc:  # the database may be away: keep serving, retry next tick
                self.last_error = f"{type(exc).__name__}: {exc}"
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
