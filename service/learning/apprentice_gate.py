"""The promotion gate on apprentice mode: with ``DQFD_PROMOTION_GATE=on`` it switches apprentice mode off
(serving passes from the incumbent to the model) once the model is estimated to be better.

**When.** The trainer checks on its online loop, at most every ``DQFD_APPRENTICE_CHECK_S`` seconds.
Not on the request path (the estimate reads up to ``GATE_MAX_DECISIONS`` rows and bootstraps them), and
not only after an online save: the evidence is about the decisions logged while the incumbent served,
which grows with traffic whether or not a save comes (saves need ``DQFD_SAVE_EVERY_UPDATES`` updates),
and there is exactly one trainer per deployment, so one writer of the switch.

**The rule** (the same thresholds as the gate on new versions). On the newest apprentice decisions with
the incumbent's ``baseline_propensity`` and a final reward (those of ``GET /admin/apprentice``), let
``w_i = π_model(served_i | x_i) / μ_incumbent(served_i | x_i)``. The statistic is the paired difference
on the same decisions ``D = Σ w_i r_i / Σ w_i − (1/n) Σ r_i``: the model's SNIPS value (the report's
headline) minus the incumbent's logged (on-policy) mean. Its 95% interval is the percentile bootstrap
of D, both terms recomputed on the same resample of whole sessions (``DQFD_EVALUATION_BOOTSTRAP``
resamples, seed 0). Apprentice mode is switched off when there are at least
``DQFD_PROMOTION_MIN_DECISIONS`` such decisions, the weights' effective sample size is at least
``DQFD_PROMOTION_MIN_ESS``, and the interval's lower end is above ``DQFD_PROMOTION_MARGIN`` (strictly).
The last verdict, either way, is stored (``service_meta`` key ``apprentice_gate``) and shown in
``GET /admin/apprentice``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from agent.off_policy import bootstrap_means, effective_sample_size
from service.learning import mode_value, promotion
from service.settings import Settings
from service.store import mode_stats
from service.store.db import session_scope
from service.store.models import ServiceMeta, utcnow
from service.store.modes import read_modes, set_apprentice

log = logging.getLogger(__name__)

VERDICT_KEY = "apprentice_gate"
# The newest decisions read: the report's window (routes_modes.REPORT_MAX_DECISIONS), so both see the
# same decisions; ~100 bytes each.
GATE_MAX_DECISIONS = 20_000


def paired_difference(
    rows: list[tuple[float, float, float, str | None]], n_resamples: int, seed: int = 0
) -> tuple[float, float, float, float, float]:
    """(model SNIPS value, incumbent's mean reward, D, D's 95% lower end, upper end) of ``rows`` =
    (reward, incumbent propensity, model probability, session id); the interval resamples sessions."""
    reward, incumbent, model_prob, ids = mode_value.columns(rows)
    weight = model_prob / incumbent
    _, cluster = np.unique(ids, return_inverse=True)
    wr, w, r, n = (
        np.bincount(cluster, weights=v) for v in (weight * reward, weight, reward, np.ones_like(reward))
    )
    # Both terms on the same resamples of sessions: the same seed draws the same indices for each.
    diffs = bootstrap_means(wr, w, n_resamples, seed) - bootstrap_means(r, n, n_resamples, seed)
    finite = diffs[np.isfinite(diffs)]
    lower, upper = np.percentile(finite, [2.5, 97.5]) if finite.size else (np.nan, np.nan)
    model = float(wr.sum() / w.sum()) if w.sum() > 0 else float("nan")
    logged = float(r.sum() / n.sum())
    return model, logged, model - logged, float(lower), float(upper)


def verdict(settings: Settings, rows: list[tuple[float, float, float, str | None]]) -> dict[str, Any]:
    """The gate's rule (the module's docstring) on ``rows``: ``switch`` and the ``reason`` with numbers."""
    n, need = len(rows), settings.promotion_min_decisions
    out: dict[str, Any] = {"switch": False, "n": n}
    if n < need:
        out["reason"] = (
            f"only {n} apprentice decision(s) with baseline_propensity and a final reward; the gate "
            f"needs DQFD_PROMOTION_MIN_DECISIONS={need}"
        )
        return out
    _, incumbent, model_prob, _ = mode_value.columns(rows)
    ess = effective_sample_size(model_prob / incumbent)
    out["ess"] = ess
    if ess < settings.promotion_min_ess:
        out["reason"] = (
            f"effective sample size {ess:.1f} of the model's weights on {n} decisions is below "
            f"DQFD_PROMOTION_MIN_ESS={settings.promotion_min_ess:g}: the incumbent rarely served the "
            "model's choices"
        )
        return out
    model, logged, diff, lower, upper = paired_difference(rows, settings.evaluation_bootstrap)
    finite = [None if not np.isfinite(v) else v for v in (model, logged, diff, lower, upper)]
    out.update(zip(("model_value", "incumbent_value", "diff"), finite[:3], strict=True))
    out["diff_interval"] = finite[3:]  # JSON has no NaN: an undefined number is null
    margin = settings.promotion_margin
    numbers = (
        f"model SNIPS {model:.4g} vs incumbent {logged:.4g}: gain {diff:.4g}, 95% interval "
        f"[{lower:.4g}, {upper:.4g}] on {n} decisions (ESS {ess:.0f})"
    )
    if np.isfinite(lower) and lower > margin:
        out.update(switch=True, reason=f"{numbers}: the lower end is above the margin {margin:g}")
    else:
        out["reason"] = f"{numbers}: the lower end is not above the margin {margin:g} (DQFD_PROMOTION_MARGIN)"
    return out


def check(session: Session, settings: Settings) -> dict[str, Any] | None:
    """With the gate on and apprentice mode on: judge, switch apprentice mode off when the rule holds,
    store the verdict (the caller commits) and return it; None (nothing done) otherwise."""
    if not promotion.enabled(settings):
        return None
    stored = read_modes(session).apprentice
    if not (settings.mode == "apprentice" if stored is None else stored):
        return None
    result = verdict(settings, mode_stats.apprentice_rows(session, GATE_MAX_DECISIONS))
    if result["switch"]:
        set_apprentice(session, False, f"gate: {result['reason']}")
        log.info("the promotion gate switched apprentice mode off: %s", result["reason"])
    result["checked_at"] = utcnow().isoformat(timespec="seconds")
    row = session.get(ServiceMeta, VERDICT_KEY)
    value = json.dumps(result)
    if row is None:
        session.add(ServiceMeta(key=VERDICT_KEY, value=value))
    else:
        row.value = value
    return result


def last_verdict(session: Session) -> dict[str, Any] | None:
    """The gate's last verdict on apprentice mode (None: it never judged)."""
    row = session.get(ServiceMeta, VERDICT_KEY)
    return None if row is None else json.loads(row.value)


class ApprenticeGate:
    """Runs :func:`check` from the trainer's online loop, at most every ``DQFD_APPRENTICE_CHECK_S``."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._last: float | None = None

    def maybe_check(self) -> dict[str, Any] | None:
        """Check when due (the first call always is); returns the verdict, None when not judged."""
        now = time.monotonic()
        if self._last is not None and now - self._last < self.settings.apprentice_check_s:
            return None
        self._last = now
        with session_scope(self.sessions) as session:
            return check(session, self.settings)
