"""Input bounds: what the learner or the database cannot take is a 422 naming the field, on both databases.

Strict JSON numbers (no numeric strings, no booleans), state values and rewards within the configured
magnitude (DQFD_MAX_ABS_STATE / DQFD_MAX_ABS_REWARD), ids without control characters, admin path ids
within an INTEGER column; responses carry time zones; a failed job says what failed without a traceback.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from tests.service.conftest import STATE, STATE_DIM, admin_headers, wait_for


def _refused(response: Any, field: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(d["field"] == field or d["field"].startswith(f"{field}.") for d in details), details
    return next(d for d in details if d["field"].split(".")[0] == field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"state": [3e38] * STATE_DIM}, "state"),  # finite float32, far past the bound
        ({"state": [1e39] * STATE_DIM}, "state"),  # past float32's range too
        ({"state": ["0.1"] * STATE_DIM}, "state"),  # numeric strings are not numbers
        ({"state": [True] * STATE_DIM}, "state"),  # nor are booleans
        ({"state": STATE, "k": True}, "k"),
        ({"state": STATE, "k": 2.0}, "k"),
        ({"state": STATE, "explore": "false"}, "explore"),
        ({"state": STATE, "session_id": "user\x00-42"}, "session_id"),
        ({"state": STATE, "session_id": "x" * 256}, "session_id"),
        ({"state": STATE, "candidates": ["item-1\n"]}, "candidates"),
        ({"state": STATE, "exclude": ["item-1\x7f"]}, "exclude"),
    ],
)
def test_act_refuses_out_of_bounds_input(trained: Settings, body: dict[str, Any], field: str) -> None:
    with TestClient(create_app(trained)) as client:
        detail = _refused(client.post("/act", json=body), field)
        assert client.get("/admin/stats", headers=admin_headers()).status_code == 200
    if field in ("session_id", "candidates", "exclude") and body.get("session_id") != "x" * 256:
        assert "control characters" in detail["msg"], detail
    if body["state"][0] in (3e38, 1e39):
        assert "DQFD_MAX_ABS_STATE" in detail["msg"] and "1e+06" in detail["msg"], detail


def test_act_accepts_state_at_the_bound_and_json_integers(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        at_bound = client.post("/act", json={"state": [1e6, -1e6, 0, 1], "session_id": "été-42"})
        assert at_bound.status_code == 200, at_bound.text
        just_past = client.post("/act", json={"state": [1e6, -1.000001e6, 0, 1]})
        assert "±1e+06" in _refused(just_past, "state")["msg"]


def test_the_state_bound_is_a_setting(trained: Settings) -> None:
    narrow = trained.model_copy(update={"max_abs_state": 0.3})
    with TestClient(create_app(narrow)) as client:
        assert client.post("/act", json={"state": [0.3, -0.3, 0.0, 0.1]}).status_code == 200
        detail = _refused(client.post("/act", json={"state": [0.31, 0.0, 0.0, 0.0]}), "state")
        assert "±0.3 (DQFD_MAX_ABS_STATE)" in detail["msg"] and "0.31" in detail["msg"]


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"reward": 1e308}, "reward"),
        ({"reward": 2e6}, "reward"),
        ({"reward": -2e6}, "reward"),
        ({"reward": "1.0"}, "reward"),
        ({"reward": True}, "reward"),
        ({"done": "true"}, "done"),
        ({"event_id": "\x00"}, "event_id"),
        ({"feedback_id": "a\x00b"}, "feedback_id"),
    ],
)
def test_feedback_refuses_out_of_bounds_input(trained: Settings, update: dict[str, Any], field: str) -> None:
    with TestClient(create_app(trained)) as client:
        event = client.post("/act", json={"state": STATE}).json()["event_id"]
        detail = _refused(client.post("/feedback", json={"event_id": event, "reward": 1.0} | update), field)
        if field in ("event_id", "feedback_id"):
            assert "control characters" in detail["msg"], detail
        if update.get("reward") == 2e6:
            assert "DQFD_MAX_ABS_REWARD" in detail["msg"] and "±1e+06" in detail["msg"], detail
        # Nothing was stored: the event still takes its first reward.
        stored = client.post("/feedback", json={"event_id": event, "reward": 1e6})
        assert stored.status_code == 200 and stored.json()["reward"] == 1e6, stored.text


def test_reward_bound_is_a_setting(trained: Settings) -> None:
    narrow = trained.model_copy(update={"max_abs_reward": 5.0})
    with TestClient(create_app(narrow)) as client:
        events = [client.post("/act", json={"state": STATE}).json()["event_id"] for _ in range(2)]
        assert (
            "±5 (DQFD_MAX_ABS_REWARD)"
            in _refused(client.post("/feedback", json={"event_id": events[0], "reward": 5.5}), "reward")[
                "msg"
            ]
        )
        assert client.post("/feedback", json={"event_id": events[1], "reward": -5}).status_code == 200


@pytest.mark.parametrize("big", ["0", "2147483648", "100000000000000000000", "-1"])
def test_admin_path_ids_past_an_integer_column_are_422(trained: Settings, big: str) -> None:
    with TestClient(create_app(trained)) as client:
        _refused(client.get(f"/admin/jobs/{big}", headers=admin_headers()), "job_id")
        _refused(client.post(f"/admin/models/{big}/activate", headers=admin_headers()), "version")
        # The largest id an INTEGER holds is merely unknown.
        assert client.get("/admin/jobs/2147483647", headers=admin_headers()).status_code == 404


def test_admin_item_id_refuses_control_characters(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        response = client.post(
            "/admin/items/item%00-1/active", params={"active": False}, headers=admin_headers()
        )
        assert "control characters" in _refused(response, "item_id")["msg"]


def _aware(moment: str | None) -> bool:
    return moment is None or moment.endswith(("+00:00", "Z"))


def test_datetimes_carry_their_time_zone(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        (job,) = client.get("/admin/jobs", headers=admin_headers()).json()
        (model,) = client.get("/admin/models", headers=admin_headers()).json()
        one = client.get(f"/admin/jobs/{job['id']}", headers=admin_headers()).json()
        activated = client.post("/admin/models/1/activate", headers=admin_headers()).json()
    for row, fields in (
        (job, ("created_at", "started_at", "finished_at")),
        (one, ("created_at", "started_at", "finished_at")),
        (model, ("created_at", "activated_at")),
        (activated, ("created_at", "activated_at")),
    ):
        assert row[fields[0]] is not None and row[fields[-1]] is not None, row
        assert all(_aware(row[f]) for f in fields), row


def test_a_failed_job_reports_one_line_without_a_traceback(settings: Settings) -> None:
    """An empty database (no catalogue, no demonstrations): the retrain fails, and says why in one line."""
    with TestClient(create_app(settings)) as client:
        job = client.post("/admin/retrain", headers=admin_headers(), json={"steps": 5}).json()
        done = wait_for(
            lambda: (
                (j := client.get(f"/admin/jobs/{job['id']}", headers=admin_headers()).json())["status"]
                in ("succeeded", "failed")
                and j
            )
        )
    assert done["status"] == "failed", done
    error = done["error"]
    assert error and "\n" not in error and "Traceback" not in error and 'File "' not in error, error
    assert error.split(":")[0].endswith("Error"), error  # the exception type, then its message
    assert _aware(done["finished_at"]), done
