"""The serving modes a replica follows (apprentice on/off, the shadow version), synchronised by the model
poller from ``service_meta`` (:mod:`service.store.modes`), and the shadow version's policy itself.

The shadow is loaded off the request path, as an activation is: the poller reads the stored shadow
version, checks it as it checks a version before serving (:func:`validate_checkpoint`), and swaps in an
immutable :class:`ServingPolicy`. ``/act`` reads one reference and never waits. A version that fails its
checks is remembered with the state width and catalogue size it was checked against, and not read again
until one of them changes (as the poller does with active versions).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from service.errors import ServiceError
from service.serving.feature_policy import FeatureModel, FeatureNetwork
from service.serving.model_check import validate_checkpoint
from service.serving.policy_store import PolicyStore, ServingPolicy
from service.store import registry
from service.store.modes import read_modes

log = logging.getLogger(__name__)


class Modes:
    """One replica's view of the serving modes. Written by the poller's thread (and an admin request on
    this replica); ``/act`` reads the attributes, each of which is replaced whole."""

    def __init__(self) -> None:
        self.apprentice: bool | None = None
        """The stored switch (admin or promotion gate); None: never switched, ``DQFD_MODE`` decides."""
        self.apprentice_reason: str | None = None
        self.shadow_version: int | None = None
        """The shadow version asked for (it may have failed to load: see ``shadow_error``)."""
        self.shadow: ServingPolicy | None = None
        """The loaded shadow policy, or None."""
        self.shadow_error: str | None = None
        self._failed: dict[int, tuple[int | None, int]] = {}

    def apprentice_on(self, mode: str) -> bool:
        """Whether this replica serves the baseline item: the stored switch, else ``mode`` (DQFD_MODE)."""
        stored = self.apprentice
        return mode == "apprentice" if stored is None else stored

    def sync(self, session: Session, store: PolicyStore) -> None:
        """Read the stored modes and (re)load the shadow version when it changed or no longer fits."""
        stored = read_modes(session)
        self.apprentice, self.apprentice_reason = stored.apprentice, stored.apprentice_reason
        self.load_shadow(session, store, stored.shadow_version)

    def load_shadow(self, session: Session, store: PolicyStore, version: int | None) -> None:
        """Make ``version`` the shadow (None: stop shadowing), checked against the current catalogue and
        state width; a failure leaves no shadow and says why in ``shadow_error``."""
        self.shadow_version = version
        catalogue = store.catalogue
        if version is None or catalogue is None:
            self.shadow, self.shadow_error = None, None
            return
        width = store.width
        key = (width.dim, catalogue.n_actions)
        current = self.shadow
        if current is not None and current.model_version == version and _fits(current.network, key):
            if isinstance(current.network, FeatureNetwork) and catalogue.attributes is not None:
                if current.catalogue is not catalogue:  # new items: scored by their features at once
                    self.shadow = ServingPolicy(current.network.bind(catalogue), catalogue, version)
                return
            if current.catalogue.full is not catalogue and current.catalogue is not catalogue:
                # items (de)activated or added: masks come from the request anyway
                known = catalogue.prefix(int(current.network.n_actions))
                self.shadow = ServingPolicy(current.network, known, version)
            return
        if self._failed.get(version) == key:
            return
        try:
            network = validate_checkpoint(registry.load_checkpoint(session, version), version, key[1], width)
        except ServiceError as exc:
            self._failed[version] = key
            self.shadow, self.shadow_error = None, exc.message
            log.error("shadow version %s cannot be scored: %s", version, exc.message)
            return
        self._failed.pop(version, None)
        if isinstance(network, FeatureModel):  # scores every item by its features
            if catalogue.attributes is None:
                self.shadow, self.shadow_error = None, "the catalogue snapshot has no item attributes"
                return
            network = network.bind(catalogue)
        known = catalogue.prefix(int(network.n_actions))  # a grown catalogue: the items it knows
        self.shadow, self.shadow_error = ServingPolicy(network, known, version), None
        log.info("scoring shadow version %s beside the served one", version)


def _fits(network: Any, key: tuple[int | None, int]) -> bool:
    return network.n_actions <= key[1] and (key[0] is None or network.state_dim == key[0])
