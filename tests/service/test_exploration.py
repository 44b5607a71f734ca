"""Exploration with sound propensities: ε-greedy (ties included) and softmax over Q-values, each logged
propensity the exact probability of the served item under the served policy (candidates and exclusions
applied). By hand on a fixed Q-vector, by frequency over seeded draws, and through /act on SQLite and
PostgreSQL."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

import service.serving.choice as serving
from service.api.app import create_app
from service.ingest.catalogue import Catalogue
from service.serving.choice import choose, softmax_probabilities
from service.serving.policy_store import ServingPolicy
from service.settings import Settings
from service.store.db import make_engine, make_session_factory
from service.store.models import Decision
from tests.service.conftest import N_ITEMS

STATE = [0.1, -0.2, 0.3, 0.0]
# Q-values of the fixed network below: items 0 and 3 tie for the best.
Q = np.array([2.0, 1.0, 0.0, 2.0], dtype=np.float32)


class FixedQ:
    """A network whose Q-values are :data:`Q` whatever the state (masked items -inf, as the real one)."""

    state_dim = 2

    def q_values(self, states: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        q = np.repeat(Q[None, :], states.shape[0], axis=0)
        return q if masks is None else np.where(masks, q, -np.inf).astype(np.float32)


@pytest.fixture
def policy() -> Iterator[ServingPolicy]:
    catalogue = Catalogue.build([f"item-{i}" for i in range(4)], [True] * 4)
    yield ServingPolicy(FixedQ(), catalogue, model_version=1)
    if hasattr(serving._rng_local, "rng"):
        del serving._rng_local.rng


def _draws(policy: ServingPolicy, n: int, **kwargs: object) -> tuple[Counter[str], dict[str, float]]:
    """``n`` seeded choices: how often each item was served and the propensity logged with it."""
    serving._rng_local.rng = np.random.default_rng(1234)
    counts: Counter[str] = Counter()
    logged: dict[str, float] = {}
    args = {"candidates": None, "exclude": None, "k": 1, "epsilon": 0.0} | kwargs
    for _ in range(n):
        c = choose(policy, [0.0, 0.0], 2, args["candidates"], args["exclude"], args["k"], args["epsilon"],
                   None, args.get("exploration", "epsilon"), args.get("temperature", 1.0))  # fmt: skip
        counts[c.item_id] += 1
        assert logged.setdefault(c.item_id, c.propensity) == c.propensity  # one propensity per item
    return counts, logged


def _frequencies_match(counts: Counter[str], probs: dict[str, float], n: int) -> None:
    # Seeded draws: within 4 binomial standard deviations of the propensity (a fixed outcome, not luck).
    for item, p in probs.items():
        assert abs(counts[item] / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12, item


def test_softmax_propensities_by_hand(policy: ServingPolicy) -> None:
    n = 20_000
    counts, logged = _draws(policy, n, exploration="softmax", temperature=1.0)
    e = math.e
    total = e**2 + e + 1 + e**2
    expected = {"item-0": e**2 / total, "item-1": e / total, "item-2": 1 / total, "item-3": e**2 / total}
    assert logged == pytest.approx(expected, rel=1e-12)
    _frequencies_match(counts, expected, n)


def test_softmax_with_candidates_exclusions_and_a_temperature(policy: ServingPolicy) -> None:
    # Allowed: items 1, 2, 3 (item-0 excluded); T = 0.5: weights e^{2}, e^{0}, e^{4}.
    n = 20_000
    counts, logged = _draws(
        policy, n, candidates=["item-0", "item-1", "item-2", "item-3"], exclude=["item-0"],
        exploration="softmax", temperature=0.5,
    )  # fmt: skip
    total = math.exp(2) + 1 + math.exp(4)
    expected = {"item-1": math.exp(2) / total, "item-2": 1 / total, "item-3": math.exp(4) / total}
    assert counts["item-0"] == 0
    assert logged == pytest.approx(expected, rel=1e-12)
    _frequencies_match(counts, expected, n)


def test_epsilon_greedy_with_tied_q_values(policy: ServingPolicy) -> None:
    # Items 0 and 3 tie; the tie is broken deterministically (item-0), so item-3 is served only when
    # exploring: 1 − ε + ε/4 for item-0, ε/4 for the others, ε = 0.3.
    n = 20_000
    counts, logged = _draws(policy, n, epsilon=0.3)
    expected = {"item-0": 0.7 + 0.3 / 4, "item-1": 0.3 / 4, "item-2": 0.3 / 4, "item-3": 0.3 / 4}
    assert logged == pytest.approx(expected, rel=1e-12)
    _frequencies_match(counts, expected, n)


def test_epsilon_greedy_over_candidates_with_a_tie(policy: ServingPolicy) -> None:
    # Candidates 2 and 3 only: item-3 is greedy, ε/2 each on top.
    n = 10_000
    counts, logged = _draws(policy, n, candidates=["item-2", "item-3"], epsilon=0.5)
    expected = {"item-2": 0.25, "item-3": 0.75}
    assert set(counts) == {"item-2", "item-3"}
    assert logged == pytest.approx(expected, rel=1e-12)
    _frequencies_match(counts, expected, n)


def test_softmax_probabilities_do_not_overflow() -> None:
    probs = softmax_probabilities(np.array([1e6, 1e6 - 1.0, -1e6]), 1e-3)
    assert probs.tolist() == [1.0, 0.0, 0.0]
    assert softmax_probabilities(np.array([3.0, 3.0]), 2.0).tolist() == [0.5, 0.5]
    # A temperature so small that q / T alone would be infinite: still the greedy item, probability 1.
    assert softmax_probabilities(np.array([1e3, 2e3]), 1e-306).tolist() == [0.0, 1.0]


# ---- through /act, on SQLite and PostgreSQL ----


@pytest.fixture
def client(trained: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(trained)) as client:
        yield client


def _stored_propensity(settings: Settings, event_id: str) -> float:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return session.scalar(select(Decision.propensity).where(Decision.event_id == event_id))
    finally:
        engine.dispose()


def _softmax_of_ranking(ranking: list[dict], item_id: str, temperature: float) -> float:
    scores = {r["item_id"]: r["score"] for r in ranking}
    top = max(scores.values())
    weights = {i: math.exp((s - top) / temperature) for i, s in scores.items()}
    return weights[item_id] / sum(weights.values())


def test_act_softmax_propensity_is_the_softmax_of_the_q_values(client: TestClient, trained: Settings) -> None:
    # k = every allowed item: the ranking returns all their Q-values, so the propensity is computable here.
    candidates = ["item-0", "item-2", "item-3"]
    for _ in range(40):
        body = {
            "state": STATE,
            "k": 3,
            "candidates": candidates,
            "exploration": "softmax",
            "temperature": 0.05,
        }
        response = client.post("/act", json=body)
        assert response.status_code == 200, response.text
        out = response.json()
        assert out["item_id"] in candidates
        expected = _softmax_of_ranking(out["ranking"], out["item_id"], 0.05)
        assert out["propensity"] == pytest.approx(expected, rel=1e-5)
        assert out["explored"] == (out["item_id"] != out["ranking"][0]["item_id"])
    assert _stored_propensity(trained, out["event_id"]) == pytest.approx(out["propensity"])


def test_act_softmax_from_settings(trained: Settings) -> None:
    configured = trained.model_copy(update={"exploration": "softmax", "softmax_temperature": 1000.0})
    with TestClient(create_app(configured)) as client:
        out = client.post("/act", json={"state": STATE, "k": N_ITEMS}).json()
        # T = 1000 against Q-values of order 1: nearly uniform, and exactly the softmax of the scores.
        assert out["propensity"] == pytest.approx(_softmax_of_ranking(out["ranking"], out["item_id"], 1000.0))
        assert out["propensity"] == pytest.approx(1 / N_ITEMS, rel=0.05)
        greedy = client.post("/act", json={"state": STATE, "explore": False}).json()
        assert greedy["propensity"] == 1.0 and greedy["explored"] is False
        # A request may switch this deployment back to ε-greedy with its own ε.
        eps = client.post("/act", json={"state": STATE, "exploration": "epsilon", "epsilon": 0.0}).json()
        assert eps["propensity"] == 1.0 and eps["item_id"] == greedy["item_id"]


def test_act_epsilon_override(client: TestClient) -> None:
    for _ in range(20):
        out = client.post("/act", json={"state": STATE, "epsilon": 1.0}).json()
        # ε = 1: uniform over the 5 items, the greedy one included.
        assert out["propensity"] == pytest.approx(1 / N_ITEMS)
        assert out["explored"] is True


def test_act_epsilon_greedy_propensity_counts_candidates_and_exclusions(client: TestClient) -> None:
    # Allowed: item-0 and item-2 (item-4 excluded), ε = 0.5: greedy 1 − 0.5 + 0.5/2 = 0.75, other 0.25.
    body = {"state": STATE, "candidates": ["item-0", "item-2", "item-4"], "exclude": ["item-4"], "k": 2}
    greedy = client.post("/act", json=body | {"explore": False}).json()["item_id"]
    for _ in range(20):
        out = client.post("/act", json=body | {"epsilon": 0.5}).json()
        assert out["item_id"] in {"item-0", "item-2"}
        assert out["propensity"] == (0.75 if out["item_id"] == greedy else 0.25)
    # One allowed item: served with probability 1 whatever ε.
    only = client.post("/act", json={"state": STATE, "candidates": ["item-1"], "epsilon": 1.0}).json()
    assert only["item_id"] == "item-1" and only["propensity"] == 1.0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"exploration": "boltzmann"}, "exploration"),
        ({"exploration": "softmax", "temperature": 0}, "temperature"),
        ({"exploration": "softmax", "temperature": -1.0}, "temperature"),
        ({"exploration": "softmax", "temperature": "1"}, "temperature"),
        ({"temperature": 1.0}, "temperature"),  # this deployment explores ε-greedily
        ({"exploration": "softmax", "epsilon": 0.1}, "epsilon"),
        ({"epsilon": 1.5}, "epsilon"),
    ],
)
def test_bad_exploration_is_422_naming_the_field(client: TestClient, extra: dict, field: str) -> None:
    response = client.post("/act", json={"state": STATE} | extra)
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["detail"]] == [field]
