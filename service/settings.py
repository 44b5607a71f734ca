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

    # DQfD hyperparameters: anything not given keeps the paper default of agent.DQfDConfig.
    hidden_sizes: tuple[int, ...] | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    gamma: float | None = None
    n_step: int | None = None
    target_update_period: int | None = None
    replay_capacity: int | None = None
    agent_overrides: dict[str, Any] = Field(default_factory=dict, description="extra DQfDConfig fields")
    seed: int | None = None
    pretrain_steps: int = Field(default=2000, ge=0)
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
    trainer_poll_s: float = Field(default=1.0, gt=0)
    auto_pretrain: bool = True
    torch_threads: int = Field(default=1, ge=1, description="torch intra-op threads of the trainer")

    # Operations.
    admin_token: SecretStr | None = None
    role: Literal["all", "api", "worker"] = "all"
    host: str = "127.0.0.1"
    port: int = 8000

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
            "target_update_period": self.target_update_period,
            "replay_capacity": self.replay_capacity,
            "epsilon": self.epsilon,
            "max_abs_state": self.max_abs_state,
            "max_abs_reward": self.max_abs_reward,
        }
        overrides = {k: v for k, v in named.items() if v is not None}
        overrides.update(self.agent_overrides)
        return overrides


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
