"""Off-policy evaluation of a stored model version on the logged decisions (docs/off_policy_evaluation.md,
"In the service").

**Target policy.** The version's own serving policy: its Q-values through this deployment's exploration
settings (``DQFD_EXPLORATION``, ``DQFD_EPSILON``, ``DQFD_SOFTMAX_TEMPERATURE``) over each decision's
allowed items, computed exactly as :func:`service.serving.choice.choose` serves, so its probability of
every item is exact. The logged propensity (the served item's probability under the policy that served
it) is the denominator of the importance weight.

**Direct method of DR: a per-item mean reward**, fitted on the evaluated decisions themselves: ``q̂(x, a)``
is the mean logged reward of item ``a`` (the mean of all rewards for an item never served). Not the
Q-network: a DQfD Q-value predicts the discounted *return* (the immediate reward plus what follows), not
the immediate reward the one-step value is made of, so it would bias the direct part by the future term.
A per-item mean ignores the state, so it is a weak model; DR stays unbiased with exact propensities
whatever the model, and the model only cuts the variance where it is right. It is hand-checkable.

**Intervals** are percentile bootstraps resampling whole sessions (``clusters=``: decisions of one
session share a user); a decision without a session is its own cluster. The comparison with a baseline
version is paired: both are estimated on the same decisions, and the interval of the difference comes
from the same session resamples, which is far narrower than comparing two separate intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from agent import off_policy
from service.learning.logged import LoggedDecisions, load_logged
from service.settings import Settings
from service.store.evaluations import finite
from service.store.features import FEATURE_DTYPE, decode_states

CHUNK = 2048
"""Decisions per Q-value batch: bounds memory (CHUNK × n_actions floats) whatever the catalogue."""
ESTIMATORS = ("ips", "snips", "dr")
HEADLINE = "dr"
"""The estimator in the columns and the one the gate uses: unbiased like IPS, of lower variance."""
REWARD_MODEL = "per-item mean reward on the evaluated decisions"


def serving_greedy(allowed_q: np.ndarray, k: int) -> int:
    """The position in ``allowed_q`` (the allowed items' float32 Q-values) that serving ranks first for a
    request of ``k``: its top-k selection, replayed, so that ties break exactly as they did there."""
    top = min(k, allowed_q.shape[0])
    negated = -allowed_q
    if top >= allowed_q.shape[0]:
        return int(negated.argsort(kind="stable")[0])
    part = negated.argpartition(top - 1)[:top]
    return int(part[negated[part].argsort(kind="stable")][0])


def greedy_actions(q: np.ndarray, allowed: np.ndarray, ks: np.ndarray, unmasked: np.ndarray) -> np.ndarray:
    """Serving's greedy action of each row: the best allowed item; where several tie for best, the one
    serving's top-k selection put first (replayed on the array serving ranked: every action's Q-values
    for an ``unmasked`` request, the allowed ones' otherwise)."""
    q = np.where(allowed, q, -np.inf).astype(np.float32)
    greedy = q.argmax(axis=1)
    tied = np.flatnonzero((q == q.max(axis=1, keepdims=True)).sum(axis=1) > 1)
    for row in tied:
        if unmasked[row]:
            greedy[row] = serving_greedy(q[row], int(ks[row]))
        else:
            positions = np.flatnonzero(allowed[row])
            greedy[row] = positions[serving_greedy(q[row, positions], int(ks[row]))]
    return greedy


def policy_probabilities(
    q: np.ndarray,
    allowed: np.ndarray,
    settings: Settings,
    ks: np.ndarray | None = None,
    unmasked: np.ndarray | None = None,
) -> np.ndarray:
    """The serving policy's probability of every action, row by row (``q``: Q-values, ``allowed``: masks;
    ``ks`` and ``unmasked`` replay serving's tie-breaking, see :func:`greedy_actions`).

    ε-greedy: ε/n on each of the n allowed items plus 1 − ε on the greedy one (exactly serving's
    propensity); softmax: ``exp(Q/T)`` normalised over the allowed items (serving's, up to the rounding
    of a sum taken in another order).
    """
    rows = np.arange(q.shape[0])
    if settings.exploration == "softmax":
        q64 = np.where(allowed, q.astype(np.float64), -np.inf)
        z = np.exp((q64 - q64.max(axis=1, keepdims=True)) / settings.softmax_temperature)
        return z / z.sum(axis=1, keepdims=True)
    ks = np.ones(q.shape[0], dtype=np.int64) if ks is None else ks
    unmasked = np.zeros(q.shape[0], dtype=bool) if unmasked is None else unmasked
    eps = settings.epsilon
    n_allowed = allowed.sum(axis=1)
    probs = allowed * (eps / n_allowed)[:, None]
    greedy = greedy_actions(q, allowed, ks, unmasked)
    probs[rows, greedy] = eps / n_allowed + (1.0 - eps)  # serving's own expression, bit for bit
    return probs


def item_mean_rewards(actions: np.ndarray, rewards: np.ndarray, n_actions: int) -> np.ndarray:
    """The direct method: each item's mean logged reward; the overall mean for an item never served."""
    counts = np.bincount(actions, minlength=n_actions)
    sums = np.bincount(actions, weights=rewards, minlength=n_actions)
    overall = float(rewards.mean()) if rewards.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), overall)


@dataclass
class Arrays:
    """The evaluated decisions as arrays (states decoded, masks filled in)."""

    states: np.ndarray
    allowed: np.ndarray
    actions: np.ndarray
    mu: np.ndarray
    rewards: np.ndarray
    clusters: np.ndarray
    ks: np.ndarray
    unmasked: np.ndarray


def to_arrays(data: LoggedDecisions, state_dim: int, n_actions: int) -> tuple[Arrays, int]:
    """The decisions the network can score (its state width, a propensity in (0, 1]) as arrays, and how
    many were left out."""
    width = state_dim * FEATURE_DTYPE.itemsize
    keep = [i for i in range(len(data)) if len(data.states[i]) == width and 0.0 < data.propensities[i] <= 1.0]
    allowed = np.ones((len(keep), n_actions), dtype=bool)
    for row, i in enumerate(keep):
        if data.masks[i] is not None:
            allowed[row] = data.masks[i]
    actions = np.asarray([data.actions[i] for i in keep], dtype=np.int64)
    allowed[np.arange(len(keep)), actions] = True  # served, so allowed (a mask stored for fewer items)
    arrays = Arrays(
        decode_states([data.states[i] for i in keep], state_dim),
        allowed,
        actions,
        np.asarray([data.propensities[i] for i in keep], dtype=np.float64),
        np.asarray([data.rewards[i] for i in keep], dtype=np.float64),
        np.asarray([data.sessions[i] for i in keep]),
        np.asarray([data.ks[i] for i in keep], dtype=np.int64),
        np.asarray([data.masks[i] is None for i in keep], dtype=bool),
    )
    return arrays, len(data) - len(keep)


def target_arrays(
    network: Any, a: Arrays, model: np.ndarray, settings: Settings, progress: Callable[[float], None]
) -> tuple[np.ndarray, np.ndarray]:
    """π(a_i | x_i) of each logged action under ``network``'s serving policy, and the direct method's
    ``q̂(x_i, π) = Σ_a π(a | x_i) q̂(a)``."""
    n = a.actions.shape[0]
    pi, q_pi = np.empty(n), np.empty(n)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        q = network.q_values(a.states[start:stop], a.allowed[start:stop])
        probs = policy_probabilities(
            np.asarray(q), a.allowed[start:stop], settings, a.ks[start:stop], a.unmasked[start:stop]
        )
        probs = np.clip(probs, 0.0, 1.0)  # round-off past 1 would be refused as a probability
        pi[start:stop] = probs[np.arange(stop - start), a.actions[start:stop]]
        q_pi[start:stop] = probs @ model
        progress(stop / n)
    return pi, q_pi


def _estimate_dict(estimate: off_policy.OffPolicyEstimate) -> dict[str, Any]:
    return {
        "value": finite(estimate.value),
        "lower": finite(estimate.interval.lower),
        "upper": finite(estimate.interval.upper),
        "ess": finite(estimate.ess),
        "max_weight": finite(estimate.support.max_weight),
        "warnings": list(estimate.support.warnings),
    }


def estimate_all(
    a: Arrays,
    pi: np.ndarray,
    q_pi: np.ndarray,
    model: np.ndarray,
    settings: Settings,
    names: tuple[str, ...] = ESTIMATORS,
) -> tuple[dict[str, off_policy.OffPolicyEstimate], np.ndarray]:
    """The ``names`` estimates (IPS, SNIPS, DR) of one target on the decisions (session-resampled
    intervals), and DR's per-decision terms (for the paired comparison)."""
    common = {"clusters": a.clusters, "n_bootstrap": settings.evaluation_bootstrap, "seed": 0}
    q_logged = model[a.actions]
    estimators = {
        "ips": lambda: off_policy.ips(a.rewards, a.mu, pi, **common),
        "snips": lambda: off_policy.snips(a.rewards, a.mu, pi, **common),
        "dr": lambda: off_policy.doubly_robust(a.rewards, a.mu, pi, q_logged, q_pi, **common),
    }
    estimates = {name: estimators[name]() for name in names}
    terms = q_pi + pi / a.mu * (a.rewards - q_logged)
    return estimates, terms


def paired_interval(diff: np.ndarray, clusters: np.ndarray, n_bootstrap: int) -> tuple[float, float]:
    """The 95% percentile interval of ``mean(diff)`` resampling whole sessions (the same resamples, seed 0,
    as each version's own interval)."""
    interval = off_policy.bootstrap_interval(diff, None, clusters, 0.05, n_bootstrap, 0)
    return interval.lower, interval.upper


def evaluate(
    session: Any,
    settings: Settings,
    network: Any,
    baseline: Any | None,
    since: datetime | None,
    until: datetime | None,
    progress: Callable[[float], None] = lambda _: None,
    names: tuple[str, ...] = ESTIMATORS,
) -> dict[str, Any]:
    """Evaluate ``network`` (and ``baseline``, when given, on the same decisions) on the logged decisions
    in ``[since, until)`` by the ``names`` estimators (DR at least: the headline); returns the
    :class:`service.store.models.ModelEvaluation` columns that follow from the data (``value`` None when
    no decision could be used)."""
    data = load_logged(session, settings, since, until, int(network.n_actions))
    a, left_out = to_arrays(data, int(network.state_dim), int(network.n_actions))
    n = int(a.actions.shape[0])
    fields: dict[str, Any] = {
        "since": since,
        "until": until,
        "estimator": HEADLINE,
        "n_decisions": n,
        "n_sessions": int(np.unique(a.clusters).shape[0]) if n else 0,
        "estimates": {},
        "warnings": [],
        "details": {
            "reward_model": REWARD_MODEL,
            "target_policy": _target_description(settings),
            "interval": f"95% percentile bootstrap over sessions, {settings.evaluation_bootstrap} resamples",
            "served_decisions": data.n_served,
            "imported_decisions": data.n_imported,
            "left_out": left_out,
        },
    }
    if n == 0:
        fields["warnings"] = ["no logged decision with a known reward and propensity in the range"]
        return fields
    model = item_mean_rewards(a.actions, a.rewards, int(network.n_actions))
    share = 0.5 if baseline is not None else 1.0
    pi, q_pi = target_arrays(network, a, model, settings, lambda f: progress(share * f))
    estimates, terms = estimate_all(a, pi, q_pi, model, settings, names)
    dr = estimates[HEADLINE]
    fields.update(
        value=finite(dr.value),
        lower=finite(dr.interval.lower),
        upper=finite(dr.interval.upper),
        ess=finite(dr.ess),
        estimates={name: _estimate_dict(e) for name, e in estimates.items()},
        warnings=list(dr.support.warnings),
    )
    if left_out:
        fields["warnings"].append(f"{left_out} decision(s) left out: another state width or no propensity")
    if baseline is not None:
        b_pi, b_q_pi = target_arrays(baseline, a, model, settings, lambda f: progress(0.5 + 0.5 * f))
        b_estimates, b_terms = estimate_all(a, b_pi, b_q_pi, model, settings, names)
        b_dr = b_estimates[HEADLINE]
        lower, upper = paired_interval(terms - b_terms, a.clusters, settings.evaluation_bootstrap)
        fields.update(
            baseline_value=finite(b_dr.value),
            baseline_lower=finite(b_dr.interval.lower),
            baseline_upper=finite(b_dr.interval.upper),
            diff_value=finite(float((terms - b_terms).mean())),
            diff_lower=finite(lower),
            diff_upper=finite(upper),
        )
        fields["details"]["baseline_estimates"] = {n: _estimate_dict(e) for n, e in b_estimates.items()}
    return fields


def _target_description(settings: Settings) -> str:
    if settings.exploration == "softmax":
        return f"softmax over Q-values, temperature {settings.softmax_temperature:g}"
    return f"epsilon-greedy on Q-values, epsilon {settings.epsilon:g}"
