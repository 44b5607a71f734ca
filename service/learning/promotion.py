"""The promotion gate (``DQFD_PROMOTION_GATE=on``): a retrain's or an online save's new version is
activated automatically only when it is estimated to be better than the active version.

**The rule.** Both versions are evaluated by DR on the same logged decisions
(:func:`service.learning.evaluation.evaluate`, the candidate's and the incumbent's serving policies under
this deployment's exploration settings). The candidate passes when

- at least ``DQFD_PROMOTION_MIN_DECISIONS`` decisions with a known reward were evaluated,
- the candidate's effective sample size is at least ``DQFD_PROMOTION_MIN_ESS``, and
- the lower end of the 95% session-bootstrap interval of the paired difference
  ``V̂_DR(candidate) − V̂_DR(active)`` is above ``DQFD_PROMOTION_MARGIN`` (strictly).

Otherwise the version is stored and not served, and the reason is recorded in ``promotion_decisions``
(``GET /admin/models`` shows it). With no active version there is nothing to compare with: the version
passes. Manual activation (``POST /admin/models/{v}/activate``) is never gated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from service.ingest.catalogue import load_catalogue
from service.learning.evaluation import ESTIMATORS, evaluate
from service.serving.feature_policy import FeatureModel, FeatureNetwork
from service.serving.policy_store import decode_checkpoint
from service.settings import Settings
from service.store import evaluations, registry
from service.store.db import session_scope
from service.store.models import ModelEvaluation, TrainingJob, utcnow

if TYPE_CHECKING:
    from service.learning.online import OnlineLoop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """The gate's answer on one version: ``passed``, why, and against which active version."""

    version: int
    passed: bool
    reason: str
    active_version: int | None


def enabled(settings: Settings) -> bool:
    """Whether automatic activations go through the gate."""
    return settings.promotion_gate == "on"


def store_evaluation(
    session: Session,
    settings: Settings,
    version: int,
    network: Any,
    baseline_version: int | None,
    purpose: str,
    since: Any = None,
    until: Any = None,
    job_id: int | None = None,
    progress: Any = None,
) -> ModelEvaluation:
    """Evaluate ``version`` (its Q-network ``network``) against ``baseline_version`` (loaded from the
    registry; None: alone) and store the result (committed by the caller)."""
    baseline = None
    if baseline_version is not None:
        baseline = decode_checkpoint(registry.load_checkpoint(session, baseline_version))
    network, baseline = comparable(session, network, baseline)
    # The gate reads DR alone: IPS and SNIPS would double its time on the trainer's thread.
    names = ("dr",) if purpose == "gate" else ESTIMATORS
    fields = evaluate(session, settings, network, baseline, since, until, progress or (lambda _: None), names)
    return evaluations.add_evaluation(
        session,
        version=version,
        purpose=purpose,
        job_id=job_id,
        baseline_version=baseline_version,
        **fields,
    )


def comparable(session: Session, network: Any, baseline: Any | None) -> tuple[Any, Any | None]:
    """The two decoded versions as Q-networks over the same items: a feature model (scored by item
    features) bound to the stored catalogue, cut to a fixed-head partner's items when paired with one
    (the actions both can take; evaluation scores a dense (decisions × items) block)."""
    pair = (network, baseline)
    if not any(isinstance(x, FeatureModel) for x in pair):
        return network, baseline
    catalogue = load_catalogue(session, attributes=True)
    fixed = [int(x.n_actions) for x in pair if x is not None and not isinstance(x, FeatureModel)]
    n = min(fixed, default=catalogue.n_actions)

    def bound(x: Any) -> Any:
        if not isinstance(x, FeatureModel):
            return x
        whole = x.bind(catalogue)
        if n >= whole.n_actions:
            return whole
        return FeatureNetwork(x, whole.scorer.with_features(whole.scorer.features[:n]))

    return bound(network), None if baseline is None else bound(baseline)


def rule(settings: Settings, row: ModelEvaluation) -> tuple[bool, str]:
    """Apply the gate's rule (the module's docstring) to a stored paired evaluation."""
    n, ess, margin = row.n_decisions, row.ess, settings.promotion_margin
    if n < settings.promotion_min_decisions:
        return False, (
            f"only {n} logged decision(s) with a known reward and propensity; the gate needs "
            f"DQFD_PROMOTION_MIN_DECISIONS={settings.promotion_min_decisions}"
        )
    if ess is None or ess < settings.promotion_min_ess:
        return False, (
            f"effective sample size {0.0 if ess is None else ess:.1f} is below DQFD_PROMOTION_MIN_ESS="
            f"{settings.promotion_min_ess:g}: the logs barely cover the candidate's choices"
        )
    if row.diff_lower is None or row.diff_value is None or row.diff_upper is None:
        return False, "the value difference could not be estimated (no finite interval)"
    interval = (
        f"DR value gain over version {row.baseline_version}: {row.diff_value:.4g}, 95% interval "
        f"[{row.diff_lower:.4g}, {row.diff_upper:.4g}] on {n} decisions (ESS {ess:.0f})"
    )
    if row.diff_lower > margin:
        return True, f"{interval}: the lower end is above the margin {margin:g}"
    return False, f"{interval}: the lower end is not above the margin {margin:g} (DQFD_PROMOTION_MARGIN)"


def judge(session: Session, settings: Settings, version: int, checkpoint: bytes) -> Verdict:
    """Evaluate a new (stored, inactive) version against the active one and record the verdict
    (committed by the caller)."""
    active = registry.active_version_number(session)
    if active is None or active == version:
        reason = "no other active version to compare with"
        evaluations.add_promotion_decision(session, version, True, reason, active, None, None)
        return Verdict(version, True, reason, active)
    row = store_evaluation(session, settings, version, decode_checkpoint(checkpoint), active, "gate")
    passed, reason = rule(settings, row)
    evaluations.add_promotion_decision(
        session, version, passed, reason, active, settings.promotion_margin, row.id
    )
    return Verdict(version, passed, reason, active)


def record_job_verdict(session: Session, job_id: int, verdict: Verdict) -> None:
    """Mark the job succeeded, with the verdict in its metrics (``GET /admin/jobs/{id}`` shows why its
    version was not activated)."""
    job = session.get(TrainingJob, job_id)
    if job is not None:
        job.metrics = {**(job.metrics or {}), "gate": {"passed": verdict.passed, "reason": verdict.reason}}
        job.status = "succeeded"
        job.progress = 1.0
        job.finished_at = utcnow()


def activate_if_unchanged(sessions: sessionmaker[Session], verdict: Verdict, reason: str) -> bool:
    """Activate a version that passed, unless the active version changed while it was judged (an
    admin's activation, another job's): then it is held, with that reason recorded. Returns whether
    it was activated."""
    with session_scope(sessions) as session:
        active = registry.active_version_number(session)
        if active != verdict.active_version:
            evaluations.add_promotion_decision(
                session,
                verdict.version,
                False,
                f"the active version changed from {verdict.active_version} to {active} while version "
                f"{verdict.version} was evaluated; it was compared with the old one, so it is not activated",
                active,
                None,
                None,
            )
            return False
        registry.activate_version(session, verdict.version, reason=reason)
        return True


def hold_unjudged(session: Session, version: int, why: str) -> None:
    """Record that a version was stored without being judged (e.g. saved as the trainer stopped)."""
    active = registry.active_version_number(session)
    evaluations.add_promotion_decision(session, version, False, why, active, None, None)


def judge_online_save(loop: OnlineLoop, version: int, checkpoint: bytes, evaluate_now: bool = True) -> bool:
    """The gate on an online save (stored inactive, on the online loop's thread): judge it and activate it
    when it passed; returns whether it was activated. Without ``evaluate_now`` (the trainer is stopping:
    an evaluation could outlast the stop timeout) it is held unjudged, with that reason recorded."""
    if not evaluate_now:
        with session_scope(loop.sessions) as session:
            hold_unjudged(
                session,
                version,
                "saved as the trainer stopped, not evaluated: POST /admin/evaluate, then activate it by hand",
            )
        return False
    with session_scope(loop.sessions) as session:
        verdict = judge(session, loop.settings, version, checkpoint)
    if not verdict.passed:
        log.info("online version %s held back by the promotion gate: %s", version, verdict.reason)
        return False
    activated = loop.handoff.unless_pending(lambda: activate_if_unchanged(loop.sessions, verdict, "online"))
    if activated is None:  # a retrained version was activated meanwhile and waits to be adopted
        with session_scope(loop.sessions) as session:
            hold_unjudged(session, version, "a retrained version was activated while it was evaluated")
        return False
    return activated
