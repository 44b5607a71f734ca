"""Request and response bodies of the HTTP API (separate from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas_evaluation import EvaluationOut, PromotionOut
from service.settings import Settings

# Strict JSON numbers: an integer or a float, never a numeric string or a boolean; never NaN or ±inf.
# Their magnitude is bounded by settings (DQFD_MAX_ABS_STATE / DQFD_MAX_ABS_REWARD), checked by the routes.
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
StrictInt = Annotated[int, Field(strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]

# Ids are printable text: no control characters (PostgreSQL cannot store NUL), no lone surrogates (refused
# by pydantic as invalid unicode), at most as long as their database column (service/store/models.py).
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def _id(max_length: int) -> Any:
    return Field(min_length=1, max_length=max_length, pattern=ID_PATTERN)


ItemId = Annotated[str, _id(255)]  # items.item_id VARCHAR(255)
SessionId = Annotated[str, _id(255)]  # decisions.session_id VARCHAR(255)
EventId = Annotated[str, _id(64)]  # decisions.event_id VARCHAR(64)
FeedbackId = Annotated[str, _id(100)]  # feedback.dedup_key VARCHAR(128) holds it with a prefix
# The largest id an INTEGER column holds on both databases (PostgreSQL's int4).
MAX_DB_ID = 2**31 - 1
# The documented default bounds (the routes check the configured ones).
DEFAULT_MAX_ABS_STATE = Settings.model_fields["max_abs_state"].default
DEFAULT_MAX_ABS_REWARD = Settings.model_fields["max_abs_reward"].default


class ActRequest(BaseModel):
    """Body of ``POST /act``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"state": [0.1, -0.3, 0.5, 0.0], "session_id": "user-42", "k": 3},
                {"state": [0.1, -0.3, 0.5, 0.0], "candidates": ["item-1", "item-7"], "explore": False},
                {"state": [0.1, -0.3, 0.5, 0.0], "session_id": "qa-7", "explore": False, "learn": False},
            ]
        },
    )

    state: list[FiniteFloat] = Field(
        description="state features, exactly the configured state_dim of them: JSON numbers (no strings or "
        f"booleans) with |value| ≤ DQFD_MAX_ABS_STATE (default {DEFAULT_MAX_ABS_STATE:g})"
    )
    session_id: SessionId | None = Field(
        default=None, description="the episode; the next decision of a session gives the next state"
    )
    candidates: list[ItemId] | None = Field(default=None, min_length=1, description="choose only among these")
    exclude: list[ItemId] | None = Field(default=None, description="never choose these")
    k: StrictInt = Field(default=1, ge=1, description="ranking length (an integer, not a boolean)")
    explore: StrictBool | None = Field(
        default=None, description="explore as configured (ε-greedy or softmax); false = greedy"
    )
    exploration: Literal["epsilon", "softmax"] | None = Field(
        default=None, description="override DQFD_EXPLORATION for this request: ε-greedy or softmax over Q"
    )
    epsilon: FiniteFloat | None = Field(
        default=None, ge=0.0, le=1.0, description="override DQFD_EPSILON (exploration 'epsilon' only)"
    )
    temperature: FiniteFloat | None = Field(
        default=None,
        gt=0.0,
        le=1e6,
        description="override DQFD_SOFTMAX_TEMPERATURE (exploration 'softmax' only), in Q-value units",
    )
    learn: StrictBool = Field(
        default=True,
        description="false = evaluation or QA traffic: the decision is stored (marked) and takes feedback, "
        "but is never learned from",
    )
    baseline_item: ItemId | None = Field(
        default=None,
        description="the incumbent recommender's own choice (an active item the request allows): served "
        "instead of the model's in apprentice mode, logged beside it otherwise",
    )
    baseline_propensity: FiniteFloat | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="the incumbent's probability of baseline_item, when known: off-policy estimates of the "
        "model against the incumbent need it",
    )


class RankedItem(BaseModel):
    """One ranking entry: an item and its Q-value."""

    item_id: str
    score: float


class ActResponse(BaseModel):
    """Response of ``POST /act``."""

    event_id: str
    item_id: str
    ranking: list[RankedItem]
    propensity: float = Field(
        description="exact probability of the chosen item under the policy that served it (exploration, "
        "candidates and exclusions included)"
    )
    model_version: int
    policy_revision: int = Field(description="online updates the serving weights include")
    explored: bool
    learn: bool = Field(description="whether the decision may be learned from (the request's learn)")
    served_by: Literal["model", "baseline"] = Field(
        default="model", description="baseline: apprentice mode served the request's baseline_item"
    )
    model_item_id: str | None = Field(
        default=None, description="in apprentice mode, the item the model would have served (else null)"
    )


class FeedbackRequest(BaseModel):
    """Body of ``POST /feedback``."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"event_id": "3f2c…", "reward": 1.0, "done": False}]}
    )

    event_id: EventId
    reward: FiniteFloat = Field(
        description=f"a JSON number with |reward| ≤ DQFD_MAX_ABS_REWARD (default {DEFAULT_MAX_ABS_REWARD:g})"
    )
    done: StrictBool = False
    feedback_id: FeedbackId | None = Field(
        default=None, description="optional idempotency key (sum aggregation: distinct ids are summed)"
    )


class FeedbackResponse(BaseModel):
    """Response of ``POST /feedback``: the feedback is committed."""

    event_id: str
    status: str = Field(description="stored, duplicate (already stored) or ignored (aggregation=first)")
    reward: float = Field(description="the event's reward after aggregation")
    done: bool


class RetrainRequest(BaseModel):
    """Body of ``POST /admin/retrain``."""

    model_config = ConfigDict(extra="forbid")

    steps: StrictInt | None = Field(
        default=None, ge=0, le=10_000_000, description="pretrain steps (default: settings)"
    )
    activate: StrictBool = Field(default=False, description="make the new version active when done")
    replay_updates: StrictInt = Field(
        default=0, ge=0, le=10_000_000, description="updates after replaying live data"
    )


class JobOut(BaseModel):
    """A training job."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str
    params: dict[str, Any]
    progress: float
    metrics: dict[str, Any] | None
    error: str | None
    model_version: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ModelOut(BaseModel):
    """A model version (without its checkpoint bytes)."""

    model_config = ConfigDict(from_attributes=True)

    version: int
    created_at: datetime
    source: str
    parent_version: int | None
    job_id: int | None
    n_updates: int
    state_dim: int
    n_actions: int
    metrics: dict[str, Any]
    is_active: bool
    activated_at: datetime | None
    pruned: bool = Field(
        default=False, description="the retention rule deleted its checkpoint (DQFD_KEEP_VERSIONS)"
    )
    evaluation: EvaluationOut | None = Field(default=None, description="its latest off-policy evaluation")
    gate: PromotionOut | None = Field(default=None, description="the promotion gate's latest verdict on it")
