"""Pretraining updates of the feature DQfD agent at 1,000 / 10,000 / 100,000 items (issue 15).

The target: update time and memory independent of the catalogue size, and checkpoints that grow with
it only through the learned item embeddings. For each catalogue size n, with 8 item features and 17 state
features (the simulator's observation length), the paper's batch of 32 and the default item network
(agent/feature_network.py), each arm runs in a fresh process (so its peak memory is its own):

- ``sampled``: :class:`agent.ItemDQfDAgent` with ``loss_items=64`` (a_E + 8 retrieved hard items + a
  uniform sample), features only;
- ``sampled+emb16``: the same with a learned 16-dimensional embedding per item;
- ``exact`` (1,000 items only): every allowed item in J_E's max and the double-DQN argmax;
- ``bare``: the limit each arm is compared with, measured in the same run: one autograd update of the
  same network on the same batch shape (32 states × the arm's items per row, loss = mean Q², Adam), no
  replay, no targets, no sampling.

Reported: updates/s (median of windows, this process's CPU time and wall clock), the ratio to the bare
update at the same shape, peak resident memory of the process (``ru_maxrss``) and its ratio to the bare
update's process, and the checkpoint bytes. Run with ``nice``: the machine is shared.

    nice -n 10 .venv/bin/python benchmarks/item_updates.py             # 200 updates per arm, ~3 minutes
    nice -n 10 .venv/bin/python benchmarks/item_updates.py --quick     # smoke run: 20 updates, 1k and 10k
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import DQfDConfig, ItemDQfDAgent, ItemNetworkConfig
from agent.feature_network import FeatureQNetwork
from agent.item_table import ItemTable
from agent.optim import adam_step, make_adam

RESULTS = Path(__file__).resolve().parent / "results"
STATE_DIM = 17
"""The simulator's observation length (simulator/config.py, ``obs_dim``)."""
FEATURE_DIM = 8
DEMONSTRATIONS = 5_000
"""Demonstration rows (episodes of 20 steps), the same at every catalogue size."""
LOSS_ITEMS = 64
WINDOW = 20
"""Updates per timing window."""
ARMS: dict[str, dict[str, Any]] = {
    "sampled": {"loss_items": LOSS_ITEMS, "item_embedding_dim": 0},
    "sampled+emb16": {"loss_items": LOSS_ITEMS, "item_embedding_dim": 16},
    "exact": {"loss_items": None, "item_embedding_dim": 0},
}


def rss_kb() -> int:
    """Peak resident memory of this process so far, kB (``ru_maxrss`` is in kB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def timed(update, steps: int) -> dict[str, float]:
    """Run ``update`` ``steps`` times in windows; median updates/s by CPU time and by wall clock."""
    cpu_rates, wall_rates = [], []
    done = 0
    while done < steps:
        n = min(WINDOW, steps - done)
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(n):
            update()
        cpu_rates.append(n / max(time.thread_time() - cpu, 1e-9))
        wall_rates.append(n / max(time.perf_counter() - wall, 1e-9))
        done += n
    return {"cpu_rate": statistics.median(cpu_rates), "wall_rate": statistics.median(wall_rates)}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One arm at one catalogue size, in this (fresh) process."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = int(spec["n_items"])
    items = ItemTable(FEATURE_DIM, rng.normal(size=(n, FEATURE_DIM)).astype(np.float32))
    settings = ARMS.get(spec["arm"], {"loss_items": spec.get("width"), "item_embedding_dim": 0})
    network_config = ItemNetworkConfig(
        loss_items=settings["loss_items"], item_embedding_dim=settings["item_embedding_dim"]
    )
    steps = int(spec["steps"])
    before = rss_kb()
    if spec["arm"] == "bare":
        width = int(spec["width"])
        torch.manual_seed(0)
        network = FeatureQNetwork(STATE_DIM, FEATURE_DIM, n_item_embeddings=n)
        optimizer = make_adam(list(network.parameters()), 1e-4, 1e-8)
        states = torch.randn(32, STATE_DIM)

        def update() -> None:
            indices = torch.from_numpy(rng.integers(0, n, size=(32, width)))
            q = network(states, indices, items.gather(indices))
            for p in network.parameters():
                p.grad = None
            q.pow(2).mean().backward()
            adam_step(optimizer)

        update()
        update()  # Adam's state exists from here on
        result = timed(update, steps)
        peak = rss_kb()
        checkpoint = None
    else:
        agent = ItemDQfDAgent(STATE_DIM, items, DQfDConfig(), network_config, seed=0)
        episodes = np.arange(DEMONSTRATIONS) // 20
        agent.add_demonstrations(
            rng.normal(size=(DEMONSTRATIONS, STATE_DIM)),
            rng.integers(0, n, size=DEMONSTRATIONS),
            rng.normal(size=DEMONSTRATIONS),
            np.arange(DEMONSTRATIONS) % 20 == 19,
            episode_ids=episodes,
        )
        agent.pretrain(2)
        result = timed(lambda: agent.train_step(demo_only=True), steps)
        peak = rss_kb()  # before the checkpoint is serialised: the updates' peak, not the save's
        buffer = io.BytesIO()
        agent.save(buffer)
        checkpoint = buffer.getbuffer().nbytes
    return {
        **spec,
        **result,
        "peak_rss_kb": peak,
        "rss_before_kb": before,
        "checkpoint_bytes": checkpoint,
    }


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter and return its result."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(sizes: list[int], steps: int, exact_steps: int) -> dict[str, Any]:
    rows = []
    for n in sizes:
        arms = ["sampled", "sampled+emb16"] + (["exact"] if n == min(sizes) else [])
        for arm in arms:
            width = LOSS_ITEMS if ARMS[arm]["loss_items"] else n
            arm_steps = steps if ARMS[arm]["loss_items"] else exact_steps
            bare = spawn({"arm": "bare", "n_items": n, "width": width, "steps": arm_steps})
            measured = spawn({"arm": arm, "n_items": n, "width": width, "steps": arm_steps})
            measured["bare"] = bare
            measured["cpu_ratio"] = measured["cpu_rate"] / bare["cpu_rate"]
            measured["memory_ratio"] = measured["peak_rss_kb"] / bare["peak_rss_kb"]
            rows.append(measured)
            print(
                f"{n:>7} {arm:<14} {measured['cpu_rate']:7.1f} upd/s (bare {bare['cpu_rate']:7.1f}, "
                f"ratio {measured['cpu_ratio']:.2f}), peak {measured['peak_rss_kb'] / 1024:.0f} MB "
                f"(bare {bare['peak_rss_kb'] / 1024:.0f} MB), checkpoint {measured['checkpoint_bytes']:,} B",
                flush=True,
            )
    return {
        "sizes": sizes,
        "steps": steps,
        "exact_steps": exact_steps,
        "rows": rows,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
    }


def added(row: dict[str, Any]) -> float:
    """MB of peak memory above the process's peak before the arm built anything (after imports)."""
    return (row["peak_rss_kb"] - row["rss_before_kb"]) / 1024


def report(results: dict[str, Any], command: str, seconds: float) -> str:
    rows = results["rows"]
    lines = [
        "# Feature DQfD: pretraining updates at 1k / 10k / 100k items",
        "",
        f"Command: `{command}` (one torch thread, {results['machine']}, {seconds:.0f} s)",
        "",
        f"{DEMONSTRATIONS:,} demonstration rows (episodes of 20), state 17 features, items 8 features,"
        " batch 32, paper defaults (DQfDConfig()), default item network (ItemNetworkConfig())."
        " Each arm and its bare reference ran in a fresh process."
        " Rates: median over windows of 20 updates, this thread's CPU time."
        " Bare = one autograd update (forward, mean Q², backward, Adam) of the same network on 32 states ×"
        " the arm's items per row, measured in the same run. Peak RSS: ``ru_maxrss`` of the process (about"
        " 390 MB of it is the interpreter and torch), read after the timed updates and before the checkpoint"
        " is written; added: peak RSS minus the peak before the arm built its table, network and replay.",
        "",
        "| items | arm | updates/s | bare updates/s | ratio to bare | peak RSS MB | bare peak RSS MB |"
        " memory ratio | added MB | bare added MB | checkpoint bytes |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['n_items']:,} | {row['arm']} | {row['cpu_rate']:.1f} | {row['bare']['cpu_rate']:.1f} | "
            f"{row['cpu_ratio']:.2f} | {row['peak_rss_kb'] / 1024:.0f} | "
            f"{row['bare']['peak_rss_kb'] / 1024:.0f} | {row['memory_ratio']:.2f} | "
            f"{added(row):.0f} | {added(row['bare']):.0f} | {row['checkpoint_bytes']:,} |"
        )
    lines.append("")
    for arm in ("sampled", "sampled+emb16"):
        mine = [r for r in rows if r["arm"] == arm]
        if len(mine) >= 2:
            first, last = mine[0], mine[-1]
            lines.append(
                f"- {arm}: updates/s at {last['n_items']:,} items over {first['n_items']:,}: "
                f"{last['cpu_rate'] / first['cpu_rate']:.2f}x; memory added {added(last):.0f} MB vs "
                f"{added(first):.0f} MB; checkpoint {last['checkpoint_bytes']:,} B vs "
                f"{first['checkpoint_bytes']:,} B"
            )
    lines += [
        "",
        "Reading: the features-only network's weights do not depend on n, and a sampled update touches "
        "64 items per row (a_E, 8 hard items retrieved from a screening pool of 256 uniform items plus the "
        "batch's actions, the rest uniform), so its time and memory do not depend on n; the checkpoint holds "
        "no item features. With learned embeddings the checkpoint grows by 4 tensors × 16 floats per item "
        "(online, target, Adam's two moments), and each update's J_L2 gradient and Adam step run over the "
        "whole (n × 16) table (dense), which is what slows that arm down at 100,000 items. The ratio to the "
        "bare update has a floor: an agent update scores 32 × K pairs with gradient plus 64 × K without (the "
        "online network's double-DQN pick at s' and s_{t+n}), 64 (the target network's value of each pick) "
        "and the hard-item screening, against the bare update's 32 × K; the rest is the replay and the "
        "subset sampling. The exact arm scores every allowed item per row (K = n), so it is for small "
        "catalogues and for the brute-force tests.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 updates per arm, 1k and 10k items")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--exact-steps", type=int, default=20)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="item_updates", help="results file stem under benchmarks/results")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    steps = 20 if args.quick else args.steps
    exact_steps = 4 if args.quick else args.exact_steps
    started = time.perf_counter()
    results = run(sizes, steps, exact_steps)
    seconds = time.perf_counter() - started
    command = "nice -n 10 .venv/bin/python benchmarks/item_updates.py" + (" --quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(
        json.dumps({"command": command, "seconds": seconds, **results}, indent=2) + "\n"
    )
    (RESULTS / f"{args.output}.md").write_text(report(results, command, seconds))
    print((RESULTS / f"{args.output}.md").read_text())


if __name__ == "__main__":
    main()
