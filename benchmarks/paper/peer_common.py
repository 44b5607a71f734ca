"""What the peer scripts (peer_sb3.py, peer_ding.py) share: the job protocol, greedy evaluation and the timed
update loop of the throughput mode.

The scripts run in their own virtual environments, which do not have this project installed, and import
this module as a sibling (a script's folder is the first entry of ``sys.path``), so it needs only the
standard library, PyTorch and Gymnasium.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch

Job = dict[str, Any]


def evaluate(act: Callable[[Any], int], env_id: str, episodes: int, seed: int) -> list[float]:
    """Returns of ``episodes`` episodes of the greedy action ``act(obs)``, episode k reset with seed + k."""
    env = gym.make(env_id)
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def updates_per_second(job: Job, train: Callable[[int], object], warmup: int = 100) -> Job:
    """The throughput reply: ``train(n)`` makes n gradient updates; after ``warmup`` untimed ones, the rate
    of ``job["updates"]`` updates, ``job["repeats"]`` times."""
    train(warmup)
    rates = []
    for _ in range(job.get("repeats", 1)):
        started = time.perf_counter()
        train(job["updates"])
        rates.append(job["updates"] / (time.perf_counter() - started))
    return {"updates_per_second": rates}


def serve(learn: Callable[[Job], Job], throughput: Callable[[Job], Job]) -> None:
    """Run the JSON job in ``sys.argv[1]`` on one thread and print its reply as one JSON line."""
    job = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    print(json.dumps(throughput(job) if job["mode"] == "throughput" else learn(job)))
