"""``POST /act`` and ``POST /feedback``. Neither blocks the event loop: /act computes its choice (a NumPy
forward of microseconds) on the loop and awaits the decisions' group-commit writer; /feedback awaits the
feedback's group-commit writer, which judges and stores it with the posts queued beside it.

They are the request path the serving benchmark measures, so they skip what costs time there and buys
nothing: they read the service state from the request (no dependency to solve), sit directly on the app
(:func:`add_routes`) rather than in an included router, which FastAPI matches once to select it and
again to handle the request, and /act writes its body with one ``pydantic_core.to_json`` of a plain
dict (the same bytes as ``ActResponse.model_dump_json``, without validating what it just built).
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from service.api.openapi import ACT, FEEDBACK
from service.api.schemas import ActRequest, ActResponse, FeedbackRequest, FeedbackResponse
from service.api.serving_metrics import feedback_error_outcome, record_decision, record_feedback
from service.api.state import ServiceState
from service.errors import InvalidInputError, ServiceError
from service.feedback.feedback_log import FeedbackPost
from service.serving.apprentice import apply_modes
from service.serving.choice import choose, decision_row
from service.settings import Settings

# Catalogues up to this size are scored on the event loop; longer ones in the threadpool.
INLINE_MAX_ACTIONS = 4096

TAGS: list[str] = ["serving"]


def exploration_of(body: ActRequest, settings: Settings) -> tuple[str, float, float]:
    """The request's exploration (mode, ε, temperature): the deployment's (DQFD_EXPLORATION, DQFD_EPSILON,
    DQFD_SOFTMAX_TEMPERATURE) unless the body overrides them; ``explore: false`` is greedy. A parameter of
    the other mode is refused (422 naming it) rather than silently ignored."""
    mode = body.exploration or settings.exploration
    if body.temperature is not None and mode != "softmax":
        raise InvalidInputError("temperature applies only to exploration 'softmax'", field="temperature")
    if body.epsilon is not None and mode != "epsilon":
        raise InvalidInputError("epsilon applies only to exploration 'epsilon'", field="epsilon")
    if body.explore is False:
        return "epsilon", 0.0, 1.0
    epsilon = settings.epsilon if body.epsilon is None else body.epsilon
    temperature = settings.softmax_temperature if body.temperature is None else body.temperature
    return mode, epsilon, temperature


async def act(body: ActRequest, request: Request) -> Response:
    """Choose an item for ``state``; the decision is committed before the response is sent."""
    state: ServiceState = request.app.state.service
    policy = state.store.require()
    settings = state.settings
    exploration, epsilon, temperature = exploration_of(body, settings)
    # The served model's width: the store only serves a model that fits the logs and DQFD_STATE_DIM.
    args = (
        policy,
        body.state,
        policy.network.state_dim,
        body.candidates,
        body.exclude,
        body.k,
        epsilon,
        settings.max_abs_state,
        exploration,
        temperature,
    )
    if policy.catalogue.n_actions <= INLINE_MAX_ACTIONS:
        choice = choose(*args)  # tens of microseconds: cheaper than a threadpool hop
    else:
        choice = await run_in_threadpool(choose, *args)  # a long catalogue must not stall the loop
    row = decision_row(policy, body.state, body.session_id, choice, body.learn)
    modes = state.poller.modes
    if body.baseline_item is not None or body.baseline_propensity is not None or modes.shadow is not None:
        # Apprentice mode serves the baseline item; a shadow version is scored and logged, never served.
        baseline = (body.baseline_item, body.baseline_propensity)
        apprentice = modes.apprentice_on(settings.mode)
        exploring = (exploration, epsilon, temperature)
        apply_modes(row, choice, policy, modes, body.state, baseline, apprentice, exploring)
    await state.decisions.write(row)  # returns after the batch holding this row committed
    record_decision(policy.model_version, row["explored"], row["propensity"])
    # ActResponse's fields, in its order (the response model documents the body in OpenAPI).
    content = {
        "event_id": row["event_id"],
        "item_id": row["item_id"],
        "ranking": choice.ranking,
        "propensity": row["propensity"],
        "model_version": policy.model_version,
        "policy_revision": policy.revision,
        "explored": row["explored"],
        "learn": body.learn,
        "served_by": "baseline" if row["apprentice"] else "model",
        "model_item_id": row["model_item_id"],
    }
    return Response(to_json(content, inf_nan_mode="null"), media_type="application/json")


async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
    """Record the reward of a served decision; a 2xx means it is committed to the database."""
    state: ServiceState = request.app.state.service
    bound = state.settings.max_abs_reward
    if abs(body.reward) > bound:
        raise InvalidInputError(
            f"reward must be within ±{bound:g} (DQFD_MAX_ABS_REWARD), got {body.reward:g}", field="reward"
        )
    # Returns after the batch holding this post committed; its 404/409 is raised here.
    post = FeedbackPost(body.event_id, body.reward, body.done, body.feedback_id)
    try:
        result = await state.feedback.write(post)
    except ServiceError as exc:
        if (outcome := feedback_error_outcome(exc)) is not None:
            record_feedback(outcome)
        raise
    record_feedback(result.status)
    return FeedbackResponse(
        event_id=result.event_id, status=result.status, reward=result.reward, done=result.done
    )


def add_routes(app: FastAPI) -> None:
    """Register ``/act`` and ``/feedback`` on ``app`` itself (before the included routers)."""
    app.add_api_route("/act", act, methods=["POST"], response_model=ActResponse, responses=ACT, tags=TAGS)
    app.add_api_route(
        "/feedback",
        feedback,
        methods=["POST"],
        response_model=FeedbackResponse,
        status_code=200,
        responses=FEEDBACK,
        tags=TAGS,
    )
