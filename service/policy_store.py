"""The serving side's model holder: one reference to an immutable policy, swapped atomically."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.catalogue import Catalogue
from service.errors import NoModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingPolicy:
    """An immutable NumPy Q-network with the catalogue it was checked against and its provenance."""

    network: Any
    catalogue: Catalogue
    model_version: int
    revision: int = 0

    def q_values(self, states: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        """Q-values (B, n_actions); disallowed actions are -inf."""
        return self.network.q_values(states, masks)


class PolicyStore:
    """Holds the serving policy. Readers take one reference (no lock); writers swap the whole object.

    A model that fails to load or does not fit the catalogue is rejected and the old one keeps
    serving. The HTTP layer only talks to this class, never to torch.
    """

    def __init__(self, state_dim: int) -> None:
        self.state_dim = state_dim
        self._policy: ServingPolicy | None = None
        self._catalogue: Catalogue | None = None
        self._write_lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def policy(self) -> ServingPolicy | None:
        """The current policy, or None before the first model."""
        return self._policy

    @property
    def catalogue(self) -> Catalogue | None:
        """The current catalogue snapshot."""
        return self._catalogue

    def require(self) -> ServingPolicy:
        """The current policy, or NoModelError (→ 503 Retry-After) when there is none yet."""
        policy = self._policy
        if policy is None:
            raise NoModelError("no model has been trained yet; retry shortly")
        return policy

    def publish(self, network: Any, model_version: int, revision: int = 0) -> bool:
        """Swap in ``network`` if it fits the state dimension and catalogue; False keeps the old one."""
        with self._write_lock:
            catalogue = self._catalogue
            if catalogue is None:
                self.last_error = "no catalogue loaded"
                return False
            if network.state_dim != self.state_dim or network.n_actions != catalogue.n_actions:
                self.last_error = (
                    f"model version {model_version} has shape ({network.state_dim}, {network.n_actions}); "
                    f"the service needs ({self.state_dim}, {catalogue.n_actions})"
                )
                log.error("rejected model: %s", self.last_error)
                return False
            self._policy = ServingPolicy(network, catalogue, model_version, revision)
            self.last_error = None
            return True

    def load_checkpoint(self, checkpoint: bytes, model_version: int) -> bool:
        """Build a NumPy policy from checkpoint bytes and publish it; a failure keeps the old policy."""
        from service.agents import numpy_policy_from_bytes

        try:
            network = numpy_policy_from_bytes(checkpoint)
        except Exception as exc:  # any corrupt checkpoint must leave serving untouched
            self.last_error = f"model version {model_version} failed to load: {exc!r}"
            log.exception("model version %s failed to load", model_version)
            return False
        return self.publish(network, model_version)

    def set_catalogue(self, catalogue: Catalogue) -> None:
        """Swap in a new catalogue snapshot (e.g. items deactivated); the policy follows if it fits."""
        with self._write_lock:
            self._catalogue = catalogue
            policy = self._policy
            if policy is not None and policy.network.n_actions == catalogue.n_actions:
                self._policy = ServingPolicy(policy.network, catalogue, policy.model_version, policy.revision)
