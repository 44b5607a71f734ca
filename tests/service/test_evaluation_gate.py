"""Off-policy evaluation of stored versions (``POST /admin/evaluate``) and the promotion gate, through the
app on both databases, on a tiny hand-computable log.

Two versions with fixed weights (every weight 0, the head's bias set: Q = the advantages minus their mean,
whatever the state): the *incumbent* serves item 0 greedily, the *candidate* item 1. Under ε-greedy with
ε = 0.5 over 5 items each gives its greedy item 0.5/5 + 0.5 = 0.6 and every other item 0.1.

The log (4 served decisions, two sessions, rewards by feedback or by a closed window):

====  =======  ====  ==========  ======  =================  =================
      session  item  propensity  reward  w (candidate)      w (incumbent)
====  =======  ====  ==========  ======  =================  =================
d1    a        1     0.6         1       0.6/0.6 = 1        0.1/0.6 = 1/6
d2    a        0     0.6         0       0.1/0.6 = 1/6      0.6/0.6 = 1
d3    b        1     0.1         1       0.6/0.1 = 6        0.1/0.1 = 1
d4    b        2     0.1         0       0.1/0.1 = 1        0.1/0.1 = 1
====  =======  ====  ==========  ======  =================  =================

- IPS(candidate) = (1·1 + 0 + 6·1 + 0) / 4 = 1.75; SNIPS = 7 / (1 + 1/6 + 6 + 1) = 6/7.
- The DR reward model is the per-item mean: item 0 → 0, item 1 → 1, item 2 → 0, items 3 and 4 (never
  served) → the overall mean 0.5. It fits every logged reward, so DR is the direct part alone:
  candidate 0.6·1 + 0.1·(0 + 0 + 0.5 + 0.5) = 0.7; incumbent 0.1·1 + 0.1·1 = 0.2 (item 0 is worth 0).
- The paired difference is 0.5 on every decision, so its bootstrap interval is [0.5, 0.5].
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from service.api.app import create_app
from service.ingest.catalogue import import_items
from service.ingest.synthetic import make_items
from service.learning import agents
from service.settings import Settings
from service.store import registry
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.evaluations import latest_promotion_decisions as evaluations_by_version
from service.store.features import encode_state
from service.store.models import Decision, Feedback, LoggedInteraction, ModelActivation, utcnow
from tests.service.conftest import (
    N_ITEMS,
    STATE,
    STATE_DIM,
    admin_headers,
    save_version_in,
    seed_database,
    wait_for,
)

INCUMBENT = (1.0, 0.0, 0.0, 0.0, 0.0)  # advantages: item 0 is greedy
CANDIDATE = (0.0, 1.0, 0.0, 0.0, 0.0)  # item 1 is greedy
LOG = [("a", 1, 0.6, 1.0), ("a", 0, 0.6, 0.0), ("b", 1, 0.1, 1.0), ("b", 2, 0.1, 0.0)]
GATE = {
    "epsilon": 0.5,
    "promotion_min_decisions": 4,
    "promotion_min_ess": 1.0,
    "evaluation_bootstrap": 200,
}


def _fixed(settings: Settings, advantages: tuple[float, ...]) -> Any:
    """A fresh agent whose Q-values are ``advantages`` minus their mean in every state."""
    agent = agents.new_agent(settings, N_ITEMS, STATE_DIM)
    with torch.no_grad():
        agent.online.head.weight.zero_()
        agent.online.head.bias.copy_(torch.tensor([0.0, *advantages]))
    return agent


def _setup(settings: Settings, with_candidate: bool = True) -> tuple[int, int | None]:
    """Items, the incumbent (active) and maybe the candidate (stored), and the log above: 4 decisions
    an hour old, not learned from (``learn`` false), with feedback for the rewards of 1 and a closed
    window (the default reward 0) for the others."""
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            import_items(session, make_items(N_ITEMS))

            def save(advantages: tuple[float, ...], activate: bool) -> int:
                checkpoint = agents.agent_to_bytes(_fixed(settings, advantages))
                return save_version_in(session, checkpoint, activate=activate)

            incumbent = save(INCUMBENT, True)
            candidate = save(CANDIDATE, False) if with_candidate else None
        _insert_log(engine, utcnow() - timedelta(hours=1))
    finally:
        engine.dispose()
    return incumbent, candidate


def _insert_log(engine: Any, when: Any, log: list[tuple[str, int, float, float]] = LOG) -> None:
    with engine.begin() as conn:
        for i, (session_id, action, propensity, reward) in enumerate(log):
            event = uuid.uuid4().hex
            conn.execute(
                insert(Decision).values(
                    event_id=event,
                    session_id=session_id,
                    step=i,
                    state=encode_state(STATE),
                    ranking=[],
                    item_id=f"item-{action}",
                    action_index=action,
                    propensity=propensity,
                    explored=propensity < 0.5,
                    model_version=1,
                    policy_revision=0,
                    created_at=when + timedelta(seconds=i),
                    transition_built=True,
                    learn=False,
                )
            )
            if reward:
                conn.execute(insert(Feedback).values(event_id=event, dedup_key=f"k{i}", reward=reward))


def _evaluate(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.post("/admin/evaluate", json=body, headers=admin_headers())
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    assert reply.json()["kind"] == "evaluate"

    def done() -> dict[str, Any] | None:
        job = client.get(f"/admin/jobs/{job_id}", headers=admin_headers()).json()
        return job if job["status"] in ("succeeded", "failed") else None

    job = wait_for(done, timeout=60)
    assert job["status"] == "succeeded", job["error"]
    return job


def _model(client: TestClient, version: int) -> dict[str, Any]:
    [model] = [
        m for m in client.get("/admin/models", headers=admin_headers()).json() if m["version"] == version
    ]
    return model


def test_evaluate_job_gives_the_hand_computed_estimates(settings_factory: Any) -> None:
    settings = settings_factory(**GATE)
    incumbent, candidate = _setup(settings)
    with TestClient(create_app(settings)) as client:
        job = _evaluate(client, {"version": candidate})
        assert job["progress"] == 1.0 and job["model_version"] == candidate
        metrics = job["metrics"]
        assert (metrics["n_decisions"], metrics["n_sessions"], metrics["baseline_version"]) == (
            4,
            2,
            incumbent,
        )
        assert metrics["value"] == pytest.approx(0.7) and metrics["diff_value"] == pytest.approx(0.5)
        evaluation = _model(client, candidate)["evaluation"]
        assert evaluation["purpose"] == "admin" and evaluation["job_id"] == job["id"]
        assert evaluation["estimator"] == "dr"
        estimates = evaluation["estimates"]
        assert estimates["ips"]["value"] == pytest.approx(1.75)
        assert estimates["snips"]["value"] == pytest.approx(6 / 7)
        assert estimates["dr"]["value"] == pytest.approx(0.7)
        # Every DR term is 0.7, every paired difference 0.5: the resampled means cannot move.
        assert (evaluation["lower"], evaluation["upper"]) == (pytest.approx(0.7), pytest.approx(0.7))
        assert (evaluation["diff_lower"], evaluation["diff_upper"]) == (
            pytest.approx(0.5),
            pytest.approx(0.5),
        )
        assert evaluation["baseline_value"] == pytest.approx(0.2)
        assert estimates["ips"]["lower"] <= 1.75 <= estimates["ips"]["upper"]
        # Kish's ESS of the candidate's weights (1, 1/6, 6, 1).
        assert evaluation["ess"] == pytest.approx((49 / 6) ** 2 / (1 + 1 / 36 + 36 + 1))
        assert evaluation["details"]["reward_model"].startswith("per-item mean reward")
        assert evaluation["details"]["target_policy"] == "epsilon-greedy on Q-values, epsilon 0.5"
        # The incumbent evaluated alone (it is the active version: no baseline).
        alone = _evaluate(client, {"version": incumbent})["metrics"]
        assert alone["value"] == pytest.approx(0.2) and alone["baseline_version"] is None
        listed = client.get(f"/admin/evaluations?version={candidate}", headers=admin_headers()).json()
        assert [(e["id"], e["purpose"]) for e in listed] == [(evaluation["id"], "admin")]
        # The dashboard's models table shows the latest estimate.
        data = client.get("/dashboard/data", headers=admin_headers()).json()
        [row] = [m for m in data["models"] if m["version"] == candidate]
        assert row["off_policy_estimate"] == "0.7 [0.7, 0.7] DR, n=4; vs v1: +0.5 [+0.5, +0.5]"


def test_evaluate_reads_the_range_and_imported_logs_with_propensities(settings_factory: Any) -> None:
    settings = settings_factory(**GATE)
    incumbent, candidate = _setup(settings)
    engine = make_engine(settings.database_url)
    earlier = utcnow() - timedelta(hours=3)
    try:
        _insert_log(engine, earlier, [("c", 3, 0.1, 1.0)])  # one more decision, two hours earlier
        with engine.begin() as conn:  # an imported row with a propensity (and one without: left out)
            for step, propensity in ((0, 0.6), (1, None)):
                conn.execute(
                    insert(LoggedInteraction).values(
                        session_id="imported",
                        step=step,
                        state=encode_state(STATE),
                        item_id="item-1",
                        reward=1.0,
                        done=step == 1,
                        propensity=propensity,
                        timestamp=earlier,
                    )
                )
    finally:
        engine.dispose()
    since = (earlier + timedelta(minutes=30)).isoformat()
    with TestClient(create_app(settings)) as client:
        assert _evaluate(client, {"version": candidate, "since": since})["metrics"]["n_decisions"] == 4
        everything = _evaluate(client, {"version": candidate})
        assert everything["metrics"]["n_decisions"] == 6  # 5 served + 1 imported
        details = _model(client, candidate)["evaluation"]["details"]
        assert (details["served_decisions"], details["imported_decisions"]) == (5, 1)
        # Bad input: a clear 4xx naming the field.
        for body, field in (
            ({"version": 999}, "version"),
            ({"version": candidate, "baseline": 999}, "baseline"),
            ({"version": "x"}, "version"),
            ({"version": candidate, "since": since, "until": since}, None),
            ({"version": candidate, "until": "2026-01-01T00:00:00"}, "until"),
        ):
            reply = client.post("/admin/evaluate", json=body, headers=admin_headers())
            assert reply.status_code in (404, 422), (body, reply.text)
            if field is not None:
                assert field in reply.text
        assert client.post("/admin/evaluate", json={"version": candidate}).status_code == 401
    assert incumbent == 1


def _set_weights(client: TestClient, advantages: tuple[float, ...]) -> None:
    """Give the trainer's online agent fixed weights (it learns nothing meanwhile: no live transitions)."""
    trainer = client.app.state.service.trainer
    wait_for(lambda: trainer.agent is not None)
    with torch.no_grad():
        trainer.agent.online.head.weight.zero_()
        trainer.agent.online.head.bias.copy_(torch.tensor([0.0, *advantages]))


def _activations(settings: Settings) -> list[tuple[int, str]]:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(ModelActivation.version, ModelActivation.reason).order_by(ModelActivation.id)
            )
            return [(int(v), str(r)) for v, r in rows]
    finally:
        engine.dispose()


@pytest.mark.parametrize("margin", [0.3, 0.6])
def test_gate_on_online_save(settings_factory: Any, margin: float) -> None:
    settings = settings_factory(**GATE, promotion_gate="on", promotion_margin=margin)
    incumbent, _ = _setup(settings, with_candidate=False)
    with TestClient(create_app(settings)) as client:
        trainer = client.app.state.service.trainer
        wait_for(lambda: trainer.base_version == incumbent)
        _set_weights(client, CANDIDATE)
        reply = client.post("/admin/save", headers=admin_headers())
        assert reply.status_code == 201, reply.text
        saved = reply.json()["version"]
        model = _model(client, saved)
        gate = model["gate"]
        assert gate["active_version"] == incumbent and gate["margin"] == margin
        assert model["evaluation"]["purpose"] == "gate" and model["evaluation"]["id"] == gate["evaluation_id"]
        assert model["evaluation"]["diff_lower"] == pytest.approx(0.5)
        if margin < 0.5:  # passes: activated as an online save, served at once
            assert gate["passed"] and model["is_active"]
            assert gate["reason"].endswith("the lower end is above the margin 0.3")
            assert _activations(settings)[-1] == (saved, "online")
            assert client.post("/act", json={"state": STATE}).json()["model_version"] == saved
            return
        assert not gate["passed"] and not model["is_active"]
        assert gate["reason"] == (
            f"DR value gain over version {incumbent}: 0.5, 95% interval [0.5, 0.5] on 4 decisions (ESS 2): "
            "the lower end is not above the margin 0.6 (DQFD_PROMOTION_MARGIN)"
        )
        assert _activations(settings) == [(incumbent, "manual")]  # _setup's activation only
        assert client.post("/act", json={"state": STATE}).json()["model_version"] == incumbent
        history = client.get("/dashboard/data", headers=admin_headers()).json()["activations"]
        assert history[0]["version"] == saved and history[0]["reason"] == f"held: {gate['reason']}"
        # The trainer keeps learning on its own line: it does not go back to the active version.
        polls = trainer.online_loop.history.updates_total
        for _ in range(5):
            trainer.sync_active_version()
        assert trainer.base_version == saved and trainer.online_loop.history.updates_total == polls
        # Manual activation overrides the gate and is logged as manual; the trainer continues from it.
        activated = client.post(f"/admin/models/{saved}/activate", headers=admin_headers())
        assert activated.status_code == 200 and activated.json()["is_active"]
        assert _activations(settings)[-1] == (saved, "manual")
        assert client.post("/act", json={"state": STATE}).json()["model_version"] == saved
        trainer.sync_active_version()
        assert trainer.base_version == saved


def test_gate_off_saves_and_activates_as_before(settings_factory: Any) -> None:
    settings = settings_factory(**GATE)  # promotion_gate defaults to off
    assert settings.promotion_gate == "off"
    incumbent, _ = _setup(settings, with_candidate=False)
    with TestClient(create_app(settings)) as client:
        trainer = client.app.state.service.trainer
        wait_for(lambda: trainer.base_version == incumbent)
        _set_weights(client, INCUMBENT[::-1])  # any weights: nothing judges them
        saved = client.post("/admin/save", headers=admin_headers()).json()
        assert saved["is_active"] and saved["gate"] is None and saved["evaluation"] is None
        assert _activations(settings)[-1] == (saved["version"], "online")
        assert client.get("/admin/promotions", headers=admin_headers()).json() == []


def test_gate_holds_a_retrain_with_too_few_decisions(settings_factory: Any) -> None:
    settings = settings_factory(promotion_gate="on", promotion_min_decisions=10**6)
    seed_database(settings.database_url)  # demonstrations: the synthetic logs carry propensities
    with TestClient(create_app(settings)) as client:
        first = wait_for(lambda: client.get("/readyz").json().get("model_version"), timeout=60)
        reply = client.post("/admin/retrain", json={"steps": 5, "activate": True}, headers=admin_headers())
        job_id = reply.json()["id"]
        job = wait_for(
            lambda: (
                (j := client.get(f"/admin/jobs/{job_id}", headers=admin_headers()).json())["status"]
                in ("succeeded", "failed")
                and j
            )
        )
        assert job["status"] == "succeeded", job["error"]
        version = job["model_version"]
        model = _model(client, version)
        n = model["evaluation"]["n_decisions"]
        assert n > 0 and model["evaluation"]["details"]["imported_decisions"] == n
        reason = (
            f"only {n} logged decision(s) with a known reward and propensity; the gate needs "
            "DQFD_PROMOTION_MIN_DECISIONS=1000000"
        )
        assert model["gate"]["reason"] == reason and not model["is_active"]
        assert job["metrics"]["gate"] == {"passed": False, "reason": reason}
        assert _activations(settings) == [(first, "pretrain")]
        promotions = client.get("/admin/promotions", headers=admin_headers()).json()
        assert [(p["version"], p["passed"]) for p in promotions] == [(version, False)]


def test_gate_passes_a_retrain_when_nothing_is_active(settings_factory: Any) -> None:
    settings = settings_factory(promotion_gate="on", auto_pretrain=False)
    seed_database(settings.database_url)
    with TestClient(create_app(settings)) as client:
        reply = client.post("/admin/retrain", json={"steps": 5, "activate": True}, headers=admin_headers())
        job_id = reply.json()["id"]
        job = wait_for(
            lambda: (
                (j := client.get(f"/admin/jobs/{job_id}", headers=admin_headers()).json())["status"]
                in ("succeeded", "failed")
                and j
            )
        )
        assert job["status"] == "succeeded", job["error"]
        version = job["model_version"]
        reason = "no other active version to compare with"
        assert job["metrics"]["gate"] == {"passed": True, "reason": reason}
        model = _model(client, version)
        assert model["is_active"] and model["gate"]["passed"] and model["evaluation"] is None
        assert _activations(settings) == [(version, "retrain")]
        trainer = client.app.state.service.trainer
        wait_for(lambda: trainer.base_version == version)  # the job's agent was handed to the online loop
        assert client.post("/act", json={"state": STATE}).json()["model_version"] == version


def test_gate_holds_the_save_made_as_the_trainer_stops(settings_factory: Any) -> None:
    settings = settings_factory(**GATE, promotion_gate="on")
    incumbent, _ = _setup(settings, with_candidate=False)
    with TestClient(create_app(settings)) as client:
        trainer = client.app.state.service.trainer
        wait_for(lambda: trainer.base_version == incumbent)
        for i in range(3):  # three live transitions, one online update each
            event = client.post("/act", json={"state": STATE, "session_id": f"t{i}"}).json()["event_id"]
            assert client.post("/feedback", json={"event_id": event, "reward": 1.0, "done": True}).is_success
        wait_for(lambda: trainer.online_loop.updates_since_save == 3)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            [(version, verdict)] = evaluations_by_version(session).items()
            assert version == incumbent + 1 and not verdict.passed
            assert verdict.reason == (
                "saved as the trainer stopped, not evaluated: POST /admin/evaluate, then activate it by hand"
            )
            assert registry.active_version_number(session) == incumbent
    finally:
        engine.dispose()
