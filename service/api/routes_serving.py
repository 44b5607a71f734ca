"""``POST /act`` and ``POST /feedback``. Sync routes: FastAPI runs them in its threadpool, so the
database work never blocks the event loop."""

from __future__ import annotations

from fastapi import APIRouter, status

from service.api.deps import SessionDep, StateDep
from service.api.schemas import ActRequest, ActResponse, FeedbackRequest, FeedbackResponse
from service.feedback import record_feedback
from service.serving import choose, store_decision

router = APIRouter(tags=["serving"])

ERRORS = {
    404: {"description": "unknown event_id"},
    409: {"description": "conflicting reward, or the reward window has closed"},
    422: {"description": "invalid field (the body names it)"},
    503: {"description": "no model yet or database unavailable (Retry-After)"},
}


@router.post("/act", response_model=ActResponse, responses=ERRORS)
def act(body: ActRequest, state: StateDep, session: SessionDep) -> ActResponse:
    """Choose an item for ``state``; the decision is stored before the response is sent."""
    policy = state.store.require()
    epsilon = state.settings.epsilon if body.explore is not False else 0.0
    choice = choose(
        policy, body.state, state.settings.state_dim, body.candidates, body.exclude, body.k, epsilon
    )
    event_id = store_decision(session, policy, body.state, body.session_id, choice)
    return ActResponse(
        event_id=event_id,
        item_id=choice.item_id,
        ranking=choice.ranking,
        propensity=choice.propensity,
        model_version=policy.model_version,
        policy_revision=policy.revision,
        explored=choice.explored,
    )


@router.post("/feedback", response_model=FeedbackResponse, status_code=status.HTTP_200_OK, responses=ERRORS)
def feedback(body: FeedbackRequest, state: StateDep, session: SessionDep) -> FeedbackResponse:
    """Record the reward of a served decision; a 2xx means it is committed to the database."""
    result = record_feedback(
        session,
        body.event_id,
        body.reward,
        body.done,
        aggregation=state.settings.aggregation,
        reward_window_s=state.settings.reward_window_s,
        feedback_id=body.feedback_id,
    )
    return FeedbackResponse(
        event_id=result.event_id, status=result.status, reward=result.reward, done=result.done
    )
