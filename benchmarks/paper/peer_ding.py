"""DI-engine's DQfD (di-engine 0.5.3), run in its own virtual environment (benchmarks/work/venv-ding).

Reads one JSON job from argv[1], prints one JSON line. DI-engine's own DQfD entry
(``ding.entry.serial_pipeline_dqfd``) draws its demonstrations from a trained expert *model*; to give it the
same demonstrations as our arms, this script drives DI-engine's own parts in the same order as that entry:
``DQFDPolicy`` (learn, collect and eval modes, its loss and optimizer), its n-step sample builder
(``_get_train_sample``) and its prioritized ``AdvancedReplayBuffer``.

Settings:

- ``default``: DI-engine's CartPole DQfD config
  (dizoo/classic_control/cartpole/config/cartpole_dqfd_config.py): 10 pretraining updates, 3-step returns,
  γ 0.97, half of each batch from a separate demonstration buffer (pho 0.5), batch 64, AdamW lr 1e-3, λ2 = 3,
  λ3 = 0, target copy every 100 updates, 3 updates per 8 environment steps, ε decaying exponentially from 0.95
  to 0.1 over 10,000 steps, encoder [128, 128, 64] with dueling head.
- ``ours``: as close to our settings as it allows: pretraining updates as ours, 10-step returns, γ 0.99,
  demonstrations and agent data in one prioritized buffer (α 0.4, β0 0.6) as in the paper, batch 32, lr 1e-4
  (its optimizer stays AdamW with weight decay λ3 = 1e-5, its form of the L2 term), λ1 = λ2 = 1, margin 0.8,
  target copy every 500 updates, 1 update per environment step, ε = 0.01, encoder [256, 256] with dueling
  head. Not available: the demonstration priority bonus ε_d and gradient-norm clipping.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

logging.disable(logging.WARNING)

from ding.model import DQN  # noqa: E402
from ding.policy import DQFDPolicy  # noqa: E402
from ding.utils import deep_merge_dicts  # noqa: E402
from ding.worker.replay_buffer import AdvancedReplayBuffer  # noqa: E402
from easydict import EasyDict  # noqa: E402

if __package__:  # imported from the project (benchmarks.paper.peer_ding)
    from .peer_common import Job, evaluate, serve, updates_per_second
else:  # run as a script in its own environment: this folder is sys.path[0]
    from peer_common import Job, evaluate, serve, updates_per_second

SETTINGS = {
    "default": {
        "nstep": 3,
        "gamma": 0.97,
        "batch": 64,
        "lr": 1e-3,
        "lambda1": 1.0,
        "lambda2": 3.0,
        "lambda3": 0.0,
        "target": 100,
        "pretrain": 10,
        "pho": 0.5,
        "n_sample": 8,
        "updates_per_collect": 3,
        "hidden": [128, 128, 64],
        "alpha": 0.6,
        "beta": 0.4,
        "eps": "exp",
    },
    "ours": {
        "nstep": 10,
        "gamma": 0.99,
        "batch": 32,
        "lr": 1e-4,
        "lambda1": 1.0,
        "lambda2": 1.0,
        "lambda3": 1e-5,
        "target": 500,
        "pretrain": None,
        "pho": None,
        "n_sample": 1,
        "updates_per_collect": 1,
        "hidden": [256, 256],
        "alpha": 0.4,
        "beta": 0.6,
        "eps": 0.01,
    },
}


def make_policy(s: dict, obs_dim: int, n_actions: int, seed: int) -> DQFDPolicy:
    torch.manual_seed(seed)
    cfg = deep_merge_dicts(
        DQFDPolicy.default_config(),
        EasyDict(
            dict(
                cuda=False,
                priority=True,
                priority_IS_weight=True,
                discount_factor=s["gamma"],
                nstep=s["nstep"],
                model=dict(
                    obs_shape=obs_dim,
                    action_shape=n_actions,
                    encoder_hidden_size_list=s["hidden"],
                    dueling=True,
                ),
                learn=dict(
                    batch_size=s["batch"],
                    learning_rate=s["lr"],
                    lambda1=s["lambda1"],
                    lambda2=s["lambda2"],
                    lambda3=s["lambda3"],
                    margin_function=0.8,
                    target_update_freq=s["target"],
                ),
            )
        ),
    )
    model = DQN(obs_shape=obs_dim, action_shape=n_actions, encoder_hidden_size_list=s["hidden"], dueling=True)
    return DQFDPolicy(cfg, model=model, enable_field=["learn", "collect", "eval"])


def make_buffer(s: dict, size: int, name: str) -> AdvancedReplayBuffer:
    cfg = deep_merge_dicts(
        AdvancedReplayBuffer.default_config(),
        EasyDict(dict(replay_buffer_size=size, alpha=s["alpha"], beta=s["beta"])),
    )
    return AdvancedReplayBuffer(cfg, tb_logger=None, exp_name="peer_ding", instance_name=name)


def transition(obs, action, reward, next_obs, done) -> dict:
    return {
        "obs": torch.as_tensor(obs, dtype=torch.float32),
        "next_obs": torch.as_tensor(next_obs, dtype=torch.float32),
        "action": torch.as_tensor([action], dtype=torch.int64),
        "reward": torch.as_tensor([reward], dtype=torch.float32),
        "done": bool(done),
    }


def samples(policy: DQFDPolicy, trajectory: list[dict], expert: int) -> list[dict]:
    # DI-engine's n-step builder rewrites the transitions in place, so it gets a copy
    out = policy.collect_mode.get_train_sample(copy.deepcopy(trajectory))
    for d in out:
        d["is_expert"] = expert
    return out


def demo_samples(policy: DQFDPolicy, env_id: str, episodes: int) -> list[dict]:
    from paper.demonstrators import demonstrations

    data: list[dict] = []
    for ep in demonstrations(env_id, episodes):
        nxt = [*ep.states[1:], ep.final_state if ep.final_state is not None else ep.states[-1]]
        traj = [
            transition(
                ep.states[t],
                int(ep.actions[t]),
                float(ep.rewards[t]),
                nxt[t],
                ep.terminated and t == len(ep.actions) - 1,
            )
            for t in range(len(ep.actions))
        ]
        data += samples(policy, traj, 1)
    return data


def learn(policy: DQFDPolicy, batch: list[dict], buffers: list[tuple[AdvancedReplayBuffer, int]]) -> None:
    info = policy.learn_mode.forward(batch)
    start = 0
    for buffer, count in buffers:
        part = batch[start : start + count]
        buffer.update(
            {
                "replay_unique_id": [d["replay_unique_id"] for d in part],
                "replay_buffer_idx": [d["replay_buffer_idx"] for d in part],
                "priority": info["priority"][start : start + count],
            }
        )
        start += count


def greedy(policy: DQFDPolicy, obs) -> int:
    out = policy.eval_mode.forward({0: torch.as_tensor(obs, dtype=torch.float32)})
    return int(out[0]["action"])


def epsilon(s: dict, step: int) -> float:
    if s["eps"] == "exp":  # DI-engine's 'exp' decay: end + (start - end) * exp(-step / decay)
        return 0.1 + (0.95 - 0.1) * float(np.exp(-step / 10_000))
    return float(s["eps"])


def run(job: Job) -> Job:
    s = dict(SETTINGS[job["setting"]])
    if s["pretrain"] is None:
        s["pretrain"] = job["pretrain_updates"]
    env_id, seed = job["env_id"], job["seed"]
    env = gym.make(env_id)
    obs_dim, n_actions = env.observation_space.shape[0], int(env.action_space.n)
    policy = make_policy(s, obs_dim, n_actions, seed)
    demos = demo_samples(policy, env_id, job["demo_episodes"])
    if s["pho"] is None:  # one buffer for demonstrations and agent data
        agent_buffer = expert_buffer = make_buffer(s, 100_000, "all")
    else:
        agent_buffer, expert_buffer = make_buffer(s, 20_000, "agent"), make_buffer(s, 10_000, "expert")
    expert_buffer.push(demos, cur_collector_envstep=0)
    started = time.perf_counter()
    updates = 0
    for _ in range(s["pretrain"]):
        batch = expert_buffer.sample(s["batch"], updates)
        learn(policy, batch, [(expert_buffer, len(batch))])
        updates += 1
    pretrain_seconds = time.perf_counter() - started
    act = partial(greedy, policy)
    start_eval = evaluate(act, env_id, job["eval_episodes"], job["eval_seed"])

    rng = np.random.default_rng(seed)
    episodes, trajectory, total = [], [], 0.0
    obs, _ = env.reset(seed=seed)
    started = time.perf_counter()
    for step in range(1, job["env_steps"] + 1):
        explore = rng.random() < epsilon(s, step)
        action = int(rng.integers(n_actions)) if explore else act(obs)
        nxt, reward, terminated, truncated, _ = env.step(action)
        trajectory.append(transition(obs, action, reward, nxt, terminated))
        total += float(reward)
        obs = nxt
        if terminated or truncated:
            agent_buffer.push(samples(policy, trajectory, 0), cur_collector_envstep=step)
            episodes.append((step, total))
            trajectory, total = [], 0.0
            obs, _ = env.reset()
        elif len(trajectory) >= s["nstep"] + 64:
            # push the finished n-step windows of a long episode in chunks of 64 (DI-engine's sample collector
            # also hands over n-step samples in chunks before the episode ends)
            ready = samples(policy, trajectory, 0)[: len(trajectory) - s["nstep"]]
            agent_buffer.push(ready, cur_collector_envstep=step)
            trajectory = trajectory[len(ready) :]
        if step % s["n_sample"] != 0 or agent_buffer.count() < s["batch"]:
            continue
        for _ in range(s["updates_per_collect"]):
            if s["pho"] is None:
                batch = agent_buffer.sample(s["batch"], updates)
                parts = [(agent_buffer, len(batch))]
            else:
                n_expert = int((rng.integers(s["batch"], size=s["batch"]) < s["batch"] * s["pho"]).sum())
                agent_part = agent_buffer.sample(s["batch"] - n_expert, updates) or []
                expert_part = expert_buffer.sample(n_expert, updates) or []
                batch = agent_part + expert_part
                parts = [(agent_buffer, len(agent_part)), (expert_buffer, len(expert_part))]
            learn(policy, batch, parts)
            updates += 1
    online_seconds = time.perf_counter() - started
    return {
        "start_eval": start_eval,
        "final_eval": evaluate(act, env_id, job["eval_episodes"], job["eval_seed"]),
        "episodes": episodes,
        "updates": updates,
        "pretrain_seconds": pretrain_seconds,
        "online_seconds": online_seconds,
        "setting": s,
    }


def throughput(job: Job) -> Job:
    """Updates per second of its learn step on CartPole data, 'ours' setting (batch 32, 2x256)."""
    s = dict(SETTINGS["ours"])
    policy = make_policy(s, 4, 2, 0)
    buffer = make_buffer(s, 100_000, "all")
    buffer.push(demo_samples(policy, "CartPole-v1", 5), cur_collector_envstep=0)
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    trajectory = []
    for _ in range(job["fill"]):
        action = int(rng.integers(2))
        nxt, reward, terminated, truncated, _ = env.step(action)
        trajectory.append(transition(obs, action, reward, nxt, terminated))
        obs = nxt
        if terminated or truncated:
            buffer.push(samples(policy, trajectory, 0), cur_collector_envstep=0)
            trajectory = []
            obs, _ = env.reset()

    def train(n: int) -> None:
        for i in range(n):
            learn(policy, buffer.sample(32, i), [(buffer, 32)])

    return updates_per_second(job, train)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for paper.demonstrators
    serve(run, throughput)
