"""The service's Prometheus metrics: every one is defined here, once, so each layer records into the
same objects (docs/service.md, "Metrics", lists them with their labels and example queries).

Names follow the Prometheus conventions: the ``dqfd_`` prefix, the unit in the name (``_seconds``),
``_total`` on counters. Gauges are set where the value changes (an event) or by a background loop that
reads it anyway; nothing here is computed when ``/metrics`` is scraped, so a scrape never waits on the
database.

Multi-process mode: with ``PROMETHEUS_MULTIPROC_DIR`` set before the process starts (prometheus_client
reads it when first imported), each process writes its values to memory-mapped files in that folder
and ``/metrics`` sums them (:mod:`service.metrics_exposition`). ``multiprocess_mode`` says how a gauge
of several processes is combined: ``liveall`` keeps one series per live process (a ``pid`` label),
``livemostrecent`` the value last set by any live process.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, Summary

# HTTP latencies: /act and /feedback answer in about a millisecond when healthy; a database that hangs
# makes them wait up to DQFD_REQUEST_DB_TIMEOUT_S (2 s) and then 503. The buckets resolve both ends.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# ε-greedy propensities: 1 − ε + ε/n for the greedy item (0.9+ at the default ε), ε/n for an explored one.
PROPENSITY_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)

# From feedback to update: an iteration of the trainer every DQFD_TRAINER_POLL_S (1 s); a transition
# with a default reward becomes ready when its reward window (600 s by default) closes. Up to an hour.
LAG_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

# The loss components an agent reports (agent.types): the total and the paper's four terms.
LOSS_COMPONENTS = ("loss", "j_dq", "j_n", "j_e", "j_l2")

# ---------------------------------------------------------------------------------------------- HTTP
HTTP_REQUESTS = Counter(
    "dqfd_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "dqfd_http_request_duration_seconds",
    "Time from receiving a request to the end of its response, by method, route template and status.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS_S,
)
UNAVAILABLE = Counter(
    "dqfd_unavailable_responses_total",
    "503 answers of /act, /feedback and the admin API, by reason: no_model, model_unservable, database.",
    ["reason"],
)
DATABASE_ERRORS = Counter(
    "dqfd_database_errors_total",
    "Database failures (unreachable, timed out), by where they happened.",
    ["component"],
)

# ------------------------------------------------------------------------------------------- serving
DECISIONS = Counter(
    "dqfd_decisions_total",
    "Decisions served by /act (committed), by the model version that chose them.",
    ["model_version"],
)
EXPLORED = Counter(
    "dqfd_explored_decisions_total",
    "Decisions whose item was drawn at random (ε-greedy exploration), by model version.",
    ["model_version"],
)
PROPENSITY = Histogram(
    "dqfd_decision_propensity",
    "The probability with which each served item was chosen.",
    buckets=PROPENSITY_BUCKETS,
)
SERVED_VERSION = Gauge(
    "dqfd_served_model_version",
    "The model version this process serves (0: none yet).",
    multiprocess_mode="liveall",
)

# ------------------------------------------------------------------------------------------ feedback
FEEDBACK = Counter(
    "dqfd_feedback_total",
    "Feedback posts answered, by outcome: stored, duplicate, ignored, unknown_event, conflict.",
    ["outcome"],
)
REWARD = Summary(
    "dqfd_decision_reward",
    "The final reward of each decision when it becomes a live transition (feedback, or the default "
    "reward once its window closed), by the model version that served it: _sum / _count is the mean.",
    ["model_version"],
)
DEFAULT_REWARDS = Counter(
    "dqfd_default_rewards_total",
    "Decisions that got DQFD_DEFAULT_REWARD because no feedback came within the reward window.",
    ["model_version"],
)

# ------------------------------------------------------------------------------------------- trainer
UPDATES = Counter("dqfd_trainer_updates_total", "Online gradient updates applied by the trainer.")
SKIPPED_UPDATES = Counter(
    "dqfd_trainer_skipped_updates_total",
    "Online updates skipped because their loss or gradient was not finite.",
)
TRANSITIONS_LEARNED = Counter(
    "dqfd_trainer_transitions_total", "Live transitions added to the online agent's replay."
)
LEARN_LAG = Histogram(
    "dqfd_trainer_lag_seconds",
    "From a transition becoming ready (its reward and next state known) to the trainer learning from it.",
    buckets=LAG_BUCKETS_S,
)
LOSS = Gauge(
    "dqfd_trainer_loss",
    "The loss components of the trainer's last online update (loss = the weighted total).",
    ["component"],
    multiprocess_mode="livemostrecent",
)
REPLAY_SIZE = Gauge(
    "dqfd_trainer_replay_transitions",
    "Transitions in the online agent's replay, by part: demonstrations or live.",
    ["part"],
    multiprocess_mode="livemostrecent",
)
TRAINER_VERSION = Gauge(
    "dqfd_trainer_model_version",
    "The model version the online agent learns from (0: none yet).",
    multiprocess_mode="livemostrecent",
)
JOBS = Gauge(
    "dqfd_jobs",
    "Training jobs by state (queued, running, succeeded, failed), as last read by a background loop.",
    ["state"],
    multiprocess_mode="livemostrecent",
)


def multiprocess_dir() -> str | None:
    """The multi-process folder (``PROMETHEUS_MULTIPROC_DIR``), None in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def record_losses(losses: dict[str, float]) -> None:
    """Count one online update (applied or skipped) and keep its loss components."""
    if losses.get("skipped", 0.0):
        SKIPPED_UPDATES.inc()
        return
    UPDATES.inc()
    for component in LOSS_COMPONENTS:
        if component in losses:
            LOSS.labels(component).set(losses[component])


def record_jobs(counts: dict[str, int]) -> None:
    """The jobs by state, as a background loop just read them."""
    for state, n in counts.items():
        JOBS.labels(state).set(n)


def mark_process_dead() -> None:
    """In multi-process mode, drop this process's ``live*`` gauges (call when it stops)."""
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), path)
