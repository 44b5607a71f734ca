"""Off-policy estimates for the apprentice and shadow reports (``GET /admin/apprentice``, ``/admin/shadow``).

Apprentice mode: the incumbent served, so its value is the mean reward of the apprentice decisions
(on-policy, no estimate needed); the model's is estimated by self-normalised IPS with weights
π_model(served | state) / μ_incumbent(served | state). That needs the incumbent's propensity, which only
the client knows (``baseline_propensity`` on ``/act``): decisions without it are left out, and with none
the report says so instead of an estimate. Shadow mode: the shadow's value is estimated the same way on the
decisions it was scored on, with the logged (served) propensity as μ.

SNIPS, not IPS, as the headline: it stays within the rewards' range and its variance is lower at the
small samples a report sees early on (docs/off_policy_evaluation.md); IPS is given beside it. The
interval is the agent library's percentile bootstrap, resampling whole sessions. One-step values only:
what the policy earns on the next reward, not the long-term return.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.off_policy import ips, snips

# Resamples of the report's bootstrap: a report is read by people, not by the gate, and must answer fast.
REPORT_BOOTSTRAP = 500


def estimate(rows: list[tuple[float, float, float, str | None]], min_ess: float) -> dict[str, Any]:
    """The logging policy's mean reward and the target's SNIPS / IPS estimates of ``rows`` = (reward,
    logging propensity, target probability, session id); ``value`` None with a ``reason`` when empty."""
    if not rows:
        return {"n": 0, "value": None, "reason": "no decisions with a propensity and a final reward yet"}
    rewards, logged, target, sessions = columns(rows)
    keywords = {"clusters": sessions, "n_bootstrap": REPORT_BOOTSTRAP, "min_ess": min_ess}
    headline = snips(rewards, logged, target, **keywords)
    plain = ips(rewards, logged, target, **keywords)
    return {
        "n": len(rows),
        "logged_value": float(rewards.mean()),
        "estimator": "snips",
        "value": _finite(headline.value),
        "interval": [_finite(headline.interval.lower), _finite(headline.interval.upper)],
        "ips": _finite(plain.value),
        "ess": _finite(headline.ess),
        "warnings": list(headline.support.warnings),
    }


def columns(
    rows: list[tuple[float, float, float, str | None]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``rows`` = (reward, logging propensity, target probability, session id) as four arrays; a decision
    without a session is a session of its own (``#<row>``) when sessions are resampled."""
    rewards = np.array([r[0] for r in rows], dtype=np.float64)
    logged = np.array([r[1] for r in rows], dtype=np.float64)
    target = np.array([r[2] for r in rows], dtype=np.float64)
    sessions = np.array([r[3] if r[3] is not None else f"#{i}" for i, r in enumerate(rows)])
    return rewards, logged, target, sessions


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined number (e.g. SNIPS with every weight 0) is null."""
    return float(value) if np.isfinite(value) else None
