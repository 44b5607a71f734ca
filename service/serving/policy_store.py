"""The serving side's model holder: one reference to an immutable policy, swapped atomically."""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import ModelUnservableError, NoModelError
from service.ingest.catalogue import Catalogue
from service.metrics import SERVED_VERSION
from service.serving.feature_policy import FeatureModel, FeatureNetwork, is_feature_checkpoint
from service.store import shape

log = logging.getLogger(__name__)


def decode_checkpoint(checkpoint: bytes) -> Any:
    """The NumPy Q-network of a model version's checkpoint bytes (what serving evaluates per request): a
    fixed-head agent's gives a ``NumpyQNetwork``, an item agent's a
    :class:`~service.serving.feature_policy.FeatureModel` (bound to the catalogue when published)."""
    import torch

    from agent.inference import NumpyQNetwork

    loaded = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
    if is_feature_checkpoint(loaded):
        return FeatureModel.from_checkpoint(loaded)
    return NumpyQNetwork(loaded["online"])


@dataclass(frozen=True)
class ServingPolicy:
    """An immutable NumPy Q-network with the catalogue it was checked against and its provenance.

    ``catalogue`` is what the network can serve: the first ``n_actions`` items of the stored catalogue
    (:meth:`Catalogue.prefix`), so items imported after a fixed-head model was trained are never chosen
    by it, and deactivated ones never are by anyone."""

    network: Any
    catalogue: Catalogue
    model_version: int
    revision: int = 0

    def q_values(self, states: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        """Q-values (B, n_actions); disallowed actions are -inf."""
        return self.network.q_values(states, masks)


class PolicyStore:
    """Holds the serving policy. Readers take one reference (no lock); writers swap the whole object.

    A model that does not fit the catalogue or gives non-finite Q-values on the probe states is
    rejected and the old one keeps serving (checkpoints are checked before they get here:
    :mod:`service.serving.model_check`). A model whose state width disagrees with the imported logs
    or ``DQFD_STATE_DIM`` is rejected (and dropped when the width changes under it): ``problem`` then
    says which two disagree and how to fix it, and :meth:`require` answers with it (a 503 that
    retrying does not fix). The HTTP layer only talks to this class, never to torch.
    """

    def __init__(self, state_dim: int | None = None) -> None:
        # DQFD_STATE_DIM as configured (None: learned from the logs); the poller sets ``width``.
        self.configured_state_dim = state_dim
        self.width = (
            shape.StateWidth(None)
            if state_dim is None
            else shape.StateWidth(state_dim, f"{shape.SETTING}={state_dim}")
        )
        self._policy: ServingPolicy | None = None
        SERVED_VERSION.set(0)  # the process's one store (its API's): nothing served yet
        self._catalogue: Catalogue | None = None
        self._write_lock = threading.Lock()
        self.last_error: str | None = None
        self.problem: str | None = None
        """Why no model serves when waiting will not help (a state-width disagreement, no version that
        can serve), else None."""
        self.fallback: str | None = None
        """Set by the poller while the active version cannot serve and another one does in its place."""

    @property
    def state_dim(self) -> int | None:
        """The state width a model must have (None: not known yet, any width is accepted)."""
        return self.width.dim

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
            problem = self.problem
            if problem is not None:
                raise ModelUnservableError(problem)
            raise NoModelError("no model has been trained yet; retry shortly")
        return policy

    def set_width(self, width: shape.StateWidth) -> None:
        """The state width models must have now (the poller, from the database and the settings).

        A served policy of another width is dropped, and a disagreement becomes ``problem``.
        """
        with self._write_lock:
            changed = width != self.width
            self.width = width
            policy = self._policy
            if policy is not None:
                problem = shape.model_problem(policy.model_version, policy.network.state_dim, width)
                if problem is not None:
                    self._policy = None
                    self.problem = self.last_error = problem
                    SERVED_VERSION.set(0)
                    log.error("stopped serving: %s", problem)
            elif width.problem is not None:
                self.problem = width.problem
            elif changed:
                self.problem = None  # the poller loads the active version again against the new width

    def publish(self, network: Any, model_version: int, revision: int = 0) -> bool:
        """Swap in ``network`` if it fits the state dimension and catalogue; False keeps the old one."""
        with self._write_lock:
            catalogue = self._catalogue
            if catalogue is None:
                self.last_error = "no catalogue loaded"
                return False
            problem = shape.model_problem(model_version, network.state_dim, self.width)
            if problem is not None:
                if self._policy is None:
                    self.problem = problem
                self.last_error = problem
                log.error("rejected model: %s", problem)
                return False
            if isinstance(network, FeatureModel | FeatureNetwork):  # scored by features: any catalogue
                if catalogue.attributes is None:
                    self.last_error = f"model version {model_version}: the catalogue has no item attributes"
                    log.error("rejected model: %s", self.last_error)
                    return False
                network = network.bind(catalogue)
            from service.serving.model_check import actions_problem, probe_problem  # (they import us)

            # A catalogue grown since the model was trained is fine: it serves the items it knows.
            problem = actions_problem(model_version, int(network.n_actions), catalogue.n_actions)
            problem = problem or probe_problem(network, model_version)
            if problem is not None:  # e.g. online weights that diverged: the old policy keeps serving
                self.last_error = problem
                log.error("rejected model: %s", problem)
                return False
            known = catalogue.prefix(int(network.n_actions))
            self._policy = ServingPolicy(network, known, model_version, revision)
            self.last_error = self.problem = None
            SERVED_VERSION.set(model_version)
            return True

    def set_catalogue(self, catalogue: Catalogue) -> None:
        """Swap in a new catalogue snapshot (e.g. items deactivated); the policy follows if it fits."""
        with self._write_lock:
            self._catalogue = catalogue
            policy = self._policy
            features = catalogue.attributes is not None
            if policy is not None and isinstance(policy.network, FeatureNetwork) and features:
                # New items are scored by their features at once; vectors are computed for them only.
                network = policy.network.bind(catalogue)
                self._policy = ServingPolicy(network, catalogue, policy.model_version, policy.revision)
                return
            if policy is not None and policy.network.n_actions <= catalogue.n_actions:
                known = catalogue.prefix(int(policy.network.n_actions))  # new items: not this model's
                self._policy = ServingPolicy(policy.network, known, policy.model_version, policy.revision)
