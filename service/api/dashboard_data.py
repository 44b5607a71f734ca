"""The dashboard's numbers in one JSON-able dict: the page's charts and the ``report`` command's plots.

Columns per chart (what uPlot draws): one value per time bucket, ``None`` for a bucket without data (a
gap, not a zero). The database parts come from :mod:`service.store.timeseries`; the trainer's update
rate and losses from its in-memory history (:mod:`service.learning.history`) when the trainer runs in
this process, else ``None``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from service.learning.history import TrainingHistory
from service.store import evaluations, registry
from service.store.models import ModelEvaluation
from service.store.timeseries import (
    Window,
    catalogue_coverage,
    decision_series,
    finite_or_none,
    logged_baseline,
    ratio,
    session_series,
)

LOSS_KEYS = ("loss", "j_dq", "j_n", "j_e", "j_l2")
"""The agent's loss components (its report also has diagnostics such as ``mean_q``, not charted)."""


def off_policy_estimate(row: ModelEvaluation | None) -> str | None:
    """The models table's off-policy column: a version's latest DR estimate with its 95% interval, and
    the paired gain over its baseline when it was compared (None: never evaluated)."""
    if row is None or row.value is None:
        return None
    text = f"{row.value:.4g} [{row.lower:.4g}, {row.upper:.4g}] {row.estimator.upper()}, n={row.n_decisions}"
    if row.diff_value is not None and row.diff_lower is not None and row.diff_upper is not None:
        gain = f"{row.diff_value:+.3g} [{row.diff_lower:+.3g}, {row.diff_upper:+.3g}]"
        text += f"; vs v{row.baseline_version}: {gain}"
    return text


def _per_version(rows: list[dict[str, Any]], buckets: int, value: str, count: str) -> dict[str, list[Any]]:
    """``{version: [sum(value) / sum(count) per bucket]}`` from (bucket, version) rows."""
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0] * buckets)
    counts: dict[int, list[int]] = defaultdict(lambda: [0] * buckets)
    for row in rows:
        sums[row["model_version"]][row["bucket"]] += row[value]
        counts[row["model_version"]][row["bucket"]] += row[count]
    return {str(v): [ratio(s, n) for s, n in zip(sums[v], counts[v], strict=True)] for v in sorted(counts)}


def _totals(decisions: list[dict[str, Any]], sessions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per version over the whole window: decisions, explored, rewarded, mean reward, sessions and their
    mean return."""
    out: dict[str, dict[str, Any]] = {}
    for row in decisions:
        t = out.setdefault(str(row["model_version"]), defaultdict(float))
        for key in ("decisions", "explored", "rewarded", "reward_sum"):
            t[key] += row[key]
    for row in sessions:
        t = out.setdefault(str(row["model_version"]), defaultdict(float))
        t["sessions"] += row["sessions"]
        t["return_sum"] += row["return_sum"]
    return {
        v: {
            "decisions": int(t["decisions"]),
            "explored": int(t["explored"]),
            "rewarded": int(t["rewarded"]),
            "reward_per_decision": ratio(t["reward_sum"], t["rewarded"]),
            "sessions": int(t["sessions"]),
            "return_per_session": ratio(t["return_sum"], t["sessions"]),
        }
        for v, t in sorted(out.items(), key=lambda item: int(item[0]))
    }


def _trainer(history: TrainingHistory | None, window: Window) -> dict[str, Any] | None:
    if history is None:
        return None
    series = history.series(since=window.since.timestamp())
    series["updates_per_s"] = [finite_or_none(v) for v in series["updates_per_s"]]
    series["losses"] = {
        k: [finite_or_none(v) for v in vs] for k, vs in series["losses"].items() if k in LOSS_KEYS
    }
    return series


def _models(session: Session) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    activations = registry.list_activations(session)
    versions = registry.list_versions(session)[:100]
    latest = evaluations.latest_evaluations(session, [m.version for m in versions])
    by_version: dict[int, list[str]] = defaultdict(list)
    for a in activations:
        by_version[a.version].append(a.activated_at.isoformat())
    models = [
        {
            "version": m.version,
            "source": m.source,
            "created_at": m.created_at.isoformat(),
            "parent_version": m.parent_version,
            "n_updates": int(m.n_updates),
            "is_active": bool(m.is_active),
            "activated_at": m.activated_at.isoformat() if m.activated_at else None,
            "activations": len(by_version[m.version]),
            "off_policy_estimate": off_policy_estimate(latest.get(m.version)),
        }
        for m in versions
    ]
    history = [
        {"version": a.version, "activated_at": a.activated_at.isoformat(), "reason": a.reason}
        for a in activations
    ]
    # The promotion gate's refusals belong to the same history: a version it held back was not activated.
    held = [p for p in evaluations.list_promotion_decisions(session) if not p.passed]
    history += [
        {"version": p.version, "activated_at": p.decided_at.isoformat(), "reason": f"held: {p.reason}"}
        for p in held
    ]
    history.sort(key=lambda h: h["activated_at"], reverse=True)
    return models, history


def dashboard_data(
    session: Session,
    window: Window,
    now: datetime,
    history: TrainingHistory | None = None,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the dashboard shows for ``window`` (``baseline``: a cached :func:`logged_baseline`)."""
    decisions = decision_series(session, window)
    sessions = session_series(session, window)
    n = window.buckets
    served, explored = [0] * n, [0] * n
    for row in decisions:
        served[row["bucket"]] += row["decisions"]
        explored[row["bucket"]] += row["explored"]
    models, activations = _models(session)
    return {
        "generated_at": now.isoformat(),
        "window": {
            "since": window.since.isoformat(),
            "until": window.until.isoformat(),
            "buckets": n,
            "bucket_s": window.bucket_s,
            "bucket_starts": [start.timestamp() for start in window.starts()],
        },
        "baseline": baseline if baseline is not None else logged_baseline(session),
        "reward_per_decision": _per_version(decisions, n, "reward_sum", "rewarded"),
        "return_per_session": _per_version(sessions, n, "return_sum", "sessions"),
        "decisions": served,
        "decisions_per_s": [count / window.bucket_s for count in served],
        "exploration_share": [ratio(e, d) for e, d in zip(explored, served, strict=True)],
        "per_version": _totals(decisions, sessions),
        "trainer": _trainer(history, window),
        "models": models,
        "activations": activations,
        "coverage": catalogue_coverage(session, now),
    }
