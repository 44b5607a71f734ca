"""Publishing what the learner trained: model versions into the registry (a job's, or the online
loop's) and the online weights into the serving replica's policy store.

The checkpoint bytes are made by the caller beforehand (:func:`service.learning.agents.agent_to_bytes`),
outside the hand-off lock; these functions write in the caller's transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.ingest.catalogue import Catalogue
from service.learning import agents
from service.serving.policy_store import PolicyStore
from service.store import registry, retention
from service.store.models import LiveTransition, TrainingJob, utcnow


def save_job_version(
    session: Session,
    job: TrainingJob,
    agent: Any,
    checkpoint: bytes,
    state_dim: int,
    catalogue: Catalogue,
    metrics: dict[str, Any],
    activate: bool,
    finish: bool = True,
    keep_versions: int | None = None,
) -> int:
    """Save a job's trained agent as a new model version (activated or not) and mark the job succeeded
    (not yet without ``finish``: the promotion gate judges it first); returns the version number. With
    ``keep_versions`` (DQFD_KEEP_VERSIONS) the retention rule runs in the same transaction."""
    version = registry.save_version(
        session,
        checkpoint=checkpoint,
        state_dim=state_dim,
        n_actions=catalogue.n_actions,
        config=agents.config_dict(agent.config),
        metrics=metrics,
        source=job.kind,
        n_updates=int(agent.n_updates),
        parent_version=None,
        job_id=job.id,
        activate=activate,
    ).version
    row = session.get(TrainingJob, job.id)
    row.metrics = metrics
    row.model_version = version
    if finish:
        row.status = "succeeded"
        row.progress = 1.0
        row.finished_at = utcnow()
    if keep_versions is not None:
        retention.prune_checkpoints(session, keep_versions)
    return version


def save_online_version(
    session: Session,
    agent: Any,
    checkpoint: bytes,
    catalogue: Catalogue,
    parent_version: int | None,
    losses: dict[str, float],
    activate: bool = True,
    keep_versions: int | None = None,
) -> int:
    """Save the online-trained weights as a new model version, active unless ``activate`` is false (the
    promotion gate decides after the save); returns its number. With ``keep_versions``
    (DQFD_KEEP_VERSIONS) the retention rule runs in the same transaction: online saves are what fills
    the database."""
    live_total = session.scalar(select(func.count()).select_from(LiveTransition))
    version = registry.save_version(
        session,
        checkpoint=checkpoint,
        state_dim=int(agent.state_dim),
        n_actions=catalogue.n_actions,
        config=agents.config_dict(agent.config),
        metrics={**losses, "live_transitions": int(live_total or 0)},
        source="online",
        n_updates=int(agent.n_updates),
        parent_version=parent_version,
        activate=activate,
    ).version
    if keep_versions is not None:
        retention.prune_checkpoints(session, keep_versions)
    return version


def publish_policy(store: PolicyStore, agent: Any, version: int) -> None:
    """Swap the agent's current weights (a NumPy copy) into this process's policy store (a feature
    network's is bound there to the store's catalogue, new items included)."""
    # policy_revision counts the online updates in the served weights (docs/service.md), so the
    # pretraining updates a version started from are left out.
    online = int(agent.n_updates) - int(agent.n_pretrain_updates)
    store.publish(agents.serving_network(agent), version, online)
