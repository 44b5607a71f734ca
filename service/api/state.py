"""Everything a running API process holds, created in the lifespan and reached through app.state."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.decision_log import DecisionWriter
from service.feedback_log import FeedbackWriter
from service.policy_store import PolicyStore
from service.poller import ModelPoller
from service.settings import Settings
from service.trainer import Trainer


@dataclass
class ServiceState:
    """The process's settings, database handles, policy store and background workers."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: PolicyStore
    poller: ModelPoller
    trainer: Trainer | None
    decisions: DecisionWriter
    feedback: FeedbackWriter
