"""The promotion gate switching apprentice mode off, on SQLite and PostgreSQL, on a hand-computed log.

The log: 20 sessions, each of two apprentice decisions with the incumbent's propensity 0.5. The model
(greedy) gives probability 1 to the first served item and 0 to the second, so the weights π/μ are 2 and 0.

=====  ======  ====  ====  ============================  =================================
log    reward  w=2   w=0   model SNIPS Σwr/Σw            incumbent's mean reward
=====  ======  ====  ====  ============================  =================================
good   1, 0    r=1   r=0   (20·2·1) / (20·2) = 1         20 / 40 = 0.5 → gain +0.5
bad    0, 1    r=0   r=1   0 / 40 = 0                    0.5 → gain −0.5
=====  ======  ====  ====  ============================  =================================

Every session is the same, so every resample of sessions gives the same gain: the interval is
[gain, gain]. ESS = (Σw)² / Σw² = 40² / (20·4) = 20.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from service.api.app import create_app
from service.learning.apprentice_gate import ApprenticeGate, check, paired_difference
from service.settings import Settings
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.features import encode_state
from service.store.models import Decision, LiveTransition, utcnow
from service.store.modes import read_modes, set_apprentice
from tests.service.conftest import STATE, admin_headers, wait_for

GATE = {
    "mode": "apprentice",
    "promotion_gate": "on",
    "promotion_min_decisions": 40,
    "promotion_min_ess": 10.0,
    "evaluation_bootstrap": 200,
    "apprentice_check_s": 0.0,
}
GOOD = "model SNIPS 1 vs incumbent 0.5: gain 0.5, 95% interval [0.5, 0.5] on 40 decisions (ESS 20)"
BAD = "model SNIPS 0 vs incumbent 0.5: gain -0.5, 95% interval [-0.5, -0.5] on 40 decisions (ESS 20)"


def _rows(good: bool, sessions: int = 20) -> list[tuple[float, float, float, str]]:
    first, second = (1.0, 0.0) if good else (0.0, 1.0)
    return [row for s in range(sessions) for row in ((first, 0.5, 1.0, f"s{s}"), (second, 0.5, 0.0, f"s{s}"))]


def _insert(settings: Settings, rows: list[tuple[float, float, float, str]]) -> None:
    """Apprentice decisions with the incumbent's propensity and their built (demonstration) transitions."""
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            for i, (reward, baseline_propensity, model_propensity, session_id) in enumerate(rows):
                event = uuid.uuid4().hex
                action = 0 if model_propensity else 1
                conn.execute(
                    insert(Decision).values(
                        event_id=event,
                        session_id=session_id,
                        step=i,
                        state=encode_state(STATE),
                        ranking=[],
                        item_id=f"item-{action}",
                        action_index=action,
                        propensity=baseline_propensity,
                        model_version=1,
                        created_at=utcnow(),
                        transition_built=True,
                        baseline_item_id=f"item-{action}",
                        baseline_propensity=baseline_propensity,
                        apprentice=True,
                        model_item_id="item-0",
                        model_propensity=model_propensity,
                    )
                )
                conn.execute(
                    insert(LiveTransition).values(
                        event_id=event,
                        state=encode_state(STATE),
                        action_index=action,
                        reward=reward,
                        done=True,
                        demonstration=True,
                    )
                )
    finally:
        engine.dispose()


def _check(settings: Settings) -> tuple[dict[str, Any] | None, bool | None]:
    """Run the gate's check once; returns its verdict and the stored switch after it."""
    engine = make_engine(settings.database_url)
    try:
        sessions = make_session_factory(engine)
        with session_scope(sessions) as session:
            result = check(session, settings)
        with sessions() as session:
            return result, read_modes(session).apprentice
    finally:
        engine.dispose()


def test_paired_difference_is_hand_computed() -> None:
    assert paired_difference(_rows(True), 200) == (1.0, 0.5, 0.5, 0.5, 0.5)
    assert paired_difference(_rows(False), 200) == (0.0, 0.5, -0.5, -0.5, -0.5)
    # Sessions that differ: the interval widens around the point, which stays Σwr/Σw − mean(r).
    rows = [*_rows(True, 10), (1.0, 0.25, 1.0, "x"), (0.0, 0.5, 0.5, "y")]
    model, logged, diff, lower, upper = paired_difference(rows, 500)
    assert model == pytest.approx((20 + 4) / (20 + 4 + 1)) and logged == pytest.approx(11 / 22)
    assert diff == pytest.approx(model - logged) and lower < diff < upper


def test_the_gate_switches_apprentice_mode_off_and_says_why(settings_factory: Any) -> None:
    settings = settings_factory(**GATE)
    _insert(settings, _rows(True))
    with TestClient(create_app(settings)) as client:

        def switched() -> dict[str, Any] | None:
            out = client.get("/admin/apprentice", headers=admin_headers()).json()
            return out if out["enabled"] is False else None

        out = wait_for(switched)  # the trainer's check, then this replica's next model poll
        assert out["switch"] is False and out["mode_setting"] == "apprentice"
        assert out["reason"].startswith(f"gate: {GOOD}: the lower end is above the margin 0 (")
        gate = out["gate"]
        assert gate["switch"] is True and gate["n"] == 40 and gate["ess"] == pytest.approx(20.0)
        assert (gate["model_value"], gate["incumbent_value"], gate["diff"]) == (1.0, 0.5, 0.5)
        assert gate["diff_interval"] == [0.5, 0.5]
        # The report's own estimate agrees with the gate's numbers.
        assert out["model_vs_incumbent"]["value"] == 1.0 and out["model_vs_incumbent"]["logged_value"] == 0.5


def test_no_evidence_of_a_better_model_leaves_it_on_with_the_reason(settings_factory: Any) -> None:
    settings = settings_factory(**GATE)
    _insert(settings, _rows(False))
    with TestClient(create_app(settings)) as client:
        out = wait_for(
            lambda: (r := client.get("/admin/apprentice", headers=admin_headers()).json())["gate"] and r
        )
        assert out["enabled"] is True and out["switch"] is None and out["reason"] is None
        assert out["gate"]["switch"] is False
        assert (
            out["gate"]["reason"] == f"{BAD}: the lower end is not above the margin 0 (DQFD_PROMOTION_MARGIN)"
        )


def test_the_rule_needs_decisions_ess_and_a_lower_end_above_the_margin(settings_factory: Any) -> None:
    _insert(settings_factory(), _rows(True))
    few, switch = _check(settings_factory(**{**GATE, "promotion_min_decisions": 41}))
    assert switch is None and few is not None and few["switch"] is False
    assert few["reason"].startswith("only 40 apprentice decision(s)") and "=41" in few["reason"]
    thin, switch = _check(settings_factory(**{**GATE, "promotion_min_ess": 20.5}))
    assert switch is None and thin is not None and thin["reason"].startswith("effective sample size 20.0")
    # The lower end must be strictly above the margin: 0.5 is not above 0.5.
    held, switch = _check(settings_factory(**{**GATE, "promotion_margin": 0.5}))
    assert (
        switch is None
        and held is not None
        and held["reason"].endswith("not above the margin 0.5 (DQFD_PROMOTION_MARGIN)")
    )
    passed, switch = _check(settings_factory(**{**GATE, "promotion_margin": 0.49}))
    assert switch is False and passed is not None and passed["switch"] is True


def test_gate_off_or_apprentice_off_changes_nothing(settings_factory: Any) -> None:
    _insert(settings_factory(), _rows(True))
    assert _check(settings_factory(**{**GATE, "promotion_gate": "off"})) == (None, None)
    assert _check(settings_factory(**{**GATE, "mode": "normal"})) == (None, None)  # not in apprentice mode
    # An admin's switch on (over DQFD_MODE=normal) is judged; once off, the gate leaves it alone.
    settings = settings_factory(**{**GATE, "mode": "normal"})
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            set_apprentice(session, True, "admin")
    finally:
        engine.dispose()
    verdict, switch = _check(settings)
    assert verdict is not None and verdict["switch"] is True and switch is False
    assert _check(settings) == (None, False)


def test_the_trainer_checks_at_most_every_interval(settings_factory: Any) -> None:
    settings = settings_factory(**{**GATE, "apprentice_check_s": 3600.0, "promotion_min_decisions": 41})
    _insert(settings, _rows(True))
    engine = make_engine(settings.database_url)
    try:
        gate = ApprenticeGate(settings, make_session_factory(engine))
        first = gate.maybe_check()
        assert first is not None and first["reason"].startswith("only 40")
        assert gate.maybe_check() is None  # not due for an hour
    finally:
        engine.dispose()
