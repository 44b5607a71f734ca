"""Stable-Baselines3 DQN, run in its own virtual environment (benchmarks/work/venv-sb3) as a subprocess.

Reads one JSON job from argv[1], prints one JSON line. Modes:

- ``learn``: DQN on a task for ``env_steps`` steps; returns training episodes, greedy evaluations at the
  start and the end, and the update count.
- ``throughput``: fill the buffer with ``fill`` CartPole steps, then time ``updates`` gradient updates.

Settings as close to ours as SB3's DQN allows: 2x256 MLP, Adam 1e-4, batch 32, γ 0.99, Huber loss, gradient
norm clip 10, 1 update per environment step, target copy every 500 updates, buffer 10^5. SB3's DQN has no
dueling head, no prioritized replay, no n-step return and no double-Q target; it explores with ε decaying
from 1 to 0.01 over the first 10% of the run (its default schedule, with our final ε).
"""

from __future__ import annotations

import json
import sys
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor


class Episodes(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[tuple[int, float]] = []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                self.episodes.append((int(self.num_timesteps), float(info["episode"]["r"])))
        return True


def evaluate(model: DQN, env_id: str, episodes: int, seed: int) -> list[float]:
    env = gym.make(env_id)
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def make(env_id: str, seed: int, learning_starts: int, total: int) -> DQN:
    return DQN(
        "MlpPolicy",
        Monitor(gym.make(env_id)),
        learning_rate=1e-4,
        buffer_size=100_000,
        learning_starts=learning_starts,
        batch_size=32,
        gamma=0.99,
        train_freq=1,
        gradient_steps=1,
        target_update_interval=500,
        exploration_fraction=0.1,
        exploration_initial_eps=1.0,
        exploration_final_eps=0.01,
        max_grad_norm=10.0,
        policy_kwargs={"net_arch": [256, 256]},
        seed=seed,
        device="cpu",
        verbose=0,
    )


def main() -> None:
    job = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    if job["mode"] == "throughput":
        model = make("CartPole-v1", 0, learning_starts=10**9, total=job["fill"])
        model.learn(total_timesteps=job["fill"])
        model.train(gradient_steps=100, batch_size=32)  # warm-up
        rates = []
        for _ in range(job.get("repeats", 1)):
            started = time.perf_counter()
            model.train(gradient_steps=job["updates"], batch_size=32)
            rates.append(job["updates"] / (time.perf_counter() - started))
        print(json.dumps({"updates_per_second": rates}))
        return
    env_id, seed, steps = job["env_id"], job["seed"], job["env_steps"]
    model = make(env_id, seed, learning_starts=32, total=steps)
    start_eval = evaluate(model, env_id, job["eval_episodes"], job["eval_seed"])
    callback = Episodes()
    started = time.perf_counter()
    model.learn(total_timesteps=steps, callback=callback)
    seconds = time.perf_counter() - started
    final_eval = evaluate(model, env_id, job["eval_episodes"], job["eval_seed"])
    print(
        json.dumps(
            {
                "start_eval": start_eval,
                "final_eval": final_eval,
                "episodes": callback.episodes,
                "updates": int(model._n_updates),
                "pretrain_seconds": 0.0,
                "online_seconds": seconds,
                "mean_final_train": float(np.mean([r for _, r in callback.episodes[-10:]] or [np.nan])),
            }
        )
    )


if __name__ == "__main__":
    main()
