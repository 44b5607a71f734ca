"""Request and response bodies of off-policy evaluation and the promotion gate (``POST /admin/evaluate``,
the ``evaluation`` and ``gate`` of ``GET /admin/models``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

MAX_VERSION = 2**31 - 1


class EvaluateRequest(BaseModel):
    """Body of ``POST /admin/evaluate``."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(strict=True, ge=1, le=MAX_VERSION, description="the model version to evaluate")
    since: AwareDatetime | None = Field(default=None, description="first decision time (inclusive)")
    until: AwareDatetime | None = Field(default=None, description="last decision time (exclusive)")
    baseline: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=MAX_VERSION,
        description="the version to compare with on the same decisions (default: the active one)",
    )

    @model_validator(mode="after")
    def _range(self) -> EvaluateRequest:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        return self


class EstimateOut(BaseModel):
    """One estimator's numbers (None where not finite)."""

    value: float | None
    lower: float | None
    upper: float | None
    ess: float | None
    max_weight: float | None = None
    warnings: list[str] = Field(default_factory=list)


class EvaluationOut(BaseModel):
    """An off-policy evaluation of a model version (``model_evaluations``)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    purpose: str = Field(description="admin (POST /admin/evaluate) or gate (the promotion gate)")
    job_id: int | None
    since: datetime | None
    until: datetime | None
    estimator: str = Field(description="the estimator of value/lower/upper: dr")
    value: float | None = Field(description="estimated one-step value (mean immediate reward)")
    lower: float | None = Field(description="95% interval, lower end (session bootstrap)")
    upper: float | None
    ess: float | None = Field(description="effective sample size of the importance weights")
    n_decisions: int
    n_sessions: int
    estimates: dict[str, EstimateOut] = Field(description="ips, snips and dr")
    warnings: list[str]
    baseline_version: int | None
    baseline_value: float | None
    baseline_lower: float | None
    baseline_upper: float | None
    diff_value: float | None = Field(description="value minus the baseline's, on the same decisions")
    diff_lower: float | None = Field(description="95% interval of the paired difference, lower end")
    diff_upper: float | None
    details: dict[str, Any]


class PromotionOut(BaseModel):
    """The promotion gate's verdict on a version (``promotion_decisions``)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    version: int
    decided_at: datetime
    passed: bool
    reason: str
    active_version: int | None
    margin: float | None
    evaluation_id: int | None
