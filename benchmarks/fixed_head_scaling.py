"""How the fixed-head dueling network scales with the number of actions n (issue 15).

The dueling combination Q = V + A − mean(A) ([Dueling] Eq. 9) used to be one product with a dense
(n+1)×n matrix, O(n²) in memory and time (400 MB per network at 10,000 items); it is now O(n)
(agent/networks.py). This script measures, at n = 20, 1,000 and 10,000 actions:

- ``dense``: the old network, a copy of the old class kept below (:class:`DenseDuelingQNetwork`), on
  the agent's hand-written backward pass, as before the change;
- ``linear``: the built-in network now, on the same hand-written backward pass (the default);
- ``autograd``: the built-in network now, trained through autograd (``agent.hand_written_backward =
  False``, the path a user network takes): whether the hand-written fast path still pays.

For each: the time of one pretraining update (this thread's CPU time, median over windows of updates;
wall clock too), and memory: the bytes of
one network's weights and buffers, and the peak resident memory the process gained from creating the
agent to the end of its updates (each case runs in its own subprocess, so peaks do not mix). The limit
the update time is divided by, measured in the same subprocess: a bare forward and backward pass of the
trunk alone (autograd; forward over the 3B rows an update evaluates, backward from the first B), what no
head can make cheaper. Paper defaults: 2×256 MLP, batch 32, 10-step; 17 state features (the
simulator's); 2,000 random demonstration transitions; one torch thread.

    nice -n 10 .venv/bin/python benchmarks/fixed_head_scaling.py           # 200 updates per case
    nice -n 10 .venv/bin/python benchmarks/fixed_head_scaling.py --quick   # smoke: 20 updates, n ≤ 1,000
"""

from __future__ import annotations

import argparse
import copy
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import DQfDAgent, DQfDConfig
from agent.networks import DuelingQNetwork

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("dense", "linear", "autograd")
STATE_DIM = 17
"""The simulator's state width (simulator/config.py, ``obs_dim``)."""
DEMONSTRATIONS = 2_000
WINDOW = 20
"""Updates per timed window; the reported time is the median window's mean (robust to a shared CPU)."""


class DenseDuelingQNetwork(DuelingQNetwork):
    """The network as it was before issue 15: the dueling combination as a product with the dense
    (n+1)×n matrix D = [1ᵀ; I − 1/n], a non-persistent buffer. Kept here only to measure the change."""

    def __init__(self, state_dim: int, n_actions: int, hidden_sizes: tuple[int, ...] = (256, 256)) -> None:
        super().__init__(state_dim, n_actions, hidden_sizes)
        dueling = torch.cat([torch.ones(1, n_actions), torch.eye(n_actions) - 1.0 / n_actions])
        self.register_buffer("dueling", dueling, persistent=False)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        hidden = states
        for layer in self.linear_layers[:-1]:
            hidden = torch.relu(F.linear(hidden, layer.weight, layer.bias))
        return F.linear(hidden, self.head.weight, self.head.bias).mm(self.dueling)

    def forward_keeping_activations(self, states: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        layers = self.linear_layers
        inputs = [states]
        hidden = states
        for layer in layers[:-1]:
            hidden = torch.addmm(layer.bias, hidden, layer.weight.t()).clamp_min_(0.0)
            inputs.append(hidden)
        head = layers[-1]
        return torch.addmm(head.bias, hidden, head.weight.t()).mm(self.dueling), inputs

    def backward_q(self, inputs: list[torch.Tensor], grad_q: torch.Tensor) -> None:
        rows = grad_q.shape[0]
        grad = grad_q.mm(self.dueling.t())
        layers = self.linear_layers
        for depth in range(len(layers) - 1, -1, -1):
            layer, layer_input = layers[depth], inputs[depth][:rows]
            if layer.weight.grad is None or layer.bias.grad is None:
                layer.weight.grad, layer.bias.grad = grad.t().mm(layer_input), grad.sum(dim=0)
            else:
                torch.mm(grad.t(), layer_input, out=layer.weight.grad)
                torch.sum(grad, dim=0, out=layer.bias.grad)
            if depth > 0:
                grad = torch.ops.aten.threshold_backward(grad.mm(layer.weight), layer_input, 0.0)


def network(variant: str, n_actions: int, hidden: tuple[int, ...]) -> DuelingQNetwork:
    """The variant's network, initialised from seed 0 (the same weights for every variant)."""
    torch.manual_seed(0)
    cls = DenseDuelingQNetwork if variant == "dense" else DuelingQNetwork
    return cls(STATE_DIM, n_actions, hidden)


def network_bytes(net: torch.nn.Module) -> int:
    """Bytes of one network's parameters and buffers (persistent or not)."""
    return int(sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()]))


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def windowed_seconds(step: Any, updates: int) -> tuple[float, float]:
    """Seconds per call of ``step`` by this thread's CPU time and by wall clock: for each, the median over
    windows of :data:`WINDOW` calls of the window's mean. CPU time is the less disturbed by other jobs on
    a shared machine (one torch thread: the work is all on this thread)."""
    cpu_means, wall_means = [], []
    done = 0
    while done < updates:
        n = min(WINDOW, updates - done)
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(n):
            step()
        cpu_means.append((time.thread_time() - cpu) / n)
        wall_means.append((time.perf_counter() - wall) / n)
        done += n
    return statistics.median(cpu_means), statistics.median(wall_means)


def run_case(variant: str, n_actions: int, updates: int, seed: int) -> dict[str, Any]:
    """One (variant, n) measurement; runs in its own process (see :func:`main`)."""
    torch.set_num_threads(1)
    config = DQfDConfig()
    torch.zeros(1).add_(1.0)  # load torch's kernels before the baseline
    rss_before = rss_mb()
    net = network(variant, n_actions, config.hidden_sizes)
    agent = DQfDAgent(STATE_DIM, n_actions, config, seed=seed, network=net)
    agent.hand_written_backward = variant != "autograd"
    rng = np.random.default_rng(seed)
    agent.add_demonstrations(
        rng.normal(size=(DEMONSTRATIONS, STATE_DIM)).astype(np.float32),
        rng.integers(0, n_actions, DEMONSTRATIONS),
        rng.normal(size=DEMONSTRATIONS),
        np.arange(DEMONSTRATIONS) % 20 == 19,
    )
    rss_created = rss_mb()
    for _ in range(5):  # warm-up: Adam's state, allocator
        agent.train_step(demo_only=True)
    update_s, update_wall_s = windowed_seconds(lambda: agent.train_step(demo_only=True), updates)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # The limit: the trunk's forward over 3B rows and backward from B rows, through autograd.
    trunk = copy.deepcopy(agent.online.trunk).requires_grad_(True)
    batch = config.batch_size
    states = torch.randn(3 * batch, STATE_DIM)

    def trunk_pass() -> None:
        trunk.zero_grad(set_to_none=False)
        trunk(states)[:batch].sum().backward()

    for _ in range(5):
        trunk_pass()
    trunk_s, trunk_wall_s = windowed_seconds(trunk_pass, updates)
    return {
        "variant": variant,
        "n_actions": n_actions,
        "updates": updates,
        "update_ms": 1e3 * update_s,
        "trunk_ms": 1e3 * trunk_s,
        "update_over_trunk": update_s / trunk_s,
        "update_wall_ms": 1e3 * update_wall_s,
        "trunk_wall_ms": 1e3 * trunk_wall_s,
        "network_mb": network_bytes(agent.online) / 2**20,
        "created_rss_gain_mb": rss_created - rss_before,
        "peak_rss_gain_mb": peak_mb - rss_before,
        "skipped": agent.n_skipped_updates,
    }


def max_q_difference(n_actions: int) -> float:
    """Largest |Q_dense − Q_linear| over 64 random states, same weights (checks the two agree)."""
    states = torch.randn(64, STATE_DIM, generator=torch.Generator().manual_seed(1))
    hidden = DQfDConfig().hidden_sizes
    with torch.no_grad():
        dense = network("dense", n_actions, hidden)(states)
        linear = network("linear", n_actions, hidden)(states)
    return float((dense - linear).abs().max())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[20, 1_000, 10_000], help="numbers of actions"
    )
    parser.add_argument("--updates", type=int, default=200, help="timed pretraining updates per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: n = 20 and 1,000, 20 updates")
    parser.add_argument("--out", default=str(RESULTS / "fixed_head_scaling"), help="results path, no suffix")
    parser.add_argument("--case", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # a subprocess of the run below: one case, JSON on stdout
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.updates, args.seed)))
        return {}
    if args.quick:
        args.sizes, args.updates = [20, 1_000], 20
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/fixed_head_scaling.py", *given])
    torch.set_num_threads(1)
    started = time.perf_counter()
    cases = []
    for n in args.sizes:
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--case", variant, str(n), "--updates", str(args.updates),
                 "--seed", str(args.seed)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            case = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(case), flush=True)
            cases.append(case)
    report = {
        "command": command,
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "threads": 1,
        "updates_per_case": args.updates,
        "demonstrations": DEMONSTRATIONS,
        "state_dim": STATE_DIM,
        "hidden_sizes": list(DQfDConfig().hidden_sizes),
        "batch_size": DQfDConfig().batch_size,
        "max_abs_q_difference_dense_vs_linear": {str(n): max_q_difference(n) for n in args.sizes},
        "seconds": time.perf_counter() - started,
        "cases": cases,
    }
    write(report, Path(args.out))
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write(report: dict[str, Any], out: Path) -> None:
    """The JSON and a Markdown table beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    by = {(c["variant"], c["n_actions"]): c for c in report["cases"]}
    sizes = sorted({c["n_actions"] for c in report["cases"]})
    lines = [
        "# Fixed-head dueling network: cost against the number of actions",
        "",
        f"Command: `nice -n 10 .venv/bin/{report['command'].replace('python ', 'python ', 1)}` "
        f"(one torch thread, {report['cpu']}, torch {report['torch']}, {report['seconds']:.0f} s; the "
        "machine was shared with other jobs).",
        "",
        f"One pretraining update of DQfDAgent (2×{report['hidden_sizes'][0]} MLP, batch "
        f"{report['batch_size']}, 10-step, {report['state_dim']} features, {report['demonstrations']:,} "
        f"random demonstrations): this thread's CPU time, median of windows of {WINDOW} over "
        f"{report['updates_per_case']} updates (wall-clock times are in the JSON). "
        "*dense*: the network before issue 15 ((n+1)×n dueling matrix); *linear*: Q = V + A − mean(A) now; "
        "*autograd*: the same network trained through autograd (the path of a user network). The limit: a "
        "bare forward (3B rows) and backward (B rows) of the 2×256 trunk alone, measured in the same "
        "process. Network: bytes of one network's weights and buffers (the agent holds two, plus Adam's "
        "two moments and the gradient). RSS gains: resident memory the process gained from just before "
        "creating the agent to just after it (with its demonstrations), and to its peak during the updates; "
        "about 100 MB of either, the same at every n, is the replay's arrays for "
        "``config.replay_capacity`` = 10^6 agent transitions.",
        "",
        "| n actions | variant | update (ms) | update / trunk | network (MB) | RSS gain, created (MB) "
        "| RSS gain, peak (MB) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in sizes:
        for variant in VARIANTS:
            c = by.get((variant, n))
            if c is None:
                continue
            lines.append(
                f"| {n:,} | {variant} | {c['update_ms']:.2f} | {c['update_over_trunk']:.1f}× "
                f"| {c['network_mb']:.1f} | {c['created_rss_gain_mb']:.0f} | {c['peak_rss_gain_mb']:.0f} |"
            )
    lines += ["", "Dense over linear (same hand-written backward pass):", ""]
    for n in sizes:
        dense, linear = by.get(("dense", n)), by.get(("linear", n))
        if dense and linear:
            lines.append(
                f"- n = {n:,}: update time {dense['update_ms'] / linear['update_ms']:.1f}×, network memory "
                f"{dense['network_mb'] / linear['network_mb']:.1f}×; autograd over hand-written: "
                f"{by[('autograd', n)]['update_ms'] / linear['update_ms']:.2f}×"
            )
    diffs = report["max_abs_q_difference_dense_vs_linear"]
    lines += [
        "",
        "Largest |Q_dense − Q_linear| on 64 random states, same weights: "
        + ", ".join(f"n = {int(n):,}: {d:.1e}" for n, d in diffs.items())
        + " (float32 rounding).",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
