"""Live demonstrations (apprentice mode's incumbent transitions) in a real DQfD agent: added to the
demonstration part after construction and after agent data, never to the agent part; the margin loss
applies to them with the value computed by hand; the bound holds; invalid values are refused; and a
reloaded agent gets them back as demonstrations from the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest

from agent import DQfDAgent, DQfDConfig
from service.feedback.transitions import Transition
from service.ingest.catalogue import load_catalogue
from service.learning import live_demos
from service.learning.agents import new_agent
from service.learning.replay import ReplayLoader, observe
from service.settings import Settings
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.features import encode_state
from service.store.models import LiveTransition
from tests.service.conftest import STATE, insert_decisions

S0 = np.array([0.5, -0.25], dtype=np.float32)
S1 = np.array([0.0, 1.0], dtype=np.float32)


def _agent(**overrides: object) -> DQfDAgent:
    config = DQfDConfig(hidden_sizes=(8,), batch_size=4, n_step=3, **overrides)
    return DQfDAgent(state_dim=2, n_actions=3, config=config, seed=0)


def _transition(
    action: int, reward: float = 1.0, done: bool = False, demonstration: bool = True
) -> Transition:
    return Transition(S0, action, reward, S1, done, False, None, None, demonstration)


def test_a_live_demonstration_joins_the_demonstration_part_after_agent_data() -> None:
    agent = _agent()
    states = np.array([[1.0, 1.0], [2.0, 2.0]], np.float32)
    agent.add_demonstrations(states, np.array([0, 1]), np.array([0.0, 1.0]), np.array([0, 1]))
    observe(agent, _transition(0, demonstration=False))
    demos, agent_part = agent.n_demonstrations, agent.n_agent_transitions
    assert (demos, agent_part) == (2, 1)
    observe(agent, _transition(2))  # routed by its flag, as the trainer's replay loading does
    assert (agent.n_demonstrations, agent.n_agent_transitions) == (3, 1)
    slot = agent.replay.demo_size - 2  # the one-step episode: its transition, then its next state
    replay = agent.replay.demo
    np.testing.assert_array_equal(replay.states[slot], S0)
    np.testing.assert_array_equal(replay.states[slot + 1], S1)
    assert (replay.actions[slot], replay.rewards[slot]) == (2, 1.0)
    assert not replay.is_transition[slot + 1]
    assert live_demos.tally(agent).added == 1


def test_the_margin_loss_applies_to_a_live_demonstration() -> None:
    agent = _agent()
    observe(agent, _transition(1, reward=0.0, done=True))
    q = agent.q_values(S0[None, :])[0].astype(np.float64)
    batch = agent.sample(demo_only=True)  # the only demonstration: every row of the batch is it
    assert bool(batch.is_demo.all())
    info, _ = agent.learn(batch, demo_only=True)
    # J_E = max_a [Q(s, a) + l(a_E, a)] − Q(s, a_E), l = margin 0.8 off the demonstrated action 1.
    expected = max(q[a] + (0.0 if a == 1 else agent.config.margin) for a in range(3)) - q[1]
    assert info.j_e == pytest.approx(expected, rel=1e-5)
    assert info.j_e > 0 and info.demo_fraction == 1.0


def test_the_bound_and_invalid_values() -> None:
    agent = _agent(max_abs_reward=10.0)
    live_demos.track(agent, 2)
    assert [live_demos.add(agent, _transition(a)) for a in (0, 1, 2)] == [True, True, False]
    tally = live_demos.tally(agent)
    assert (tally.added, tally.dropped, agent.n_demonstrations) == (2, 1, 2)
    other = _agent(max_abs_reward=10.0)
    with pytest.raises(ValueError, match="reward"):
        live_demos.add(other, _transition(0, reward=11.0))
    assert other.n_demonstrations == 0 and live_demos.tally(other).added == 0


def test_a_reloaded_agent_gets_its_live_demonstrations_back(trained: Settings) -> None:
    engine = make_engine(trained.database_url)
    sessions = make_session_factory(engine)
    try:
        events = insert_decisions(engine, 3, built=True)
        with session_scope(sessions) as session:
            for i, event in enumerate(events):
                session.add(
                    LiveTransition(
                        event_id=event,
                        state=encode_state(STATE),
                        action_index=i,
                        reward=1.0,
                        next_state=None,
                        done=True,
                        demonstration=i < 2,  # two of the incumbent's, one of the model's
                    )
                )
        with sessions() as session:
            catalogue = load_catalogue(session)
        loader = ReplayLoader(trained, engine, sessions)
        logged = new_agent(trained, catalogue.n_actions)
        logged_only = loader.fill(logged, catalogue)  # for the count of logged demonstrations
        agent = new_agent(trained, catalogue.n_actions)
        bounded = trained.model_copy(update={"apprentice_max_demonstrations": 1})
        filled = ReplayLoader(bounded, engine, sessions).fill(agent, catalogue)
        # The bound keeps the oldest live demonstration only; the model's transition is in the agent part.
        assert filled.demonstrations == logged_only.demonstrations - 1
        assert agent.n_demonstrations == logged.n_demonstrations - 1
        assert (filled.live, agent.n_agent_transitions) == (1, 1)
        assert logged.n_agent_transitions == 1 and live_demos.tally(logged).added == 2
        assert agent.replay.demo.actions[agent.replay.demo_size - 1] == 0
    finally:
        engine.dispose()
