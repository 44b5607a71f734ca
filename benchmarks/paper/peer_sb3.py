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

import time
from functools import partial

import gymnasium as gym
import numpy as np
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor

if __package__:  # imported from the project (benchmarks.paper.peer_sb3)
    from .peer_common import Job, evaluate, serve, updates_per_second
else:  # run as a script in its own environment: this folder is sys.path[0]
    from peer_common import Job, evaluate, serve, updates_per_second


class Episodes(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[tuple[int, float]] = []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                self.episodes.append((int(self.num_timesteps), float(info["episode"]["r"])))
        return True


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


def greedy(model: DQN, obs: np.ndarray) -> int:
    action, _ = model.predict(obs, deterministic=True)
    return int(action)


def throughput(job: Job) -> Job:
    model = make("CartPole-v1", 0, learning_starts=10**9, total=job["fill"])
    model.learn(total_timesteps=job["fill"])
    return updates_per_second(job, lambda n: model.train(gradient_steps=n, batch_size=32))


def learn(job: Job) -> Job:
    env_id, seed, steps = job["env_id"], job["seed"], job["env_steps"]
    model = make(env_id, seed, learning_starts=32, total=steps)
    act = partial(greedy, model)
    start_eval = evaluate(act, env_id, job["eval_episodes"], job["eval_seed"])
    callback = Episodes()
    started = time.perf_counter()
    model.learn(total_timesteps=steps, callback=callback)
    seconds = time.perf_counter() - started
    return {
        "start_eval": start_eval,
        "final_eval": evaluate(act, env_id, job["eval_episodes"], job["eval_seed"]),
        "episodes": callback.episodes,
        "updates": int(model._n_updates),
        "pretrain_seconds": 0.0,
        "online_seconds": seconds,
        "mean_final_train": float(np.mean([r for _, r in callback.episodes[-10:]] or [np.nan])),
    }


if __name__ == "__main__":
    serve(learn, throughput)
