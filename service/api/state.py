"""Everything a running API process holds, created in the lifespan and reached through app.state."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.feedback.feedback_log import FeedbackWriter
from service.learning.trainer import Trainer
from service.serving.decision_log import DecisionWriter
from service.serving.policy_store import PolicyStore
from service.serving.poller import ModelPoller
from service.settings import Settings


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
