"""Gradient updates per second of our DQfD, SB3's DQN and DI-engine's DQfD: one torch thread each, measured
in alternating rounds of the same run, so load from other processes affects all of them alike.

Ours: ``DQfDAgent.train_step()`` (prioritized sampling, n-step windows, the update, the priority update) with
5 CartPole demonstration episodes and 5,000 CartPole agent transitions in the replay, 2x256 dueling MLP,
batch 32. SB3: ``DQN.train(gradient_steps=N, batch_size=32)`` after filling its buffer with 5,000 steps,
2x256 MLP. DI-engine: ``DQFDPolicy`` learn-mode forward on batches of 32 from its replay (see peer_ding.py).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agent import DQfDAgent

from .demonstrators import demonstrations
from .runner import to_episodes
from .settings import dqfd_config

UPDATES = 2_000
ROUNDS = 3
FILL = 5_000


def ours(updates: int = UPDATES, rounds: int = ROUNDS) -> list[float]:
    torch.set_num_threads(1)
    agent = DQfDAgent(4, 2, dqfd_config("dqfd", 10**6), seed=0)
    agent.add_demonstration_episodes(to_episodes(demonstrations("CartPole-v1", 5)))
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(FILL):
        action = int(rng.integers(2))
        nxt, reward, terminated, truncated, _ = env.step(action)
        agent.observe(obs, action, reward, nxt, terminated, truncated=truncated)
        obs = env.reset()[0] if terminated or truncated else nxt
    for _ in range(100):
        agent.train_step()
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(updates):
            agent.train_step()
        rates.append(updates / (time.perf_counter() - started))
    return rates


def compare(peer_names: list[str], log=print, rounds: int = ROUNDS, updates: int = UPDATES) -> dict[str, Any]:
    """Alternate ours and each available peer ``rounds`` times; medians and ratios."""
    from .peers import WORK, peer_python, peer_script

    rates: dict[str, list[float]] = {"ours": []}
    errors: dict[str, str] = {}
    for _ in range(rounds):
        rates["ours"] += ours(updates=updates, rounds=1)
        for name in peer_names:
            python = peer_python(name)
            if python is None:
                errors[name] = "virtual environment missing (see docs/paper_reproduction.md)"
                continue
            job = {"mode": "throughput", "fill": FILL, "updates": updates, "repeats": 1}
            WORK.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(
                [str(python), str(peer_script(name)), json.dumps(job)],
                capture_output=True,
                text=True,
                timeout=900,
                cwd=WORK,  # DI-engine writes its logs to the current directory
            )
            if proc.returncode != 0:
                errors[name] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
                continue
            reply = json.loads(proc.stdout.strip().splitlines()[-1])
            rates.setdefault(name, []).extend(reply["updates_per_second"])
        log(f"throughput round: { {k: round(v[-1]) for k, v in rates.items() if v} }", flush=True)
    medians = {k: statistics.median(v) for k, v in rates.items() if v}
    ratios = {f"ours/{k}": medians["ours"] / v for k, v in medians.items() if k != "ours"}
    return {
        "rates": rates,
        "median": medians,
        "ratios": ratios,
        "errors": errors,
        "updates_per_round": updates,
    }


TARGETS = {"ours/sb3": 1.0, "ours/ding": 2.0}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| implementation | updates/s per round | median |", "| --- | --- | --- |"]
    for name, values in result["rates"].items():
        lines.append(f"| {name} | {', '.join(f'{v:.0f}' for v in values)} | {result['median'][name]:.0f} |")
    lines.append("")
    for key, ratio in result["ratios"].items():
        target = TARGETS.get(key)
        verdict = ""
        if target is not None:
            verdict = f" (target >= {target:g}: {'PASS' if ratio >= target else 'FAIL'})"
        lines.append(f"- {key} = {ratio:.2f}{verdict}")
    for name, error in result["errors"].items():
        lines.append(f"- {name}: not measured: `{error}`")
    return "\n".join(lines)
