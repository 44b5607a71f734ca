"""A catalogue that changes: fixed-head DQfD retrained daily vs the feature DQfD (issue 15).

The simulator's catalogue churns (``simulator/churn.py``, dynamics in ``docs/simulator.md``, "Catalogue
churn"): every day about 10 of ~100 items retire and about 10 new ones arrive, described by their public
features (topic mix, appeal, quality). Both DQfD agents are pretrained on the logging expert's logs of day 0
and then serve the same users, day by day, while the catalogue changes:

- ``fixed``: the fixed-head DQfD (``agent.DQfDAgent``, one output per item), retrained every night as the
  service's retrain job does (``service/learning/job_runner.py``): a fresh agent over the items that existed
  at retrain time, filled with the demonstrations and its own transitions so far, ``retrain_steps``
  pretraining updates then ``replay_updates`` updates over both. An item that arrives during a day is not in
  its head until the next retrain; in between it learns online as in ``offline_to_online.py``;
- ``feature``: the feature DQfD (``agent.ItemDQfDAgent``, Q(s, a) = f(s, x_a)), pretrained once, learning
  online; each morning's new items are added with ``add_items`` and can be served at once;
- ``expert``: the logging policy, which knows only the items it has logs for (arrived at least a day ago);
- ``oracle``: the hidden-state reference, knowing every live item.

Every arm plays the same sessions (users) of every day, the DQfD arms with ε = 0.01 as the service does.
Reported per day: mean session return on all items (and its ratio to the expert's, per seed, 95% interval
over seeds), the share of recommendations and of return (clicks) that new items get on their first day,
and the share of new items served on their first day (all new items, and the "good" ones: those the oracle
serves on their first day to the same users).

    nice -n 10 .venv/bin/python benchmarks/churn.py              # full run (3 seeds)
    .venv/bin/python benchmarks/churn.py --quick                 # CI smoke test, < 60 s on one core
    nice -n 10 .venv/bin/python benchmarks/churn.py --service-agent --stem churn_service_agent  # service's
    .venv/bin/python benchmarks/churn.py --rerender benchmarks/results/churn.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.command_line import command_line  # noqa: E402
from simulator import SimulatorConfig  # noqa: E402
from simulator.churn import ChurnConfig, ChurnEnv, ChurnSchedule, KnownItemsPolicy, generate_churn  # noqa: E402
from simulator.evaluate import session_seeds  # noqa: E402
from simulator.logs import generate_logs, logs_to_arrays  # noqa: E402
from simulator.policies import ExpertPolicy, OraclePolicy, Policy  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("expert", "oracle", "fixed", "feature")
LABELS = {
    "feature": "feature DQfD (ItemDQfDAgent, add_items)",
    "fixed": "fixed-head DQfD (retrained daily)",
    "expert": "logging expert (known items only)",
    "oracle": "oracle (hidden state)",
}
SESSION_SEED_BASE = 3_000_000
"""Day d of seed s plays users ``session_seeds(SESSION_SEED_BASE + 1000 * s + d, sessions_per_day)``; the
expert's logs come from master seed s (offline_to_online's convention): disjoint user streams."""


@dataclass
class Settings:
    """One run's budget; the agents' settings are offline_to_online.py's (the service-like ones)."""

    seeds: int = 3
    days: int = 10
    sessions_per_day: int = 500
    """A day's sessions; 10 days of 500 = 5,000 online sessions per arm and seed (offline_to_online.py's
    DQfD first reached +10% over the expert after 5,000 sessions; the run fits ~30 minutes on one core
    with the feature agent's exact losses)."""
    arrival_rate: float = 10.0
    """Mean new items per day (``ChurnConfig.arrival_rate``)."""
    retire_prob: float = 0.1
    """Daily retirement probability of a live item (``ChurnConfig.retire_prob``)."""
    demo_sessions: int = 2000
    """Expert-logged sessions of day 0 (about 21k transitions), as offline_to_online.py."""
    pretrain_steps: int = 2000
    """Pretraining updates of both agents on the logs (offline_to_online.py uses 5,000; 2,000 already
    brings both to the expert's level here and keeps the run within budget)."""
    retrain_steps: int = 1500
    """Pretraining updates of each nightly retrain of the fixed-head agent (a fresh network each night)."""
    replay_updates: int = 500
    """Updates over demonstrations and its own transitions after each retrain's pretraining (the service's
    retrain parameter ``replay_updates``): the retrained head re-learns from the days it served."""
    first_sessions: int = 100
    """The "from the first session" measure: mean return over day 1's first this many sessions."""
    train_every: int = 8
    """One gradient update per this many online environment steps (offline_to_online.py's)."""
    updates_per_step: int = 1
    """Gradient updates each time ``train_every`` steps have passed (``--service-agent``: the service's
    ``DQFD_UPDATES_PER_TRANSITION``, with ``train_every`` 1)."""
    service_agent: bool = False
    """``--service-agent``: both DQfD arms built as the service builds them with default settings
    (:func:`service_agent_configs`); the agent fields below are then the service's, for the report."""
    parallel_envs: int = 16
    """Sessions stepped in lockstep (batched acting); transitions are stored session by session."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """Fixed-head trunk, and the feature network's state tower (equal capacity for the state)."""
    embedding_dim: int = 32
    """Feature network: length of the state and item vectors (ItemNetworkConfig's default is 64; 32 for
    a catalogue of ~100 items described by 7 features, and half the cost per scored item)."""
    item_hidden: tuple[int, ...] = (128,)
    cross_hidden: tuple[int, ...] = (64,)
    loss_items: int = 0
    """Feature network: items per row in J_E's max and the bootstrap argmax (0: every allowed item, exact;
    K: a_E, ``hard_items`` retrieved and a uniform sample, ItemNetworkConfig.loss_items)."""
    hard_items: int = 8
    batch_size: int = 64
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    n_step: int = 10
    target_update_period: int = 1000
    """offline_to_online.py's and overrule_demonstrator.py's target period."""
    epsilon: float = 0.01
    arms: tuple[str, ...] = ARMS
    quick: bool = False


def quick_settings() -> Settings:
    """``--quick``: the CI smoke test (tiny budgets; checks the pipeline, not the targets)."""
    return Settings(
        seeds=2,
        days=2,
        sessions_per_day=24,
        demo_sessions=60,
        pretrain_steps=60,
        retrain_steps=30,
        replay_updates=10,
        first_sessions=8,
        hidden_sizes=(32, 32),
        embedding_dim=16,
        item_hidden=(16,),
        cross_hidden=(16,),
        batch_size=16,
        target_update_period=50,
        quick=True,
    )


# --------------------------------------------------------------------------------------------- data
def item_features(schedule: ChurnSchedule, start: int, stop: int) -> np.ndarray:
    """Public features of items ``[start, stop)``: topic mix, appeal, quality (as items.csv has them)."""
    c = schedule.catalogue
    return np.column_stack([c.topics[start:stop], c.appeal[start:stop], c.quality[start:stop]]).astype(
        np.float32
    )


def widen(masks: np.ndarray, width: int) -> np.ndarray:
    """Masks padded with False to ``width`` columns (items that did not exist were not allowed)."""
    out = np.zeros((masks.shape[0], width), dtype=bool)
    out[:, : masks.shape[1]] = masks
    return out


def service_agent_configs(n_items: int) -> tuple[Any, Any, int]:
    """What the service builds with default settings (``Settings(_env_file=None)``): the DQfDConfig of
    both networks (service.learning.agents.agent_config), the feature network's ItemNetworkConfig for a
    catalogue of ``n_items`` (service.learning.item_agents.network_config: the loss-items rule) and the
    updates per online transition (service/learning/online.py)."""
    from service.learning import agents, item_agents
    from service.settings import Settings as ServiceSettings

    settings = ServiceSettings(_env_file=None)
    return (
        agents.agent_config(settings),
        item_agents.network_config(settings, n_items),
        settings.updates_per_transition,
    )


def use_service_agent(s: Settings) -> None:
    """Put ``s`` on the service's agent (``--service-agent``): its pretraining budget, ε, update rate, and
    (for the report) its DQfDConfig and item network fields; the budgets of the run stay as given."""
    from service.settings import Settings as ServiceSettings

    config, network, updates = service_agent_configs(SimulatorConfig().n_items)
    s.service_agent = True
    s.pretrain_steps = ServiceSettings(_env_file=None).pretrain_steps
    s.train_every, s.updates_per_step = 1, updates
    s.hidden_sizes, s.batch_size, s.learning_rate = (
        tuple(config.hidden_sizes),
        config.batch_size,
        config.learning_rate,
    )
    s.gamma, s.n_step, s.epsilon = config.gamma, config.n_step, config.epsilon
    s.target_update_period = config.target_update_period
    s.embedding_dim, s.item_hidden, s.cross_hidden = (
        network.embedding_dim,
        network.item_hidden,
        network.cross_hidden,
    )
    s.loss_items, s.hard_items = network.loss_items or 0, network.hard_items


def _agent_config(s: Settings, total_updates: int) -> Any:
    from agent import DQfDConfig

    if s.service_agent:
        return service_agent_configs(0)[0]
    return DQfDConfig(
        gamma=s.gamma,
        n_step=s.n_step,
        batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        target_update_period=s.target_update_period,
        replay_capacity=max(10_000, s.days * s.sessions_per_day * 25),
        hidden_sizes=tuple(s.hidden_sizes),
        epsilon=s.epsilon,
        priority_beta_anneal_updates=max(1, total_updates),
        pretrain_steps=s.pretrain_steps,
    )


# ------------------------------------------------------------------------------------------- actors
class Actor:
    """What an arm does: start a day, choose actions for a batch of sessions, learn from ended ones."""

    def start_day(self, day: int, envs: list[ChurnEnv]) -> None:
        """Called before the day's first session, with the day's environments."""

    def act(self, rows: list[int], states: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Actions of the sessions in environments ``rows`` (states and masks stacked in that order)."""
        raise NotImplementedError

    def end_session(self, transitions: list[tuple]) -> None:
        """A session ended: its transitions ``(s, a, r, s', terminated, mask, next_mask, truncated)``."""

    def stepped(self) -> None:
        """One environment step was taken (drives the learners' update schedule)."""


class PolicyActor(Actor):
    """The expert (known items only) or the oracle, one policy per environment."""

    def __init__(self, arm: str, schedule: ChurnSchedule, seed: int) -> None:
        self.arm, self.schedule = arm, schedule
        self.rng = np.random.default_rng([seed, 11])
        self.policies: list[Policy] = []

    def start_day(self, day: int, envs: list[ChurnEnv]) -> None:
        """Build the day's policies (the expert is rebuilt nightly on the items it has logs for)."""
        if self.arm == "oracle":
            self.policies = [OraclePolicy(env) for env in envs]
        else:
            expert = ExpertPolicy(envs[0].config, envs[0].catalogue)
            shared = KnownItemsPolicy(expert, self.schedule.known_to_expert(day))
            self.policies = [shared] * len(envs)

    def act(self, rows: list[int], states: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Each session's policy samples its action."""
        return np.array(
            [self.policies[i].act(states[r], masks[r], self.rng)[0] for r, i in enumerate(rows)],
            dtype=np.int64,
        )


class LearnerActor(Actor):
    """Shared by both DQfD arms: ε-greedy acting and one update per ``train_every`` steps."""

    def __init__(self, s: Settings, seed: int) -> None:
        self.s = s
        self.rng = np.random.default_rng([seed, 5])
        self.since_update = 0
        self.agent: Any = None

    def explore(self, actions: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Replace each action by a uniform allowed one with probability ε."""
        for r in range(actions.shape[0]):
            if self.rng.random() < self.s.epsilon:
                actions[r] = int(self.rng.choice(np.flatnonzero(masks[r])))
        return actions

    def stepped(self) -> None:
        """One update per ``train_every`` environment steps once a batch of own transitions exists."""
        self.since_update += 1
        while self.since_update >= self.s.train_every and self.agent.n_observed >= self.s.batch_size:
            for _ in range(self.s.updates_per_step):
                self.agent.train_step()
            self.since_update -= self.s.train_every


class FixedHeadActor(LearnerActor):
    """``agent.DQfDAgent`` with one output per item known at its last (nightly) retrain."""

    def __init__(self, s: Settings, seed: int, schedule: ChurnSchedule, demos: Any) -> None:
        super().__init__(s, seed)
        self.seed, self.schedule, self.demos = seed, schedule, demos
        self.history: list[tuple] = []
        """Its own transitions, masks as wide as the head that saw them (widened at retrains)."""
        self.retrains: list[dict[str, float]] = []
        self.agent = self._fresh(schedule.n_items_on(0), s.pretrain_steps, 0)

    def _fresh(self, n_head: int, steps: int, replay_updates: int) -> Any:
        from agent import DQfDAgent

        s = self.s
        total = s.pretrain_steps + s.days * (s.retrain_steps + s.replay_updates + s.sessions_per_day * 2)
        started = time.perf_counter()
        agent = DQfDAgent(
            self.schedule.sim_config.obs_dim, n_head, _agent_config(s, total), seed=self.seed * 1000 + n_head
        )
        d = self.demos
        agent.add_demonstrations(
            d.states, d.actions, d.rewards, d.dones, episode_ids=d.episode_ids, masks=widen(d.masks, n_head)
        )
        for obs, a, r, nxt, term, mask, next_mask, trunc in self.history[-agent.config.replay_capacity :]:
            wide = widen(np.stack([mask, next_mask]), n_head)
            agent.observe(obs, a, r, nxt, term, mask=wide[0], next_mask=wide[1], truncated=trunc)
        agent.pretrain(steps)
        for _ in range(replay_updates if agent.n_observed >= s.batch_size else 0):
            agent.train_step()
        self.retrains.append(
            {"head": n_head, "own_transitions": agent.n_observed, "seconds": time.perf_counter() - started}
        )
        return agent

    @property
    def n_head(self) -> int:
        """Outputs of the current head: the items that existed at the last retrain."""
        return int(self.agent.n_actions)

    def start_day(self, day: int, envs: list[ChurnEnv]) -> None:
        """Nightly retrain before every day but the first (which the pretrained agent serves)."""
        if day >= 2:
            n_head = self.schedule.n_items_on(day - 1)
            self.agent = self._fresh(n_head, self.s.retrain_steps, self.s.replay_updates)

    def act(self, rows: list[int], states: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Greedy over the allowed items in its head (ε-uniform among them)."""
        head = masks[:, : self.n_head]
        usable = head.any(axis=1)
        # A session that has seen every allowed item of the head gets an allowed item from outside it,
        # uniformly (a service without a score for it); end_session stops learning from that session there.
        safe = np.where(usable[:, None], head, True)
        actions = self.explore(np.argmax(self.agent.q_values(states, safe), axis=1), head | ~usable[:, None])
        for r in np.flatnonzero(~usable):
            actions[r] = int(self.rng.choice(np.flatnonzero(masks[r])))
        return actions

    def end_session(self, transitions: list[tuple]) -> None:
        """Store and observe the session's transitions with head-wide masks."""
        n = self.n_head
        kept = []
        for obs, a, r, nxt, term, mask, next_mask, trunc in transitions:
            if a >= n:  # served from outside the head: the session is cut (truncated) before that step
                if kept:
                    kept[-1] = (*kept[-1][:4], False, kept[-1][5], kept[-1][6], True)
                break
            kept.append((obs, a, r, nxt, term, mask[:n].copy(), next_mask[:n].copy(), trunc))
        for obs, a, r, nxt, term, mask, next_mask, trunc in kept:
            self.history.append((obs, a, r, nxt, term, mask, next_mask, trunc))
            self.agent.observe(obs, a, r, nxt, term, mask=mask, next_mask=next_mask, truncated=trunc)


class FeatureActor(LearnerActor):
    """``agent.ItemDQfDAgent`` over the schedule's items; new items are added each morning."""

    def __init__(self, s: Settings, seed: int, schedule: ChurnSchedule, demos: Any) -> None:
        super().__init__(s, seed)
        from agent.item_dqfd import ItemDQfDAgent, ItemNetworkConfig
        from agent.item_table import ItemTable

        self.schedule = schedule
        n0 = schedule.n_items_on(0)
        table = ItemTable(7, item_features(schedule, 0, n0))
        network = (
            service_agent_configs(n0)[1]
            if s.service_agent
            else ItemNetworkConfig(
                embedding_dim=s.embedding_dim,
                state_hidden=tuple(s.hidden_sizes),
                item_hidden=tuple(s.item_hidden),
                cross_hidden=tuple(s.cross_hidden),
                loss_items=s.loss_items or None,
                hard_items=min(s.hard_items, s.loss_items - 1) if s.loss_items else s.hard_items,
            )
        )
        total = s.pretrain_steps + s.days * s.sessions_per_day * 2
        self.agent = ItemDQfDAgent(
            schedule.sim_config.obs_dim, table, _agent_config(s, total), network_config=network, seed=seed
        )
        d = demos
        self.agent.add_demonstrations(
            d.states, d.actions, d.rewards, d.dones, episode_ids=d.episode_ids, masks=d.masks
        )
        started = time.perf_counter()
        self.agent.pretrain(s.pretrain_steps)
        self.pretrain_seconds = time.perf_counter() - started
        self.live = np.arange(n0)

    def start_day(self, day: int, envs: list[ChurnEnv]) -> None:
        """Add the day's new items (their features only; no retrain)."""
        n = self.schedule.n_items_on(day)
        if n > len(self.agent.items):
            self.agent.add_items(item_features(self.schedule, len(self.agent.items), n))
            if self.s.service_agent:  # as the service's follow_catalogue: the loss rule for the new size
                from service.learning.item_agents import apply_loss_rule

                apply_loss_rule(self.agent)
        self.live = np.flatnonzero(self.schedule.live(day))

    def act(self, rows: list[int], states: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Greedy over the allowed live items, scored by features (ε-uniform among them)."""
        q = self.agent.q_values(states, self.live)
        q = np.where(masks[:, self.live], q, -np.inf)
        actions = self.live[np.argmax(q, axis=1)]
        return self.explore(actions, masks)

    def end_session(self, transitions: list[tuple]) -> None:
        """Observe the session's transitions (dense masks become the agent's compact allowed sets)."""
        for obs, a, r, nxt, term, mask, next_mask, trunc in transitions:
            self.agent.observe(obs, a, r, nxt, term, mask=mask, next_mask=next_mask, truncated=trunc)


# ---------------------------------------------------------------------------------------------- play
def play_day(
    schedule: ChurnSchedule, day: int, seeds: list[int], actor: Actor, parallel: int
) -> dict[str, Any]:
    """Play the day's sessions (users ``seeds``) with ``actor``, ``parallel`` sessions in lockstep.

    Returns the per-session returns, steps, steps on new items and clicks on new items, and the new items
    served (a sorted list of indices).
    """
    envs = [schedule.env(day) for _ in range(min(parallel, len(seeds)))]
    actor.start_day(day, envs)
    new = schedule.new(day)
    logged = schedule.arrival_day[: new.shape[0]] == 0  # items of day 0, the demonstrations' catalogue
    n = len(seeds)
    returns, steps = np.zeros(n), np.zeros(n, dtype=np.int64)
    new_steps, new_clicks = np.zeros(n, dtype=np.int64), np.zeros(n)
    unlogged_steps = np.zeros(n, dtype=np.int64)
    served_new: set[int] = set()
    obs: list[Any] = [None] * len(envs)
    masks: list[Any] = [None] * len(envs)
    session: list[int] = [-1] * len(envs)
    buffers: list[list[tuple]] = [[] for _ in envs]
    next_user = 0

    def start(i: int) -> None:
        nonlocal next_user
        if next_user < n:
            obs[i], info = envs[i].reset(seed=seeds[next_user])
            masks[i], session[i] = info["action_mask"], next_user
            next_user += 1
        else:
            obs[i] = None

    for i in range(len(envs)):
        start(i)
    while True:
        rows = [i for i in range(len(envs)) if obs[i] is not None]
        if not rows:
            break
        actions = actor.act(rows, np.stack([obs[i] for i in rows]), np.stack([masks[i] for i in rows]))
        for r, i in enumerate(rows):
            a = int(actions[r])
            o, reward, term, trunc, info = envs[i].step(a)
            k = session[i]
            returns[k] += reward
            steps[k] += 1
            unlogged_steps[k] += int(not logged[a])
            if new[a]:
                new_steps[k] += 1
                new_clicks[k] += reward
                served_new.add(a)
            buffers[i].append((obs[i], a, float(reward), o, bool(term), masks[i], info["action_mask"], trunc))
            obs[i], masks[i] = o, info["action_mask"]
            actor.stepped()
            if term or trunc:
                actor.end_session(buffers[i])
                buffers[i] = []
                start(i)
    return {
        "returns": returns.tolist(),
        "steps": steps.tolist(),
        "new_steps": new_steps.tolist(),
        "new_clicks": new_clicks.tolist(),
        "unlogged_steps": unlogged_steps.tolist(),
        "served_new": sorted(served_new),
        "new_items": np.flatnonzero(new).tolist(),
    }


def day_seeds(seed: int, day: int, s: Settings) -> list[int]:
    """The users of ``day`` for ``seed``: the same for every arm."""
    return session_seeds(SESSION_SEED_BASE + 1000 * seed + day, s.sessions_per_day)


def run_arm(arm: str, seed: int, s: Settings, config: SimulatorConfig) -> dict[str, Any]:
    """One arm on one seed: pretraining (the DQfD arms) then days ``1 … days``."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    schedule = generate_churn(config, churn_config(s, seed))
    started = time.perf_counter()
    result: dict[str, Any] = {"arm": arm, "seed": seed, "days": []}
    if arm in ("fixed", "feature"):
        df = generate_logs("expert", s.demo_sessions, seed=seed, config=config, include_masks=True)
        demos = logs_to_arrays(df, n_items=config.n_items)
        actor: Actor = (FixedHeadActor if arm == "fixed" else FeatureActor)(s, seed, schedule, demos)
    else:
        actor = PolicyActor(arm, schedule, seed)
    result["pretrain_seconds"] = time.perf_counter() - started
    for day in range(1, s.days + 1):
        record = play_day(schedule, day, day_seeds(seed, day, s), actor, s.parallel_envs)
        record["day"] = day
        record["seconds"] = time.perf_counter() - started
        result["days"].append(record)
        print(
            f"  {arm} seed {seed} day {day}: return {np.mean(record['returns']):.2f}, "
            f"new-item share {sum(record['new_steps']) / max(1, sum(record['steps'])):.3f} "
            f"[{record['seconds']:.0f} s]",
            flush=True,
        )
    if isinstance(actor, FixedHeadActor):
        result["retrains"] = actor.retrains
    result["seconds"] = time.perf_counter() - started
    return result


def churn_config(s: Settings, seed: int) -> ChurnConfig:
    """The churn of a run: the settings' rates and days, the seed's own schedule."""
    return ChurnConfig(
        days=s.days,
        sessions_per_day=s.sessions_per_day,
        arrival_rate=s.arrival_rate,
        retire_prob=s.retire_prob,
        seed=seed,
    )


def feature_available() -> str | None:
    """None when ``agent.ItemDQfDAgent`` imports, else why not."""
    try:
        from agent.item_dqfd import ItemDQfDAgent  # noqa: F401
    except ImportError as exc:
        return f"agent.item_dqfd.ItemDQfDAgent is not importable ({exc}); the feature arm was skipped"
    return None


# ----------------------------------------------------------------------------------------- summary
def mean_ci(values: list[float]) -> list[float]:
    """Mean and 95% half-width (Student t over seeds; NaN with one seed)."""
    t95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return [float(v.mean()) if v.size else float("nan"), float("nan")]
    return [float(v.mean()), float(t95.get(v.size - 1, 1.96) * v.std(ddof=1) / np.sqrt(v.size))]


def day_metrics(record: dict[str, Any], good: set[int]) -> dict[str, float]:
    """A day's numbers for one arm and seed; ``good`` = the new items the oracle served that day."""
    steps, clicks = sum(record["steps"]), sum(record["returns"])
    served = set(record["served_new"])
    new_items = record["new_items"]
    metrics = {
        "return": float(np.mean(record["returns"])),
        "new_rec_share": sum(record["new_steps"]) / max(1, steps),
        "new_return_share": sum(record["new_clicks"]) / clicks if clicks else 0.0,
        "new_items_served": len(served) / len(new_items) if new_items else float("nan"),
        "good_new_served": len(served & good) / len(good) if good else float("nan"),
    }
    if "unlogged_steps" in record:
        metrics["unlogged_rec_share"] = sum(record["unlogged_steps"]) / max(1, steps)
    return metrics


def aggregate(runs: list[dict[str, Any]], s: Settings) -> dict[str, Any]:
    """Per arm and day: means and 95% intervals over seeds, ratios to the expert per seed, and targets."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    arms = [a for a in ARMS if any(r["arm"] == a for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    days = list(range(1, s.days + 1))
    per: dict[str, dict[int, dict[str, list[float]]]] = {a: {d: {} for d in days} for a in arms}
    for arm in arms:
        for seed in seeds:
            run, expert, oracle = by.get((arm, seed)), by.get(("expert", seed)), by.get(("oracle", seed))
            if run is None:
                continue
            for d in days:
                rec = run["days"][d - 1]
                good = set(oracle["days"][d - 1]["served_new"]) if oracle else set()
                m = day_metrics(rec, good)
                if expert is not None:
                    m["ratio"] = m["return"] / float(np.mean(expert["days"][d - 1]["returns"]))
                for key, value in m.items():
                    per[arm][d].setdefault(key, []).append(value)
    curves = {
        arm: [
            {"day": d, **{k: mean_ci([x for x in v if np.isfinite(x)]) for k, v in per[arm][d].items()}}
            for d in days
        ]
        for arm in arms
    }
    summary: dict[str, Any] = {"arms": arms, "seeds": seeds, "curves": curves}
    # "From the first session": day 1's first sessions, ratio to the expert on the same users per seed.
    first: dict[str, list[float]] = {}
    for arm in arms:
        vals = []
        for seed in seeds:
            run, expert = by.get((arm, seed)), by.get(("expert", seed))
            if run and expert:
                k = s.first_sessions
                vals.append(
                    np.mean(run["days"][0]["returns"][:k]) / np.mean(expert["days"][0]["returns"][:k])
                )
        first[arm] = mean_ci(vals) if vals else [float("nan")] * 2
    summary["first_sessions_ratio"] = first
    if "feature" in arms and "fixed" in arms:
        diffs = [
            np.mean(by[("feature", k)]["days"][-1]["returns"])
            - np.mean(by[("fixed", k)]["days"][-1]["returns"])
            for k in seeds
            if ("feature", k) in by and ("fixed", k) in by
        ]
        summary["feature_minus_fixed_last_day"] = mean_ci(diffs)
    return summary


def target_lines(summary: dict[str, Any], s: Settings) -> list[str]:
    """PASS/FAIL lines for the issue's targets (feature arm)."""
    curves = summary["curves"]
    if "feature" not in curves or "expert" not in curves:
        return ["SKIPPED: the feature arm did not run, so the issue's targets were not measured"]
    feat = curves["feature"]
    first = summary["first_sessions_ratio"]["feature"]
    worst = min(p["ratio"][0] for p in feat)
    last = feat[-1]["ratio"]
    lines = [
        f"{'PASS' if first[0] >= 0.95 else 'FAIL'}: feature DQfD over day 1's first {s.first_sessions} "
        f"sessions = {100 * first[0]:.1f}% of the expert on the same users (target ≥ 95%)",
        f"{'PASS' if worst >= 0.95 else 'FAIL'}: feature DQfD's lowest daily mean = {100 * worst:.1f}% "
        "of the expert (target ≥ 95% every day)",
        f"{'PASS' if last[0] >= 1.10 else 'FAIL'}: feature DQfD on day {s.days} = {_pct(last)} of the expert "
        "(target ≥ 110%)",
    ]
    diff = summary.get("feature_minus_fixed_last_day")
    if diff is not None:
        lines.append(
            f"{'PASS' if diff[0] > 0 else 'FAIL'}: feature − fixed-head DQfD on day {s.days} = {_fmt(diff)} "
            "clicks per session (paired over seeds; target > 0)"
        )
    good = [p["good_new_served"][0] for p in feat if np.isfinite(p["good_new_served"][0])]
    if good:
        share = float(np.mean(good))
        lines.append(
            f"{'PASS' if share >= 0.5 else 'FAIL'}: the feature DQfD serves {100 * share:.0f}% of the new "
            "items the oracle serves on their first day, on that first day, with no retrain (target: "
            "recommended within their first day; pass at ≥ 50%)"
        )
    return lines


def _update_rate(s: Settings) -> str:
    """The online update rate in words ("one update per 8 steps")."""
    updates = "one update" if s.updates_per_step == 1 else f"{s.updates_per_step} updates"
    return f"{updates} per {'step' if s.train_every == 1 else f'{s.train_every} steps'}"


def _fmt(mc: list[float]) -> str:
    m, c = mc
    return f"{m:.2f} ± {c:.2f}" if np.isfinite(c) else f"{m:.2f}"


def _pct(mc: list[float]) -> str:
    m, c = mc
    return f"{100 * m:.1f}% ± {100 * c:.1f}" if np.isfinite(c) else f"{100 * m:.1f}%"


# ------------------------------------------------------------------------------------------- report
def write_report(
    summary: dict[str, Any],
    runs: list[dict[str, Any]],
    s: Settings,
    command: str,
    out_dir: Path,
    stem: str,
    elapsed: float,
    notes: list[str],
) -> list[str]:
    """``<stem>.md`` (tables, targets, command), ``<stem>.json`` (everything) and ``<stem>.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = target_lines(summary, s)
    curves, arms = summary["curves"], summary["arms"]
    days = [p["day"] for p in curves[arms[0]]]

    def table(key: str, fmt: Any, which: list[str]) -> list[str]:
        rows = ["| arm | " + " | ".join(f"day {d}" for d in days) + " |", "|---|" + "---:|" * len(days)]
        for arm in which:
            rows.append(f"| {LABELS[arm]} | " + " | ".join(fmt(p[key]) for p in curves[arm]) + " |")
        return rows

    learners = [a for a in ("feature", "fixed", "oracle") if a in arms]
    first = summary["first_sessions_ratio"]
    md = [
        "# A catalogue that changes: feature DQfD vs fixed-head DQfD under churn",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        f"Wall time {elapsed / 60:.1f} min on one core, {len(summary['seeds'])} seeds, {s.days} days of "
        f"{s.sessions_per_day} sessions (the same users for every arm), churn: Poisson({s.arrival_rate:g}) "
        f'arrivals and retirement probability {s.retire_prob:g} per day (docs/simulator.md, "Catalogue '
        f'churn"). Both DQfDs pretrained on {s.demo_sessions} expert-logged sessions of day 0 '
        f"({s.pretrain_steps} updates); the fixed head retrained every night ({s.retrain_steps} pretraining "
        f"+ {s.replay_updates} replay updates); online: {_update_rate(s)}, ε = "
        f"{s.epsilon:g}. Numbers are the online sessions themselves (what users got), mean ± 95% interval "
        "over seeds (Student t)."
        + (
            " Agents (`--service-agent`): both DQfD arms built as the service builds them with default "
            "settings: DQfDConfig = service.learning.agents.agent_config(Settings(_env_file=None)), the "
            "feature network = service.learning.item_agents.network_config for the catalogue's size (its "
            "loss-items rule re-applied after each add_items, as follow_catalogue does), "
            "DQFD_UPDATES_PER_TRANSITION updates per online transition; the values are in Settings below. "
            "Still this benchmark's, not the service's: the item features enter unscaled (the service "
            "z-scores them with a FeatureSpec fitted on the training catalogue, "
            "service/ingest/item_features.py), and the nightly retrain budget above."
            if s.service_agent
            else ""
        ),
        "",
        "## Targets",
        "",
        *[f"- {line}" for line in lines],
        "",
        "## Mean session return (clicks per session), all items",
        "",
        *table("return", _fmt, list(arms)),
        "",
        "## Ratio to the expert (per seed, same users)",
        "",
        *table("ratio", _pct, [a for a in arms if a != "expert"]),
        "",
        f"Over day 1's first {s.first_sessions} sessions: "
        + "; ".join(f"{LABELS[a]} {_pct(first[a])}" for a in arms if a != "expert")
        + ".",
        "",
        "## New items on their first day",
        "",
        "Share of recommendations that went to items in their first day:",
        "",
        *table("new_rec_share", _pct, list(arms)),
        "",
        "Share of the return (clicks) that came from items in their first day:",
        "",
        *table("new_return_share", _pct, list(arms)),
        "",
        "Share of the day's new items served at least once on their first day (all new items; then the "
        '"good" ones, those the oracle served on their first day to the same users):',
        "",
        *table("new_items_served", _pct, list(arms)),
        "",
        "The good ones only:",
        "",
        *table("good_new_served", _pct, [a for a in learners if a != "oracle"]),
        "",
        "How the arms meet a new item: the expert (rebuilt nightly) and the fixed head (retrained nightly) "
        "cannot serve it on its first day; the feature DQfD scores it by its features as soon as "
        "`add_items` has run. From its second day the item has an output in the fixed head, but no "
        "demonstrations: its Q-value is learned only from the head's own transitions, so it is served only "
        "once exploration and TD targets lift it above the logged items, which J_E keeps high, while the "
        "logged items retire one by one."
        + (
            " The last table shows how often each arm serves items that arrived after the logs."
            if "unlogged_rec_share" in curves[arms[0]][0]
            else ""
        ),
        "",
        *(
            [
                "Share of recommendations that went to items without demonstrations (arrived after day 0, "
                "whatever their age):",
                "",
                *table("unlogged_rec_share", _pct, list(arms)),
                "",
            ]
            if "unlogged_rec_share" in curves[arms[0]][0]
            else []
        ),
        *([*notes, ""] if notes else []),
        "## Settings",
        "",
        "```json",
        json.dumps(asdict(s), indent=1),
        "```",
        "",
        f"Plot: `{stem}.png` (ratio to the expert by day; share of recommendations to first-day items).",
    ]
    (out_dir / f"{stem}.md").write_text("\n".join(md) + "\n")
    payload = {
        "command": command,
        "settings": asdict(s),
        "summary": summary,
        "target_lines": lines,
        "notes": notes,
        "elapsed_seconds": elapsed,
        "runs": runs,
    }
    (out_dir / f"{stem}.json").write_text(_dump(payload))
    plot(summary, out_dir / f"{stem}.png")
    return lines


def _dump(payload: dict[str, Any]) -> str:
    """JSON with the summary indented and each run's per-session lists on one line (a tenth the size)."""
    head = json.dumps({k: v for k, v in payload.items() if k != "runs"}, indent=1)
    runs = ",\n".join("  " + json.dumps(r, separators=(",", ":")) for r in payload["runs"])
    return head[:-2] + ',\n "runs": [\n' + runs + "\n ]\n}\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Left: ratio to the expert by day (95% bands); right: share of recommendations to new items."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"feature": "C0", "fixed": "C1", "expert": "C3", "oracle": "C4"}
    for arm in summary["arms"]:
        pts = summary["curves"][arm]
        x = np.array([p["day"] for p in pts])
        for axis, key in ((ax, "ratio"), (ax2, "new_rec_share")):
            if key not in pts[0]:
                continue
            m = np.array([p[key][0] for p in pts])
            c = np.nan_to_num(np.array([p[key][1] for p in pts]))
            axis.plot(x, m, marker="o", ms=3, color=colors[arm], label=LABELS[arm])
            axis.fill_between(x, m - c, m + c, color=colors[arm], alpha=0.15)
    ax.axhline(1.10, ls=":", color="k", lw=1, label="+10% target")
    ax.axhline(0.95, ls="--", color="k", lw=0.8, label="95% target")
    ax.set_xlabel("day")
    ax.set_ylabel("mean session return / expert's")
    ax.set_title("Return on all items, relative to the expert")
    ax2.set_xlabel("day")
    ax2.set_ylabel("share of recommendations")
    ax2.set_title("Recommendations to items in their first day")
    for axis in (ax, ax2):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> tuple[Settings, argparse.Namespace]:
    """Settings from the command line (``--quick`` first, then any override)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke test (< 60 s on one core)")
    for f in fields(Settings):
        if f.name in ("quick", "arms") or f.type not in ("int", "float"):
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.type == "int" else float)
    p.add_argument("--arms", nargs="+", choices=ARMS)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--stem", default=None, help="output file stem (default churn, or churn_quick)")
    p.add_argument("--rerender", type=Path, help="rebuild the report from a saved results JSON")
    p.add_argument(
        "--service-agent",
        action="store_true",
        help="both DQfD arms as the service builds them with default settings (the agent fields and "
        "--pretrain-steps are then the service's; budgets stay as given)",
    )
    a = p.parse_args(argv)
    s = quick_settings() if a.quick else Settings()
    for f in fields(Settings):
        value = getattr(a, f.name, None)
        if value is not None and f.name not in ("quick", "arms"):
            setattr(s, f.name, value)
    if a.arms:
        s.arms = tuple(x for x in ARMS if x in a.arms)
    if a.service_agent:
        use_service_agent(s)
    return s, a


def main(argv: list[str] | None = None) -> list[str]:
    """Run (or rerender) the benchmark, write the report, print and return the target lines."""
    argv = sys.argv[1:] if argv is None else argv
    s, a = parse_args(argv)
    stem = a.stem or ("churn_quick" if s.quick else "churn")
    if a.rerender is not None:
        saved = json.loads(Path(a.rerender).read_text())
        settings = Settings(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["settings"].items()}
        )
        summary = aggregate(saved["runs"], settings)
        return write_report(
            summary,
            saved["runs"],
            settings,
            saved["command"],
            a.out_dir,
            stem,
            saved["elapsed_seconds"],
            saved.get("notes", []),
        )
    command = command_line("benchmarks/churn.py", argv)
    notes: list[str] = []
    arms = list(s.arms)
    if "feature" in arms and (why := feature_available()) is not None:
        arms.remove("feature")
        notes.append(f"Note: {why}.")
        print(notes[-1], flush=True)
    config = SimulatorConfig()
    started = time.perf_counter()
    runs = []
    lines: list[str] = []
    for seed in range(s.seeds):  # seed by seed, so a stopped run still compares the arms on equal seeds
        for arm in arms:
            runs.append(run_arm(arm, seed, s, config))
        # The report is rewritten after every seed: a run stopped early keeps its finished seeds.
        elapsed = time.perf_counter() - started
        done = notes + ([f"Partial: {seed + 1} of {s.seeds} seeds finished."] if seed + 1 < s.seeds else [])
        lines = write_report(aggregate(runs, s), runs, s, command, a.out_dir, stem, elapsed, done)
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    main()
