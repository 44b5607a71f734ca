"""Checkpoint retention: the active version, the newest DQFD_KEEP_VERSIONS, every version activated by
anything but its own online save, and the shadow keep their checkpoints; the others are emptied, their
rows kept, and activating one answers 409 (docs/service.md, "Checkpoint retention")."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.api.app import create_app
from service.errors import ModelInvalidError
from service.learning import agents
from service.settings import Settings
from service.store import jobs, registry, retention
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.models import ModelActivation, ModelVersion, TrainingJob
from service.store.modes import set_shadow_version
from service.store.retention import EVALUATE_JOB_KIND as EVALUATE_KIND
from tests.service.conftest import N_ITEMS, STATE, STATE_DIM, admin_headers, save_version_in, wait_for


def _stored(session: Any) -> dict[int, int]:
    """version → checkpoint length (0: pruned)."""
    rows = session.execute(select(ModelVersion.version, func.length(ModelVersion.checkpoint))).all()
    return {v: int(n) for v, n in rows}


def test_the_rule_keeps_exactly_the_right_versions(seeded: Settings) -> None:
    checkpoint = agents.agent_to_bytes(agents.new_agent(seeded, N_ITEMS, STATE_DIM))
    engine = make_engine(seeded.database_url)
    try:
        sessions = make_session_factory(engine)
        with session_scope(sessions) as session:
            # a job's activation: kept
            assert save_version_in(session, checkpoint, source="pretrain", activate=True) == 1
            for _ in range(2, 7):  # online saves 2..6, each activated on save
                save_version_in(session, checkpoint, source="online", activate=True)
            registry.activate_version(session, 3, reason="manual")  # a rollback to 3: kept
            set_shadow_version(session, 2)  # scored beside the served one: kept
            # held by the promotion gate
            assert save_version_in(session, checkpoint, source="online", activate=False) == 7
            assert save_version_in(session, checkpoint, source="online", activate=True) == 8  # active
            activations = session.scalar(select(func.count()).select_from(ModelActivation))
        with session_scope(sessions) as session:
            # keep_last 2: the newest two are 7 and 8; 8 is active; 1 and 3 were activated by hand or by
            # a job; 2 is the shadow. 4, 5 and 6 were only activated by their own online save.
            assert retention.kept_versions(session, 2) == {1, 2, 3, 7, 8}
            assert retention.prune_checkpoints(session, 2) == [4, 5, 6]
        with session_scope(sessions) as session:
            size = len(checkpoint)
            assert _stored(session) == {1: size, 2: size, 3: size, 4: 0, 5: 0, 6: 0, 7: size, 8: size}
            assert retention.pruned_versions(session, list(range(1, 9))) == {4, 5, 6}
            # The rows' history stays: every activation, and the pruned versions in the listing.
            assert session.scalar(select(func.count()).select_from(ModelActivation)) == activations
            assert [row.version for row in registry.list_versions(session)] == [8, 7, 6, 5, 4, 3, 2, 1]
            assert retention.prune_checkpoints(session, 2) == []  # nothing more to prune
            with pytest.raises(ModelInvalidError, match="model version 5 was pruned by the checkpoint"):
                registry.load_checkpoint(session, 5)
            # keep_last 1 prunes 7 too (no longer among the newest), never the active 8.
            assert retention.prune_checkpoints(session, 1) == [7]
    finally:
        engine.dispose()


def test_online_saves_prune_and_a_pruned_version_cannot_be_activated(trained: Settings) -> None:
    settings = trained.model_copy(update={"keep_versions": 2})
    with TestClient(create_app(settings)) as client:
        trainer = client.app.state.service.trainer
        wait_for(lambda: trainer.base_version == 1)

        def save() -> int:
            response = client.post("/admin/save", headers=admin_headers())
            assert response.status_code == 201, response.text
            return response.json()["version"]

        assert [save() for _ in range(4)] == [2, 3, 4, 5]  # each an online save, activated on save
        models = {m["version"]: m for m in client.get("/admin/models", headers=admin_headers()).json()}
        # Kept: 1 (the pretrain job's), 4 and 5 (the newest two; 5 active). Pruned: 2 and 3.
        assert {v for v, m in models.items() if m["pruned"]} == {2, 3}
        response = client.post("/admin/models/2/activate", headers=admin_headers())
        assert response.status_code == 409
        [detail] = response.json()["detail"]
        assert detail["field"] == "version" and detail["type"] == "ModelInvalidError"
        assert detail["msg"] == (
            "model version 2 was pruned by the checkpoint retention rule (DQFD_KEEP_VERSIONS): its "
            "checkpoint is deleted, its history kept"
        )
        assert client.post("/act", json={"state": STATE}).json()["model_version"] == 5  # unchanged
        # A rollback to the pretrained version 1 is kept for good (activated by hand now, too).
        assert client.post("/admin/models/1/activate", headers=admin_headers()).status_code == 200
        assert client.post("/act", json={"state": STATE}).json()["model_version"] == 1
        wait_for(lambda: trainer.base_version == 1)
        assert save() == 6  # continues from 1: kept 1 (active before, by hand), 5 and 6 (the newest)
        models = {m["version"]: m for m in client.get("/admin/models", headers=admin_headers()).json()}
        assert {v for v, m in models.items() if m["pruned"]} == {2, 3, 4}
        assert models[6]["is_active"] and models[6]["parent_version"] == 1


def test_versions_a_queued_evaluation_names_keep_their_checkpoints(seeded: Settings) -> None:
    checkpoint = agents.agent_to_bytes(agents.new_agent(seeded, N_ITEMS, STATE_DIM))
    engine = make_engine(seeded.database_url)
    try:
        sessions = make_session_factory(engine)
        with session_scope(sessions) as session:
            for _ in range(5):  # online saves 1..5, each activated on save; 5 active
                save_version_in(session, checkpoint, source="online", activate=True)
            waiting = jobs.enqueue_job(session, EVALUATE_KIND, {"version": 2, "baseline": 3})
            running = jobs.enqueue_job(session, EVALUATE_KIND, {"version": 1, "baseline": None})
            running.status = "running"
            done = jobs.enqueue_job(session, EVALUATE_KIND, {"version": 4, "baseline": None})
            done.status = "succeeded"  # a finished job holds nothing back
            other = jobs.enqueue_job(session, "retrain", {"version": 4})  # not an evaluation
            assert other.status == "queued"
        with session_scope(sessions) as session:
            assert retention.versions_awaited_by_jobs(session) == {1, 2, 3}
            # keep_last 1: 5 (newest, active) plus what the two unfinished evaluations read.
            assert retention.prune_checkpoints(session, 1) == [4]
            session.get(TrainingJob, waiting.id).status = "failed"
        with session_scope(sessions) as session:
            assert retention.prune_checkpoints(session, 1) == [2, 3]  # released when the job ended
    finally:
        engine.dispose()


def test_evaluating_a_pruned_version_is_a_409_naming_the_field(trained: Settings) -> None:
    settings = trained.model_copy(update={"keep_versions": 1})
    with TestClient(create_app(settings)) as client:
        trainer = client.app.state.service.trainer
        wait_for(lambda: trainer.base_version == 1)
        for expected in (2, 3):
            response = client.post("/admin/save", headers=admin_headers())
            assert response.status_code == 201 and response.json()["version"] == expected
        models = {m["version"]: m for m in client.get("/admin/models", headers=admin_headers()).json()}
        assert {v for v, m in models.items() if m["pruned"]} == {2}  # 1 the pretrain job's, 3 active
        for body, field in (({"version": 2}, "version"), ({"version": 3, "baseline": 2}, "baseline")):
            response = client.post("/admin/evaluate", json=body, headers=admin_headers())
            assert response.status_code == 409, response.text
            [detail] = response.json()["detail"]
            assert detail["field"] == field and detail["type"] == "ModelInvalidError"
            assert detail["msg"].startswith("model version 2 was pruned by the checkpoint retention rule")
        assert client.post("/admin/evaluate", json={"version": 1}, headers=admin_headers()).status_code == 202
