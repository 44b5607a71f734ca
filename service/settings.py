"""The one settings class of the service, read from environment variables and `.env`."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All knobs of the service. Env vars use the prefix ``DQFD_`` (``DATABASE_URL`` also works bare)."""

    model_config = SettingsConfigDict(
        env_prefix="DQFD_", env_file=".env", extra="ignore", validate_by_name=True, validate_by_alias=True
    )

    # Database: an SQLite file (WAL) by default so a fresh machine needs nothing else installed.
    database_url: str = Field(
        default="sqlite:///data/service.db",
        validation_alias=AliasChoices("DATABASE_URL", "DQFD_DATABASE_URL"),
    )
    db_pool_size: int = 10
    # Database timeouts (docs/service.md, "Database timeouts"): a database that hangs costs a request at
    # most about 2 s, then a 503 with Retry-After. 2 s is hundreds of times a healthy commit or query of
    # the request path (milliseconds) and well under a client's or load balancer's usual timeout (30 s+),
    # so a slow database is not mistaken for a hung one while a hung one fails fast. libpq counts the
    # connect timeout in whole seconds, at least 2. The statement timeout is the API engine's only: the
    # importer's COPY and the trainer's demonstration loading have none.
    db_connect_timeout_s: float = Field(default=2.0, gt=0, description="opening a database connection")
    db_statement_timeout_s: float = Field(default=2.0, gt=0, description="a statement of the API's engine")
    db_pool_timeout_s: float = Field(default=2.0, gt=0, description="waiting for a pooled connection")
    request_db_timeout_s: float = Field(
        default=2.0, gt=0, description="a request waiting for its group-commit batch or readiness ping"
    )

    # Problem shape. The state width is learned from the imported logs (service.store.shape stores it in the
    # database); DQFD_STATE_DIM, when set, must agree with it (and is the width before any import).
    state_dim: int | None = Field(
        default=None, ge=1, description="state features; None = learned from the imported logs"
    )
    items_path: str | None = Field(default=None, description="items.csv imported when the catalogue is empty")
    # The feature network's item features (docs/service.md, "Item features"): unset, every numeric extra
    # column of items.csv, as issue 15 asks; a comma-separated list narrows it. A name that is not a
    # numeric column of the catalogue is an error naming it (service.ingest.item_features).
    item_features: str | None = Field(default=None, description="item feature columns, comma-separated")
    # Which Q-network a training job builds (docs/service.md, "Item features"). auto: the feature network
    # when the catalogue has a feature column (issue 15: new items are ranked by their features at once),
    # else the paper's fixed head (one output per item). feature without any feature column is an error
    # naming the fix: an item told apart by nothing but a learned embedding has no cold start to offer.
    network: Literal["auto", "fixed", "feature"] = Field(default="auto", description="Q-network family")
    # The feature network's learned per-item embedding length (agent.item_dqfd.ItemNetworkConfig's
    # default 0: items scored by their features only, and checkpoints that do not grow with the catalogue).
    item_embedding_dim: int = Field(default=0, ge=0, description="learned per-item embedding length")

    # DQfD hyperparameters: anything not given keeps the paper default of agent.DQfDConfig, except the
    # service defaults chosen for the budgets the service runs (docs/algorithm.md, "Service defaults and
    # why"): the pretraining budget, the target period and the Q-filter.
    hidden_sizes: tuple[int, ...] | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    gamma: float | None = None
    n_step: int | None = None
    # None: derived from the pretraining budget (derived_target_update_period). The paper's 10,000 was set
    # for 750,000 pretraining updates; at a budget of 2,000 the target would never be copied while
    # pretraining, and measured worse at every checkpoint (benchmarks/results/overrule_demonstrator.md).
    target_update_period: int | None = Field(default=None, ge=1, description="None: from pretrain_steps")
    # The margin loss only on demonstrations whose action the agent still values at least as high as its
    # own choice (Nair et al. 2018): live data can overrule a suboptimal logging policy. False: the
    # paper's J_E on every demonstration.
    q_filter: bool = Field(default=True, description="Q-filter on the margin loss in online updates")
    replay_capacity: int | None = None
    agent_overrides: dict[str, Any] = Field(default_factory=dict, description="extra DQfDConfig fields")
    seed: int | None = None
    # Updates of a pretrain / retrain job. The paper's 750,000 (Sec. 4) is days of CPU. 2,000 left
    # MountainCar and LunarLander far short of the demonstrator (0.00 and 0.12 of it); 20,000 starts them
    # at 0.94 and 0.73 and the simulator, CartPole and Acrobot at 1.00-1.13, the slowest measured reaching
    # 0.95 at 15,000 (benchmarks/results/pretrain_budget.md), without lowering the end of online learning
    # (benchmarks/results/sensitivity.md). No signal in the data (agreement with the demonstrations, the
    # value scale, the amount of logs) says earlier when a problem is done.
    pretrain_steps: int = Field(default=20_000, ge=0, description="updates of a pretrain / retrain job")
    demo_chunk_rows: int = Field(default=10_000, ge=1)

    # Input bounds (not in the paper: a service must not let one request poison the learner). A state
    # value or reward past these is refused with 422 at the API and never enters the replay; 1e6 leaves
    # room for raw counts and prices while keeping squared TD errors of a 2×256 network far from float32
    # overflow (docs/service.md, "Input bounds").
    max_abs_state: float = Field(default=1e6, gt=0, description="largest |state value| accepted")
    max_abs_reward: float = Field(default=1e6, gt=0, description="largest |reward| accepted")

    # Serving.
    # ε-greedy serving, the paper's online ε = 0.01 (Hester et al. 2018, Sec. 4) unless configured.
    epsilon: float = Field(default=0.01, ge=0.0, le=1.0)
    # How /act explores (docs/service.md, "Exploration and propensities"): ε-greedy by default, today's
    # behaviour and the paper's; "softmax" draws from exp(Q/T) over the allowed items, so every allowed
    # item keeps a propensity that depends on its Q-value (what off-policy evaluation needs). A request
    # may override both.
    exploration: Literal["epsilon", "softmax"] = Field(default="epsilon", description="/act's exploration")
    # In Q-value (reward) units: an item one unit below the best is served e ≈ 2.7 times less often. 1.0
    # suits rewards of order 1 (a click); set it to the size of your Q-value gaps.
    softmax_temperature: float = Field(default=1.0, gt=0.0, le=1e6, description="softmax temperature T")
    # Apprentice mode (docs/service.md, "Apprentice mode"): "normal" by default, so a deployment serves its
    # model as before; "apprentice" serves the request's baseline_item until an admin or the promotion
    # gate switches it off (POST /admin/apprentice, stored in the database: that switch wins over this).
    mode: Literal["normal", "apprentice"] = Field(default="normal", description="serve the model or baseline")
    # The incumbent's transitions join the demonstration part of the replay, which is never overwritten:
    # this bounds it (100,000 one-step demonstrations take ~2 × 100,000 state rows, tens of MB at 50
    # features). Past it, further ones are not learned from (counted); they stay in the database.
    apprentice_max_demonstrations: int = Field(default=100_000, ge=0, description="live demonstrations kept")
    # With the promotion gate on, the trainer checks this often whether the model is estimated to beat the
    # incumbent (service.learning.apprentice_gate): the check reads up to 20,000 decisions and bootstraps
    # them (well under a second), and the evidence grows by traffic over minutes, so once a minute.
    apprentice_check_s: float = Field(default=60.0, ge=0.0, description="apprentice gate check interval")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    model_poll_s: float = Field(default=2.0, gt=0)

    # Feedback and delayed rewards.
    reward_window_s: float = Field(default=600.0, gt=0)
    default_reward: float = 0.0
    aggregation: Literal["reject", "first", "sum"] = "reject"

    # Online learning.
    updates_per_transition: int = Field(default=1, ge=0)
    publish_every_updates: int = Field(default=50, ge=1)
    publish_every_s: float = Field(default=5.0, gt=0)
    save_every_updates: int = Field(default=1000, ge=1)
    # Checkpoint retention (service/store/retention.py): the newest versions kept beside the active and
    # every activated one. 10 = the last 10,000 online updates at the default save_every_updates, time
    # to notice a bad stretch of online learning (docs/service.md, "Checkpoint retention").
    keep_versions: int = Field(default=10, ge=1)
    trainer_poll_s: float = Field(default=1.0, gt=0)
    auto_pretrain: bool = True
    torch_threads: int = Field(default=1, ge=1, description="torch intra-op threads of the trainer")

    # Off-policy evaluation and the promotion gate (docs/service.md, "Evaluation and the promotion gate").
    # Off by default: with the default ε = 0.01 logs the candidate's own choices are supported by ~1% of
    # decisions, so the interval is wide and the gate would hold back nearly every version, stopping the
    # learning that works today. Turn it on with softmax exploration (or a larger ε).
    promotion_gate: Literal["off", "on"] = Field(default="off", description="gate retrain/online activation")
    # Reward units: 0 asks only that the candidate is better at the lower end of the 95% interval.
    promotion_margin: float = Field(default=0.0, ge=0.0, description="required lower bound of value gain")
    # Below these the bootstrap interval is not trustworthy (agent.off_policy.DEFAULT_MIN_ESS = 100).
    promotion_min_decisions: int = Field(default=1000, ge=1, description="logged decisions the gate needs")
    promotion_min_ess: float = Field(default=100.0, ge=0.0, description="effective sample size needed")
    # The newest decisions an evaluation reads: bounds its time and memory (~100 bytes a decision).
    evaluation_max_decisions: int = Field(default=100_000, ge=1, description="newest decisions evaluated")
    evaluation_bootstrap: int = Field(default=1000, ge=10, le=100_000, description="bootstrap resamples")

    # Operations.
    admin_token: SecretStr | None = None
    # The dashboard's read-only viewer token (docs/service.md, "Dashboard"): lets people see the charts
    # without the admin token's power to activate models or retrain. Unset (and no admin token): the
    # dashboard is off, never open by default.
    viewer_token: SecretStr | None = Field(default=None, description="bearer token of the dashboard's data")
    role: Literal["all", "api", "worker"] = "all"
    host: str = "127.0.0.1"
    port: int = 8000
    # uvicorn's access log, one line per request: on, as operators expect to see requests; off
    # (`serve --no-access-log`) for load tests, where writing a line per request costs throughput.
    access_log: bool = Field(default=True, description="log one line per HTTP request")
    # Metrics (docs/service.md, "Metrics"). Open by default, as Prometheus targets usually are: they are
    # counts, versions and latencies, no request data. With a token, a scrape needs it as a bearer token.
    metrics_token: SecretStr | None = Field(default=None, description="bearer token GET /metrics requires")
    # The worker has no HTTP API: its trainer metrics are served on this port when set (None: not served).
    metrics_port: int | None = Field(default=None, ge=1, le=65535, description="the worker's /metrics port")

    @field_validator("state_dim", mode="before")
    @classmethod
    def _blank_state_dim_is_unset(cls, value: Any) -> Any:
        # `DQFD_STATE_DIM=` (e.g. from a compose file's ${DQFD_STATE_DIM:-}) means "learn it".
        return None if isinstance(value, str) and not value.strip() else value

    def agent_config_overrides(self) -> dict[str, Any]:
        """The DQfDConfig fields these settings override (the rest stay at the paper defaults)."""
        named = {
            "hidden_sizes": self.hidden_sizes,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "gamma": self.gamma,
            "n_step": self.n_step,
            "target_update_period": self.target_update_period
            if self.target_update_period is not None
            else derived_target_update_period(self.pretrain_steps),
            "q_filter": self.q_filter,
            "replay_capacity": self.replay_capacity,
            "epsilon": self.epsilon,
            "max_abs_state": self.max_abs_state,
            "max_abs_reward": self.max_abs_reward,
        }
        overrides = {k: v for k, v in named.items() if v is not None}
        overrides.update(self.agent_overrides)
        return overrides


def derived_target_update_period(pretrain_steps: int) -> int:
    """The service's default target period: 1,000 updates, but at most half the pretraining updates
    (at least 1), so pretraining copies the target network at least twice.

    1,000 is what the project's benchmarks measured at 2,000 and 5,000 pretraining updates and the issue
    at 20,000 (docs/algorithm.md, "Service defaults and why"); the paper's 10,000 is 1/75 of its 750,000.
    Without pretraining (0 steps) the online phase gets the 1,000."""
    if pretrain_steps <= 0:
        return 1000
    return max(1, min(1000, pretrain_steps // 2))


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
