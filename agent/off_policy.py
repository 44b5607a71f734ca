"""Off-policy evaluation on logged decisions: IPS, self-normalised IPS, doubly robust, and per-session
(trajectory-wise and per-decision) importance sampling, each with a bootstrap confidence interval, the
effective sample size and a support check. NumPy only; the service is never imported.

**What the one-step value is.** :func:`ips`, :func:`snips` and :func:`doubly_robust` estimate

    V(π) = E_{x ~ d_μ} [ Σ_a π(a | x) · E[r | x, a] ],

the expected *immediate* reward of the target policy π on the states ``x`` that the logging policy μ
visited (its state distribution ``d_μ``). It says whether π picks better single actions than μ on the
situations μ met. It does **not** say what π's long-term (session) return would be: π's actions change the
states that follow (a click-bait item wins the step and drains the session), so a policy can win the
one-step value and lose the return, and the states π would lead to are not in the logs at all. For a
statement about the return, :func:`session_importance_sampling` reweights whole sessions; it is unbiased
for the session return of π when every step's propensity is logged, but its variance grows with the
product of the per-step weights, so it is usable only for targets close to the logging policy
(see its effective sample size).

**Confidence intervals: the percentile bootstrap.** Each interval is the (α/2, 1 − α/2) percentiles of
the estimate recomputed on resamples of the decisions (of the sessions, for per-session estimates) drawn
with replacement. We use it rather than an empirical-Bernstein bound because a Bernstein bound needs a
known upper bound on each weighted reward (the largest importance weight times the largest reward), which
for softmax or ε-greedy logs is orders of magnitude above the typical weighted reward, so the bound is
valid but too wide to decide anything; the bootstrap's width tracks the actual spread, it handles the
ratio estimator (SNIPS) by recomputing the ratio per resample, and it is what Open Bandit Pipeline
reports, so the two can be compared number for number. It is asymptotic: with heavy-tailed weights and a
small effective sample size it under-covers, which is why every estimate carries the ESS and support
warnings (``benchmarks/results/ope_coverage.md`` measures the coverage). The resampling uses NumPy's
legacy ``RandomState(seed).randint`` stream, the one Open Bandit Pipeline draws from, so for IPS and DR
the same seed gives OBP's interval exactly. Decisions of one session share a user and are not
independent; ``clusters=session_ids`` resamples whole sessions instead (the coverage study measures
both).

Importance weights are ``w_i = π(a_i | x_i) / μ(a_i | x_i)``: the target policy's probability of the
logged action over its logged propensity, optionally clipped at ``clip`` (OBP's ``lambda_``), which
trades bias for variance and is reported as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

DEFAULT_BOOTSTRAP = 2000  # resamples: a 95% percentile interval's end points settle within ~1% of its width
DEFAULT_MIN_ESS = 100.0  # below this many effective decisions a bootstrap interval is not trustworthy
_BOOTSTRAP_CHUNK = 2_000_000  # index draws per chunk: bounds the bootstrap's memory (16 MB of indices)


@dataclass(frozen=True)
class ConfidenceInterval:
    """A two-sided interval at ``level`` (e.g. 0.95) by ``method`` with ``n_resamples`` resamples."""

    lower: float
    upper: float
    level: float
    method: str
    n_resamples: int


@dataclass(frozen=True)
class SupportReport:
    """How well the logged decisions support the target policy.

    ``ess`` is the effective sample size ``(Σ w)² / Σ w²`` of the (clipped) importance weights: the number of
    decisions an on-policy sample of equal variance would need; ``ess_fraction`` is ``ess / n``.
    ``unsupported_mass`` is the mean probability the target puts on actions the logging policy never takes
    (logging probability 0), known only when both full distributions are given (else ``None``).
    ``warnings`` says in words what is wrong; empty when nothing is.
    """

    n: int
    ess: float
    ess_fraction: float
    max_weight: float
    n_clipped: int
    unsupported_mass: float | None
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when no warning was raised."""
        return not self.warnings


@dataclass(frozen=True)
class OffPolicyEstimate:
    """An estimate of a target policy's value from logged data.

    ``value`` is the point estimate, ``interval`` its confidence interval, ``ess`` the effective sample size
    (of decisions for one-step estimators, of sessions for per-session ones), ``n`` the number of decisions
    (or sessions) used, and ``support`` the diagnostics with their warnings.
    """

    estimator: str
    value: float
    interval: ConfidenceInterval
    ess: float
    n: int
    support: SupportReport


@dataclass(frozen=True)
class SessionEstimates:
    """Per-session estimates of the target's (discounted) session return: trajectory-wise and per-decision."""

    trajectory: OffPolicyEstimate
    per_decision: OffPolicyEstimate
    n_sessions: int


def _array(name: str, values: object, n: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name} must have {n} entries (one per decision), got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must contain only finite numbers")
    return array


def _inputs(
    rewards: object, logged_propensities: object, target_probs: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = _array("rewards", rewards)
    if r.shape[0] < 1:
        raise ValueError("rewards must hold at least one decision")
    mu = _array("logged_propensities", logged_propensities, r.shape[0])
    pi = _array("target_probs", target_probs, r.shape[0])
    if ((mu <= 0) | (mu > 1)).any():
        raise ValueError(
            "logged_propensities must be in (0, 1]: a served action had a positive probability of being "
            "served (0 would mean it could not be)"
        )
    if ((pi < 0) | (pi > 1)).any():
        raise ValueError("target_probs must be probabilities in [0, 1]")
    return r, mu, pi


def importance_weights(
    logged_propensities: object, target_probs: object, clip: float | None = None
) -> tuple[np.ndarray, int]:
    """``π(a_i|x_i) / μ(a_i|x_i)``, clipped at ``clip`` if given; returns them and the count clipped."""
    mu = np.asarray(logged_propensities, dtype=np.float64)
    weights = np.asarray(target_probs, dtype=np.float64) / mu
    if clip is None:
        return weights, 0
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    n_clipped = int((weights > clip).sum())
    return np.minimum(weights, clip), n_clipped


def effective_sample_size(weights: object) -> float:
    """Kish's effective sample size ``(Σ w)² / Σ w²``; 0 when every weight is 0."""
    w = np.asarray(weights, dtype=np.float64)
    total_sq = float(np.dot(w, w))
    return 0.0 if total_sq == 0.0 else float(w.sum()) ** 2 / total_sq


def support_report(
    weights: np.ndarray,
    logged_propensities: np.ndarray,
    n_clipped: int = 0,
    logging_dist: object | None = None,
    target_dist: object | None = None,
    min_ess: float = DEFAULT_MIN_ESS,
) -> SupportReport:
    """Diagnostics of the logged support for the target policy, with a warning for each problem found.

    ``logging_dist`` and ``target_dist`` (``(n, n_actions)``, rows summing to 1) are optional: with them the
    report measures the target's mass on actions the logging policy could not take, the bias no weighting
    of the logged actions can remove; without them only the logged actions' weights are seen.
    """
    n = int(weights.shape[0])
    ess = effective_sample_size(weights)
    warnings: list[str] = []
    unsupported: float | None = None
    if (logging_dist is None) != (target_dist is None):
        raise ValueError("give both logging_dist and target_dist, or neither")
    if logging_dist is not None and target_dist is not None:
        mu_all = np.asarray(logging_dist, dtype=np.float64)
        pi_all = np.asarray(target_dist, dtype=np.float64)
        if mu_all.shape != pi_all.shape or mu_all.ndim != 2 or mu_all.shape[0] != n:
            raise ValueError(
                f"logging_dist and target_dist must both have shape ({n}, n_actions), "
                f"got {mu_all.shape} and {pi_all.shape}"
            )
        unsupported = float((pi_all * (mu_all <= 0)).sum(axis=1).mean())
        if unsupported > 0:
            warnings.append(
                f"the target policy puts {unsupported:.3%} of its probability on actions the logging policy "
                "never takes (logging probability 0): no logged decision informs that part, so IPS/SNIPS "
                "count it as zero reward and DR relies on the reward model alone there"
            )
    if np.all(np.asarray(logged_propensities) >= 1.0):
        warnings.append(
            "every logged propensity is 1 (a deterministic logging policy, e.g. greedy serving): the logs "
            "support only the actions it took, so any target that differs from it is not evaluable"
        )
    if n_clipped:
        warnings.append(
            f"{n_clipped} of {n} importance weights were clipped: the estimate is biased toward the "
            "logging policy's value"
        )
    if ess < min_ess:
        warnings.append(
            f"effective sample size {ess:.1f} is below {min_ess:g}: few logged decisions resemble the target "
            "policy, and the interval is not trustworthy"
        )
    max_weight = float(weights.max()) if n else 0.0
    return SupportReport(n, ess, ess / n if n else 0.0, max_weight, n_clipped, unsupported, tuple(warnings))


def bootstrap_means(
    numerators: np.ndarray,
    denominators: np.ndarray | None = None,
    n_resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> np.ndarray:
    """Resampled means ``mean(num[idx])`` (or ratios ``Σ num[idx] / Σ den[idx]``), ``n_resamples`` of them.

    Resample ``b`` draws ``n`` indices with ``RandomState(seed).randint(0, n, n)`` in sequence, the draws
    of Open Bandit Pipeline's ``estimate_confidence_interval_by_bootstrap``.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    n = numerators.shape[0]
    rng = np.random.RandomState(seed)  # the legacy stream on purpose: OBP's resamples, draw for draw
    out = np.empty(n_resamples)
    per_chunk = max(1, _BOOTSTRAP_CHUNK // max(n, 1))
    for start in range(0, n_resamples, per_chunk):
        stop = min(n_resamples, start + per_chunk)
        idx = rng.randint(0, n, size=(stop - start, n))
        if denominators is None:
            out[start:stop] = numerators[idx].mean(axis=1)
        else:
            den = denominators[idx].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[start:stop] = numerators[idx].sum(axis=1) / den
    return out


def _percentile_interval(
    resampled: np.ndarray, alpha: float, method: str = "bootstrap-percentile"
) -> ConfidenceInterval:
    finite = resampled[np.isfinite(resampled)]
    if finite.size == 0:
        return ConfidenceInterval(float("nan"), float("nan"), 1.0 - alpha, method, 0)
    lower, upper = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return ConfidenceInterval(float(lower), float(upper), 1.0 - alpha, method, resampled.size)


def bootstrap_interval(
    numerators: np.ndarray,
    denominators: np.ndarray | None,
    clusters: object | None,
    alpha: float,
    n_bootstrap: int,
    seed: int,
) -> ConfidenceInterval:
    """The percentile interval of a mean (or of a ratio of sums), resampling decisions, or whole clusters.

    With ``clusters`` (e.g. session ids, one per decision) the resamples draw clusters, keeping each
    cluster's decisions together: decisions of one session share a user, and resampling them one by one
    treats them as independent and makes the interval too narrow. The estimate is then the ratio of the
    resampled clusters' sums to their decision counts (or weight sums), the same statistic on the full
    sample.
    """
    if clusters is None:
        return _percentile_interval(bootstrap_means(numerators, denominators, n_bootstrap, seed), alpha)
    ids = np.asarray(clusters)
    if ids.shape != numerators.shape:
        raise ValueError(
            f"clusters must have {numerators.shape[0]} entries (one per decision), got {ids.shape}"
        )
    _, cluster = np.unique(ids, return_inverse=True)
    num = np.bincount(cluster, weights=numerators)
    den = np.bincount(cluster, weights=np.ones_like(numerators) if denominators is None else denominators)
    resampled = bootstrap_means(num, den, n_bootstrap, seed)
    return _percentile_interval(resampled, alpha, "cluster-bootstrap-percentile")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def ips(
    rewards: object,
    logged_propensities: object,
    target_probs: object,
    *,
    clip: float | None = None,
    alpha: float = 0.05,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    clusters: object | None = None,
    logging_dist: object | None = None,
    target_dist: object | None = None,
    min_ess: float = DEFAULT_MIN_ESS,
) -> OffPolicyEstimate:
    """Inverse propensity scoring: ``V̂ = (1/n) Σ w_i r_i`` with ``w_i = π(a_i|x_i) / μ(a_i|x_i)``.

    Unbiased when the logging policy covers the target (μ(a|x) > 0 wherever π(a|x) > 0) and unclipped.
    ``rewards``, ``logged_propensities`` (μ of the logged action) and ``target_probs`` (π of the logged
    action) have one entry per decision. ``clip`` caps the weights; ``logging_dist``/``target_dist`` (full
    ``(n, n_actions)`` distributions) enable the unsupported-mass check; the interval is a percentile
    bootstrap at level ``1 - alpha`` with ``n_bootstrap`` resamples from ``seed``, of decisions, or of
    whole ``clusters`` (e.g. session ids) when given: decisions of one session are not independent.
    The same keywords apply to :func:`snips` and :func:`doubly_robust`.
    """
    _check_alpha(alpha)
    r, mu, pi = _inputs(rewards, logged_propensities, target_probs)
    w, n_clipped = importance_weights(mu, pi, clip)
    support = support_report(w, mu, n_clipped, logging_dist, target_dist, min_ess)
    samples = w * r
    interval = bootstrap_interval(samples, None, clusters, alpha, n_bootstrap, seed)
    return OffPolicyEstimate("ips", float(samples.mean()), interval, support.ess, r.shape[0], support)


def snips(
    rewards: object,
    logged_propensities: object,
    target_probs: object,
    *,
    alpha: float = 0.05,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    clusters: object | None = None,
    logging_dist: object | None = None,
    target_dist: object | None = None,
    min_ess: float = DEFAULT_MIN_ESS,
) -> OffPolicyEstimate:
    """Self-normalised IPS: ``V̂ = Σ w_i r_i / Σ w_i``.

    Biased (of order 1/n) but of lower variance than IPS and always within the range of the rewards; NaN
    when every weight is 0 (the target never takes a logged action). The bootstrap recomputes the ratio on
    each resample (Open Bandit Pipeline instead resamples ``w_i r_i / mean(w)`` with the full sample's
    mean, so its SNIPS interval differs slightly from this one; its point estimate is the same).
    """
    _check_alpha(alpha)
    r, mu, pi = _inputs(rewards, logged_propensities, target_probs)
    w, _ = importance_weights(mu, pi)
    support = support_report(w, mu, 0, logging_dist, target_dist, min_ess)
    total = float(w.sum())
    value = float(np.dot(w, r) / total) if total > 0 else float("nan")
    if total == 0:
        undefined = "the target policy gives probability 0 to every logged action: SNIPS is undefined"
        support = replace(support, warnings=(*support.warnings, undefined))
    interval = bootstrap_interval(w * r, w, clusters, alpha, n_bootstrap, seed)
    return OffPolicyEstimate("snips", value, interval, support.ess, r.shape[0], support)


def doubly_robust(
    rewards: object,
    logged_propensities: object,
    target_probs: object,
    q_logged: object,
    q_target: object,
    *,
    clip: float | None = None,
    alpha: float = 0.05,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    clusters: object | None = None,
    logging_dist: object | None = None,
    target_dist: object | None = None,
    min_ess: float = DEFAULT_MIN_ESS,
) -> OffPolicyEstimate:
    """Doubly robust: ``V̂ = (1/n) Σ [ q̂(x_i, π) + w_i (r_i − q̂(x_i, a_i)) ]``.

    The direct-method reward model enters as two arrays: ``q_logged[i] = q̂(x_i, a_i)``, its prediction
    for the logged action, and ``q_target[i] = q̂(x_i, π) = Σ_a π(a|x_i) q̂(x_i, a)``, its prediction
    averaged over the target policy's action distribution. In the service the Q-network of a model version
    (whose Q-values are returns, not immediate rewards: then the estimate is of that quantity) or a
    separate immediate-reward model supplies them. The estimate is unbiased when either the weights are
    right (full support, no clipping) or the reward model is; the importance-weighted residual corrects
    the model's bias, and a good model cuts IPS's variance. Where the target has no logged support DR
    falls back on the model alone.
    """
    _check_alpha(alpha)
    r, mu, pi = _inputs(rewards, logged_propensities, target_probs)
    q_a = _array("q_logged", q_logged, r.shape[0])
    q_pi = _array("q_target", q_target, r.shape[0])
    w, n_clipped = importance_weights(mu, pi, clip)
    support = support_report(w, mu, n_clipped, logging_dist, target_dist, min_ess)
    samples = q_pi + w * (r - q_a)
    interval = bootstrap_interval(samples, None, clusters, alpha, n_bootstrap, seed)
    return OffPolicyEstimate("dr", float(samples.mean()), interval, support.ess, r.shape[0], support)


def session_importance_sampling(
    rewards: object,
    logged_propensities: object,
    target_probs: object,
    session_ids: object,
    steps: object | None = None,
    *,
    gamma: float = 1.0,
    alpha: float = 0.05,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    min_ess: float = DEFAULT_MIN_ESS,
) -> SessionEstimates:
    """Per-session estimates of the target's discounted session return ``E_π[Σ_t γ^t r_t]``.

    - trajectory-wise IS: ``(1/m) Σ_s ρ_s Σ_t γ^t r_{s,t}`` with ``ρ_s = Π_t w_{s,t}`` over the whole session;
    - per-decision IS: ``(1/m) Σ_s Σ_t γ^t ρ_{s,0:t} r_{s,t}``, each reward weighted only by the steps
      before and at it (unbiased as well, lower variance).

    Both are unbiased for the return of π from the logged sessions' start states when every step of
    every session is logged with its propensity (a session with a missing step must be left out by the
    caller). ``session_ids`` groups the decisions; ``steps`` orders them within a session (default: the
    order given). The bootstrap resamples whole sessions; the ESS is that of the session weights ``ρ_s``.
    """
    _check_alpha(alpha)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    r, mu, pi = _inputs(rewards, logged_propensities, target_probs)
    ids = np.asarray(session_ids)
    if ids.shape != r.shape:
        raise ValueError(f"session_ids must have {r.shape[0]} entries (one per decision), got {ids.shape}")
    order_key = np.arange(r.shape[0]) if steps is None else _array("steps", steps, r.shape[0])
    _, session = np.unique(ids, return_inverse=True)
    order = np.lexsort((order_key, session))
    session, r, w = session[order], r[order], (pi / mu)[order]
    m = int(session.max()) + 1
    starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
    position = np.arange(r.shape[0]) - np.repeat(starts, np.diff(np.r_[starts, r.shape[0]]))
    # Cumulative products within each session via logs; an exact zero weight zeroes the rest of its session.
    zero = w == 0
    logw = np.log(np.where(zero, 1.0, w))
    cum_log = np.cumsum(logw)
    cum_zero = np.cumsum(zero)
    base_log = np.r_[0.0, cum_log][starts][session]
    base_zero = np.r_[0, cum_zero][starts][session]
    rho_to_t = np.exp(cum_log - base_log) * ((cum_zero - base_zero) == 0)
    discounted = gamma**position * r
    session_return = np.bincount(session, weights=discounted, minlength=m)
    ends = np.r_[starts[1:], r.shape[0]] - 1
    rho = rho_to_t[ends]
    trajectory_samples = rho * session_return
    per_decision_samples = np.bincount(session, weights=rho_to_t * discounted, minlength=m)
    support = support_report(rho, mu, 0, None, None, min_ess)

    def estimate(name: str, samples: np.ndarray) -> OffPolicyEstimate:
        interval = _percentile_interval(bootstrap_means(samples, None, n_bootstrap, seed), alpha)
        return OffPolicyEstimate(name, float(samples.mean()), interval, support.ess, m, support)

    return SessionEstimates(
        estimate("trajectory_is", trajectory_samples), estimate("per_decision_is", per_decision_samples), m
    )
