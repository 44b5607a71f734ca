"""One run: one arm, one task, one seed, returning plain Python data (learning curve and evaluations)."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch.nn import functional as F

from agent import DQfDAgent, DQfDConfig, Episode
from agent.networks import DuelingQNetwork

from .demonstrators import DemoEpisode
from .peer_common import evaluate as evaluate_episodes
from .settings import Budget, dqfd_config, uses_demonstrations

EVAL_SEED = 1_000_000
"""Evaluation episodes reset from seeds EVAL_SEED + k, the same for every arm (common random numbers)."""


def to_episodes(demos: list[DemoEpisode]) -> list[Episode]:
    """Demonstrations as the agent's :class:`agent.Episode` (a truncated episode keeps its final state)."""
    return [Episode(d.states, d.actions, d.rewards, d.terminated, final_state=d.final_state) for d in demos]


def evaluate(policy, env_id: str, episodes: int) -> list[float]:
    """Returns of ``episodes`` greedy episodes of ``policy(obs) -> action``, reset from EVAL_SEED + k."""
    return evaluate_episodes(policy, env_id, episodes, EVAL_SEED)


def greedy(net: torch.nn.Module):
    def policy(obs: np.ndarray) -> int:
        with torch.no_grad():
            return int(net(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)).argmax(1).item())

    return policy


def run_imitation(env_id: str, budget: Budget, demos: list[DemoEpisode], seed: int) -> dict[str, Any]:
    """The paper's imitation baseline: the same dueling network, trained by cross-entropy to predict the
    demonstrator's action (Q-values as logits) plus the same L2 penalty; no TD loss, no online learning."""
    cfg = dqfd_config("imitation", budget.pretrain_updates)
    env = gym.make(env_id)
    state_dim, n_actions = env.observation_space.shape[0], int(env.action_space.n)
    env.close()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DuelingQNetwork(state_dim, n_actions, cfg.hidden_sizes)
    states = torch.as_tensor(np.concatenate([d.states for d in demos]))
    actions = torch.as_tensor(np.concatenate([d.actions for d in demos]))
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    started = time.perf_counter()
    for _ in range(budget.pretrain_updates):
        idx = torch.randint(0, states.shape[0], (cfg.batch_size,), generator=gen)
        loss = F.cross_entropy(net(states[idx]), actions[idx])
        loss = loss + cfg.lambda_l2 * sum((p**2).sum() for p in net.parameters())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        accuracy = float((net(states).argmax(1) == actions).float().mean())
    returns = evaluate(greedy(net), env_id, budget.eval_episodes)
    return {
        "start_eval": returns,
        "final_eval": returns,
        "episodes": [],
        "train_accuracy": accuracy,
        "pretrain_seconds": seconds,
        "online_seconds": 0.0,
        "updates": budget.pretrain_updates,
    }


def run_td(
    arm: str,
    env_id: str,
    budget: Budget,
    demos: list[DemoEpisode],
    seed: int,
    config: DQfDConfig | None = None,
) -> dict[str, Any]:
    """DQfD, PDD DQN or an ablation: (pretraining, then) ``budget.env_steps`` online steps, 1 update each.

    ``config`` replaces the arm's configuration (:func:`dqfd_config`) whole, for studies that vary it
    (benchmarks/sensitivity.py); the budget still sets the pretraining updates and online steps."""
    with_demos = uses_demonstrations(arm)
    pretrain = budget.pretrain_updates if with_demos else 0
    cfg = dqfd_config(arm, pretrain + budget.env_steps) if config is None else config
    env = gym.make(env_id)
    state_dim, n_actions = env.observation_space.shape[0], int(env.action_space.n)
    agent = DQfDAgent(state_dim, n_actions, cfg, seed=seed)
    pretrain_seconds = 0.0
    pretrain_final: dict[str, float] = {}
    if with_demos:
        agent.add_demonstration_episodes(to_episodes(demos))
        summary = agent.pretrain(pretrain)
        pretrain_seconds = summary["seconds"]
        pretrain_final = summary["final"]
    policy = lambda obs: agent.act(obs, epsilon=0.0)  # noqa: E731
    start_eval = evaluate(policy, env_id, budget.eval_episodes)

    episodes: list[tuple[int, float]] = []  # (environment steps when the episode ended, its return)
    obs, _ = env.reset(seed=seed)
    total = 0.0
    started = time.perf_counter()
    for step in range(1, budget.env_steps + 1):
        action = agent.act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        agent.observe(obs, action, float(reward), next_obs, terminated, truncated=truncated)
        total += float(reward)
        if agent.n_demonstrations + agent.n_agent_transitions >= cfg.batch_size:
            agent.train_step()
        if terminated or truncated:
            episodes.append((step, total))
            total = 0.0
            obs, _ = env.reset()
        else:
            obs = next_obs
    online_seconds = time.perf_counter() - started
    env.close()
    final_eval = evaluate(policy, env_id, budget.eval_episodes)
    return {
        "start_eval": start_eval,
        "final_eval": final_eval,
        "episodes": episodes,
        "pretrain_final_losses": pretrain_final,
        "pretrain_seconds": pretrain_seconds,
        "online_seconds": online_seconds,
        "updates": agent.n_updates,
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Entry point of a worker process: ``job`` has arm, env_id, budget, demos, seed."""
    torch.set_num_threads(1)
    torch.manual_seed(job["seed"])
    started = time.perf_counter()
    if job["arm"] == "imitation":
        result = run_imitation(job["env_id"], job["budget"], job["demos"], job["seed"])
    else:
        result = run_td(job["arm"], job["env_id"], job["budget"], job["demos"], job["seed"])
    result.update(arm=job["arm"], env_id=job["env_id"], seed=job["seed"])
    result["seconds"] = time.perf_counter() - started
    return result
