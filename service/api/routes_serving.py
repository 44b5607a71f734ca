"""``POST /act`` and ``POST /feedback``. Neither blocks the event loop: /act computes its choice (a NumPy
forward of microseconds) on the loop and awaits the decisions' group-commit writer; /feedback awaits the
feedback's group-commit writer, which judges and stores it with the posts queued beside it."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from service.api.deps import StateDep
from service.api.schemas import ActRequest, ActResponse, FeedbackRequest, FeedbackResponse
from service.feedback_log import FeedbackPost
from service.serving import choose, decision_row

router = APIRouter(tags=["serving"])

# Catalogues up to this size are scored on the event loop; longer ones in the threadpool.
INLINE_MAX_ACTIONS = 4096

ERRORS = {
    404: {"description": "unknown event_id"},
    409: {"description": "conflicting reward, or the reward window has closed"},
    422: {"description": "invalid field (the body names it)"},
    503: {"description": "no model yet or database unavailable (Retry-After)"},
}


@router.post("/act", response_model=ActResponse, responses=ERRORS)
async def act(body: ActRequest, state: StateDep) -> Response:
    """Choose an item for ``state``; the decision is committed before the response is sent."""
    policy = state.store.require()
    epsilon = state.settings.epsilon if body.explore is not False else 0.0
    args = (policy, body.state, state.settings.state_dim, body.candidates, body.exclude, body.k, epsilon)
    if policy.catalogue.n_actions <= INLINE_MAX_ACTIONS:
        choice = choose(*args)  # tens of microseconds: cheaper than a threadpool hop
    else:
        choice = await run_in_threadpool(choose, *args)  # a long catalogue must not stall the loop
    row = decision_row(policy, body.state, body.session_id, choice)
    await state.decisions.write(row)  # returns after the batch holding this row committed
    response = ActResponse(
        event_id=row["event_id"],
        item_id=choice.item_id,
        ranking=choice.ranking,
        propensity=choice.propensity,
        model_version=policy.model_version,
        policy_revision=policy.revision,
        explored=choice.explored,
    )
    # Serialized once by pydantic-core (the response model still documents the body in OpenAPI).
    return Response(response.model_dump_json(), media_type="application/json")


@router.post("/feedback", response_model=FeedbackResponse, status_code=status.HTTP_200_OK, responses=ERRORS)
async def feedback(body: FeedbackRequest, state: StateDep) -> FeedbackResponse:
    """Record the reward of a served decision; a 2xx means it is committed to the database."""
    # Returns after the batch holding this post committed; its 404/409 is raised here.
    result = await state.feedback.write(FeedbackPost(body.event_id, body.reward, body.done, body.feedback_id))
    return FeedbackResponse(
        event_id=result.event_id, status=result.status, reward=result.reward, done=result.done
    )
