"""DQfD update throughput against its own limit, and replay memory against the raw arrays.

One process, one torch thread. The replay holds ``--demos`` demonstration transitions plus a full agent
part (``--transitions`` in all, 1,000,000 by default). Two loops run in alternating rounds:

- full: ``agent.train_step()``: prioritized sampling, n-step windows, tensor assembly, the update, and the
  priority update;
- limit: ``agent.learn(batch)`` on batches sampled beforehand: the same losses and optimizer step with
  no replay work at all.

The ratio full/limit (target >= 0.8) says how much the replay costs. Memory: the replay's arrays and sum
tree against one float32 copy of the stored states plus the actions, rewards and flags (target <= 1.5x),
and the process's resident-memory growth while filling, which would show any hidden copies.

    .venv/bin/python benchmarks/train_throughput.py            # full size, about 3 minutes
    .venv/bin/python benchmarks/train_throughput.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import DQfDAgent, DQfDConfig

RESULTS = Path(__file__).resolve().parent / "results"


def resident_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def fill(agent: DQfDAgent, demos: int, agent_transitions: int, episode_length: int, seed: int) -> None:
    """Demonstrations through ``add_demonstrations``, agent data through ``observe``, as users do."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    chunk = 100_000
    for start in tqdm(range(0, demos, chunk), desc="demonstrations", unit="chunk"):
        n = min(chunk, demos - start)
        states = rng.standard_normal((n, agent.state_dim), dtype=np.float32)
        dones = (np.arange(start, start + n) % episode_length) == episode_length - 1
        dones[-1] = True
        ids = np.arange(start, start + n) // episode_length
        agent.add_demonstrations(
            states, rng.integers(0, agent.n_actions, n), rng.standard_normal(n), dones, ids
        )
    state = rng.standard_normal(agent.state_dim, dtype=np.float32)
    actions = rng.integers(0, agent.n_actions, agent_transitions)
    rewards = rng.standard_normal(agent_transitions)
    for t in tqdm(range(agent_transitions), desc="agent transitions", unit="obs", mininterval=2.0):
        next_state = rng.standard_normal(agent.state_dim, dtype=np.float32)
        done = t % episode_length == episode_length - 1
        agent.observe(state, int(actions[t]), float(rewards[t]), next_state, done)
        state = rng.standard_normal(agent.state_dim, dtype=np.float32) if done else next_state


def rate(fn, updates: int) -> float:
    started = time.perf_counter()
    for _ in range(updates):
        fn()
    return updates / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transitions", type=int, default=1_000_000, help="transitions held in all")
    parser.add_argument("--demos", type=int, default=100_000, help="of which demonstrations")
    parser.add_argument("--state-dim", type=int, default=64)
    parser.add_argument("--actions", type=int, default=18)
    parser.add_argument("--episode-length", type=int, default=50)
    parser.add_argument("--updates", type=int, default=300, help="updates per round and loop")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="20,000 transitions, 3 rounds of 100 updates")
    parser.add_argument(
        "--out", default=str(RESULTS / "train_throughput"), help="results path without suffix"
    )
    args = parser.parse_args()
    if args.quick:
        args.transitions, args.demos, args.updates, args.rounds = 20_000, 5_000, 100, 3

    torch.set_num_threads(1)
    # Agent transitions use one slot each plus one slot per episode for its final observation.
    agent_transitions = args.transitions - args.demos
    config = DQfDConfig(batch_size=32, hidden_sizes=(256, 256), n_step=10, replay_capacity=agent_transitions)
    rss_before = resident_bytes()
    agent = DQfDAgent(args.state_dim, args.actions, config, seed=0)
    fill(agent, args.demos, agent_transitions, args.episode_length, seed=0)
    rss_growth = resident_bytes() - rss_before
    held = agent.n_demonstrations + agent.n_agent_transitions
    slots = agent.replay.demo_size + agent.replay.agent.capacity
    raw = slots * (args.state_dim * 4 + 8 + 4 + 2)  # float32 state, int64 action, float32 reward, 2 flags
    replay_bytes = agent.replay.nbytes()

    agent.pretrain(20)  # warm-up: allocator, Adam state
    presampled = [agent.sample() for _ in range(args.updates)]
    full_rates, limit_rates = [], []
    for _ in range(args.rounds):
        full_rates.append(rate(agent.train_step, args.updates))
        batches = iter(presampled)
        limit_rates.append(rate(lambda b=batches: agent.learn(next(b)), args.updates))
    full, limit = statistics.median(full_rates), statistics.median(limit_rates)

    def micro(fn, n=200) -> float:
        fn()
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - started) / n * 1e6

    indices, weights = agent.replay.sample_indices(32, agent.beta)
    breakdown_us = {
        "sample_indices": micro(lambda: agent.replay.sample_indices(32, agent.beta)),
        "gather": micro(lambda: agent.replay.gather(indices, weights, 10, 0.99, False, agent.device)),
        "update_priority": micro(lambda: agent.replay.update_priority(indices, np.ones(32))),
        "learn": 1e6 / limit,
    }
    result = {
        "command": "python benchmarks/train_throughput.py" + (" --quick" if args.quick else ""),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "transitions_held": held,
        "demonstrations": agent.n_demonstrations,
        "agent_transitions": agent.n_agent_transitions,
        "state_dim": args.state_dim,
        "n_actions": args.actions,
        "full_updates_per_second": full,
        "limit_updates_per_second": limit,
        "ratio": full / limit,
        "ratio_target": 0.8,
        "rounds_full": full_rates,
        "rounds_limit": limit_rates,
        "breakdown_microseconds": breakdown_us,
        "replay_bytes": replay_bytes,
        "raw_bytes": raw,
        "memory_ratio": replay_bytes / raw,
        "memory_ratio_target": 1.5,
        "rss_growth_bytes": rss_growth,
        "rss_ratio": rss_growth / raw,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    verdict = "PASS" if result["ratio"] >= 0.8 else "FAIL"
    memory_verdict = "PASS" if result["memory_ratio"] <= 1.5 else "FAIL"
    lines = [
        "# DQfD update throughput",
        "",
        f"Command: `{result['command']}` (one torch thread, {result['machine']}, torch {result['torch']})",
        "",
        f"Replay: {held:,} transitions ({agent.n_demonstrations:,} demonstrations), "
        f"{args.state_dim} features, {args.actions} actions; batch 32, 2x256 dueling MLP, 10-step.",
        "",
        "| loop | updates/s (median of rounds) |",
        "| --- | --- |",
        f"| full `train_step` (replay + update) | {full:.1f} |",
        f"| limit: `learn` on pre-sampled batches | {limit:.1f} |",
        "",
        f"- {verdict}: throughput ratio {result['ratio']:.3f} (target >= 0.8)",
        f"- {memory_verdict}: replay memory {replay_bytes / 2**20:.1f} MiB = {result['memory_ratio']:.3f}x "
        f"the raw arrays ({raw / 2**20:.1f} MiB; target <= 1.5x); resident growth while filling "
        f"{rss_growth / 2**20:.1f} MiB = {result['rss_ratio']:.3f}x",
        "- per-update replay costs (us): " + ", ".join(f"{k} {v:.0f}" for k, v in breakdown_us.items()),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(["full train_step", "limit (learn only)"], [full, limit], color=["tab:blue", "tab:gray"])
    ax.set_ylabel("updates / s (1 thread)")
    ax.set_title(f"DQfD throughput, ratio {result['ratio']:.2f}, {held:,} transitions")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
