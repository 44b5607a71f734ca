"""The one hyperparameter set of every arm on every task, and the per-task budgets.

Only budgets differ between tasks (as in the paper, which used one setting for all 42 Atari games). Where a
value departs from the paper's Atari setting (agent/config.py defaults), the reason is next to it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent import DQfDConfig

ARMS = ("dqfd", "q_filter", "pdd_dqn", "imitation", "no_margin", "no_nstep")
"""DQfD as published; DQfD + Q-filter, the service's default (``DQfDConfig(q_filter=True)``: online, J_E
counts on a demonstration only while Q(s, a_E) >= max_a Q(s, a), [Nair et al. 2018]); prioritized dueling
double DQN with n-step (no demonstrations); supervised imitation; the ablations λ2 = 0 (no margin loss J_E)
and λ1 = 0 (no n-step loss J_n)."""

DQFD_VARIANTS = ("dqfd", "q_filter")
"""The arms whose claims are checked (each against PDD DQN, imitation, the λ2 = 0 ablation and the
demonstrator): the faithful DQfD and the variant the service runs by default."""

ARM_LABELS = {
    "dqfd": "DQfD",
    "q_filter": "DQfD + Q-filter (service default)",
    "pdd_dqn": "PDD DQN",
    "imitation": "Imitation",
    "no_margin": "DQfD λ2=0 (no margin)",
    "no_nstep": "DQfD λ1=0 (no n-step)",
    "sb3_dqn": "SB3 DQN (peer)",
    "ding_dqfd_default": "DI-engine DQfD, its defaults (peer)",
    "ding_dqfd_ours": "DI-engine DQfD, our settings (peer)",
}


@dataclass(frozen=True)
class Budget:
    """How much experience and computation one run of one arm gets on one task."""

    env_steps: int
    """Online environment steps (1 gradient update per step, the paper's rate)."""
    pretrain_updates: int
    """Updates on demonstrations before the first environment step (DQfD and its ablations), and the
    number of classification updates of the imitation arm."""
    early_steps: int
    """The early window: mean return over the first ``early_steps`` environment steps (area under the
    learning curve divided by the window)."""
    demo_episodes: int = 5
    """Demonstration episodes (the paper had 5 to 75 minutes of human play, 3 to 12 episodes per game)."""
    eval_episodes: int = 10
    """Episodes of each greedy evaluation (after pretraining, and at the end), from fixed reset seeds."""


BUDGETS: dict[str, Budget] = {
    "CartPole-v1": Budget(env_steps=25_000, pretrain_updates=10_000, early_steps=5_000),
    "Acrobot-v1": Budget(env_steps=25_000, pretrain_updates=10_000, early_steps=5_000),
    "MountainCar-v0": Budget(env_steps=25_000, pretrain_updates=10_000, early_steps=5_000),
    "LunarLander-v3": Budget(env_steps=50_000, pretrain_updates=10_000, early_steps=10_000),
}
"""Full run. Roughly 1/200 of the paper's 750k pretraining updates and a few thousandths of its 50M+ online
frames; chosen so that 4 tasks x 4 TD arms x 5 seeds, the imitation arm and the peers fit in about two hours
on two idle cores (an estimate; on a shared machine it takes longer, see docs/paper_reproduction.md)."""

QUICK_BUDGETS: dict[str, Budget] = {
    "CartPole-v1": Budget(
        env_steps=200, pretrain_updates=60, early_steps=100, demo_episodes=2, eval_episodes=2
    ),
}
"""--quick: a smoke test of the whole pipeline (numbers are meaningless)."""

TARGET_UPDATE_PERIOD = 500
"""Paper: 10,000 updates, with 750k pretraining updates and tens of millions of online steps. At our budgets
(10k pretraining updates, 25k-50k online) 10,000 would copy the target once or twice a run; 500 keeps the
ratio of target copies to updates in the range DQN implementations use on these tasks."""


def dqfd_config(arm: str, total_updates: int) -> DQfDConfig:
    """The agent's configuration for ``arm``: the paper's values (agent/config.py) except where noted.

    - ``target_update_period``: see :data:`TARGET_UPDATE_PERIOD`.
    - ``priority_beta_anneal_updates``: β anneals from 0.6 to 1 over the whole run ([PER]: "to 1 at the end
      of learning"), instead of over 10^6 updates that a run never reaches.
    - ``replay_capacity``: 10^5, above every budget, so like the paper's 10^6 nothing is evicted here; it
      only keeps memory small.
    The ``q_filter`` arm adds only ``q_filter=True`` (agent/config.py; the service's default), so any
    difference from ``dqfd`` is the Q-filter's.
    Everything else is the paper's: γ = 0.99, n = 10, λ1 = λ2 = 1, λ3 = 1e-5, margin 0.8, α = 0.4, β0 = 0.6,
    ε_d = 1, ε_a = 0.001, ε-greedy ε = 0.01, dueling double DQN, plus the library's documented choices
    (Adam 1e-4, batch 32, Huber TD, gradient-norm clip 10, 2x256 MLP).
    """
    base = DQfDConfig(
        target_update_period=TARGET_UPDATE_PERIOD,
        priority_beta_anneal_updates=max(1, total_updates),
        replay_capacity=100_000,
    )
    if arm in ("dqfd", "imitation"):
        return base
    if arm == "q_filter":
        return replace(base, q_filter=True)
    if arm == "pdd_dqn":
        return replace(base, lambda_margin=0.0)
    if arm == "no_margin":
        return replace(base, lambda_margin=0.0)
    if arm == "no_nstep":
        return replace(base, lambda_n=0.0)
    raise ValueError(f"unknown arm {arm!r}")


def uses_demonstrations(arm: str) -> bool:
    """Arms that get the demonstrations (and pretrain on them)."""
    return arm in ("dqfd", "q_filter", "imitation", "no_margin", "no_nstep")
