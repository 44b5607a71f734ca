"""Offline-to-online experiment on the recommendation simulator (issue 3).

Arms (same dueling network, same batch size, same number of updates and online sessions):

- ``dqfd``: DQfD pretrained on the myopic expert's logs, then online (ε = 0.01, demonstrations kept);
- ``pdd``: PDD DQN from scratch (the same agent with λ_margin = 0, no demonstrations, ε decaying);
- ``imitation``: the same network trained by masked cross-entropy on the logs only (no TD, no online);
- references on the same evaluation users: the logging ``expert``, ``random`` and the hidden-state
  ``oracle``.

Every evaluation is greedy (ε = 0) on a fixed set of evaluation users per seed, disjoint from the
training users. Results go to ``benchmarks/results/offline_to_online.{md,json,png}`` (``--quick``:
``offline_to_online_quick.*``).

    .venv/bin/python benchmarks/offline_to_online.py            # full run, < 1 hour on 2 cores
    .venv/bin/python benchmarks/offline_to_online.py --quick    # CI smoke test, < 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.command_line import command_line  # noqa: E402
from simulator import RecommendationEnv, SimulatorConfig, generate_catalogue  # noqa: E402
from simulator.catalogue import Catalogue  # noqa: E402
from simulator.evaluate import rollout, session_seeds  # noqa: E402
from simulator.logs import generate_logs, logs_to_arrays  # noqa: E402
from simulator.policies import make_policy  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("dqfd", "pdd", "imitation", "references")
EVAL_SEED_OFFSET = 1_000_000
"""Evaluation users of seed s come from master seed ``EVAL_SEED_OFFSET + s``; training users from
``2 * EVAL_SEED_OFFSET + s``; the expert logs from seed ``s``: three disjoint user streams."""


@dataclass
class Settings:
    """Budget of one run; the same for every learning arm."""

    seeds: int = 5
    demo_sessions: int = 2000
    """Expert-logged sessions given to DQfD and imitation (about 21k transitions)."""
    pretrain_steps: int = 5000
    """Updates of DQfD pretraining and of imitation (batch ``batch_size`` each)."""
    online_sessions: int = 20_000
    checkpoints: tuple[int, ...] = (0, 500, 1000, 2500, 5000, 10_000, 15_000, 20_000)
    """Online sessions after which the learning arms are evaluated (0 = after pretraining)."""
    report_at: tuple[int, ...] = (0, 1000, 5000, 20_000)
    eval_sessions: int = 200
    train_every: int = 8
    """One gradient update per this many online environment steps (both RL arms)."""
    parallel_envs: int = 16
    """Training sessions run in lockstep (batched acting); transitions are stored session by session."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    batch_size: int = 64
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    n_step: int = 10
    target_update_period: int = 1000
    dqfd_epsilon: float = 0.01
    dqfd_online_margin: float = 1.0
    """λ_margin of DQfD in the online phase (1.0, the paper's, keeps J_E on; 0 is a diagnostic)."""
    pdd_epsilon_start: float = 1.0
    pdd_epsilon_end: float = 0.01
    pdd_epsilon_sessions: int = 2000
    """PDD's ε decays linearly from start to end over this many online sessions."""
    workers: int = 2
    arms: tuple[str, ...] = ("dqfd", "pdd", "imitation", "references")
    quick: bool = False
    rerender: Path | None = None
    """Not a setting of the experiment: rebuild the report from this JSON instead of running."""


def quick_settings() -> Settings:
    """Settings for ``--quick`` (CI smoke test, well under two minutes on 2 cores)."""
    return Settings(
        seeds=2,
        demo_sessions=200,
        pretrain_steps=300,
        online_sessions=150,
        checkpoints=(0, 50, 150),
        report_at=(0, 50, 150),
        eval_sessions=50,
        train_every=8,
        pdd_epsilon_sessions=50,
        quick=True,
    )


# ----------------------------------------------------------------------------------------- helpers
def _agent_config(s: Settings, total_updates: int, lambda_margin: float, epsilon: float) -> Any:
    from agent import DQfDConfig

    return DQfDConfig(
        gamma=s.gamma,
        n_step=s.n_step,
        lambda_margin=lambda_margin,
        batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        target_update_period=s.target_update_period,
        replay_capacity=max(10_000, s.online_sessions * 25),
        hidden_sizes=tuple(s.hidden_sizes),
        epsilon=epsilon,
        priority_beta_anneal_updates=max(1, total_updates),
        pretrain_steps=s.pretrain_steps,
    )


def evaluate_greedy(q_fn: Any, seeds: list[int], config: SimulatorConfig, catalogue: Catalogue) -> np.ndarray:
    """Session returns of the greedy policy ``argmax q_fn(states, masks)`` on users ``seeds``, all
    sessions stepped in lockstep with batched Q-evaluations."""
    envs = [RecommendationEnv(config, catalogue) for _ in seeds]
    obs, masks = [], []
    for env, seed in zip(envs, seeds, strict=True):
        o, info = env.reset(seed=seed)
        obs.append(o)
        masks.append(info["action_mask"])
    returns = np.zeros(len(seeds))
    active = list(range(len(seeds)))
    while active:
        q = q_fn(np.stack([obs[i] for i in active]), np.stack([masks[i] for i in active]))
        actions = np.argmax(q, axis=1)
        still = []
        for row, i in enumerate(active):
            o, r, term, trunc, info = envs[i].step(int(actions[row]))
            returns[i] += r
            obs[i], masks[i] = o, info["action_mask"]
            if not (term or trunc):
                still.append(i)
        active = still
    return returns


def evaluate_reference(name: str, seeds: list[int], config: SimulatorConfig, seed: int) -> np.ndarray:
    """Session returns of a simulator policy (expert, random, oracle) on users ``seeds``."""
    env = RecommendationEnv(config)
    policy = make_policy(name, env)
    rng = np.random.default_rng([seed, 7])
    return np.array([rollout(env, policy, s, rng).session_return for s in seeds])


def _demos(seed: int, s: Settings, config: SimulatorConfig) -> Any:
    df = generate_logs("expert", s.demo_sessions, seed=seed, config=config, include_masks=True)
    return logs_to_arrays(df, n_items=config.n_items), float(df["reward"].sum() / s.demo_sessions)


def add_demonstration_arrays(agent: Any, arrays: Any) -> None:
    """The logs of :func:`_demos` into ``agent``'s demonstration store, sessions and masks kept."""
    agent.add_demonstrations(
        arrays.states,
        arrays.actions,
        arrays.rewards,
        arrays.dones,
        episode_ids=arrays.episode_ids,
        masks=arrays.masks,
    )


# ------------------------------------------------------------------------------------------- arms
def run_imitation(seed: int, s: Settings, config: SimulatorConfig) -> dict[str, Any]:
    """Masked cross-entropy on the expert logs with the agent's network class; greedy evaluation."""
    import torch

    from agent.networks import DuelingQNetwork

    torch.manual_seed(seed)
    catalogue = generate_catalogue(config)
    arrays, _ = _demos(seed, s, config)
    net = DuelingQNetwork(config.obs_dim, config.n_items, s.hidden_sizes)
    opt = torch.optim.Adam(net.parameters(), lr=s.learning_rate)
    states = torch.as_tensor(arrays.states)
    actions = torch.as_tensor(arrays.actions)
    masks = torch.as_tensor(arrays.masks)
    rng = np.random.default_rng([seed, 3])
    losses = []
    for step in range(s.pretrain_steps):
        idx = torch.as_tensor(rng.integers(0, len(actions), size=s.batch_size))
        logits = net(states[idx]).masked_fill(~masks[idx], -1e9)
        loss = torch.nn.functional.cross_entropy(logits, actions[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, s.pretrain_steps // 100) == 0:
            losses.append(float(loss.detach()))

    def q_fn(x: np.ndarray, m: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = net(torch.as_tensor(x)).masked_fill(~torch.as_tensor(m), float("-inf"))
        return out.numpy()

    eval_seeds = session_seeds(EVAL_SEED_OFFSET + seed, s.eval_sessions)
    returns = evaluate_greedy(q_fn, eval_seeds, config, catalogue)
    return {"arm": "imitation", "seed": seed, "return": float(returns.mean()), "ce_loss": losses}


def run_references(seed: int, s: Settings, config: SimulatorConfig) -> dict[str, Any]:
    """Expert, random and oracle on this seed's evaluation users."""
    eval_seeds = session_seeds(EVAL_SEED_OFFSET + seed, s.eval_sessions)
    return {
        "arm": "references",
        "seed": seed,
        **{
            name: float(evaluate_reference(name, eval_seeds, config, seed).mean())
            for name in ("expert", "random", "oracle")
        },
    }


def run_rl(
    arm: str, seed: int, s: Settings, config: SimulatorConfig, make_agent: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """DQfD (pretrain + online) or PDD DQN (online from scratch); evaluations at ``s.checkpoints``.

    ``make_agent(state_dim, n_items, config, seed)`` builds the agent (default ``agent.DQfDAgent``); any
    object with its calls used here will do (benchmarks/feature_adapter.py: the service's feature network).
    """
    import torch

    from agent import DQfDAgent

    torch.set_num_threads(1)
    catalogue = generate_catalogue(config)
    approx_updates = s.pretrain_steps * (arm == "dqfd") + s.online_sessions * 15 // s.train_every
    if arm == "dqfd":
        cfg = _agent_config(s, approx_updates, lambda_margin=1.0, epsilon=s.dqfd_epsilon)
    else:
        cfg = _agent_config(s, approx_updates, lambda_margin=0.0, epsilon=s.pdd_epsilon_end)
    agent = (make_agent or DQfDAgent)(config.obs_dim, config.n_items, cfg, seed=seed)
    result: dict[str, Any] = {"arm": arm, "seed": seed, "curve": [], "pretrain": None}
    started = time.perf_counter()
    if arm == "dqfd":
        arrays, demo_return = _demos(seed, s, config)
        add_demonstration_arrays(agent, arrays)
        summary = agent.pretrain(s.pretrain_steps, log_every=max(1, s.pretrain_steps // 50))
        result["pretrain"] = {"history": summary["history"], "seconds": summary["seconds"]}
        result["demo_return"] = demo_return
        agent.config.lambda_margin = s.dqfd_online_margin

    eval_seeds = session_seeds(EVAL_SEED_OFFSET + seed, s.eval_sessions)
    train_seeds = session_seeds(2 * EVAL_SEED_OFFSET + seed, s.online_sessions)
    rng = np.random.default_rng([seed, 5])

    def checkpoint(sessions: int, env_steps: int) -> None:
        returns = evaluate_greedy(agent.q_values, eval_seeds, config, catalogue)
        result["curve"].append(
            {
                "sessions": sessions,
                "env_steps": env_steps,
                "updates": agent.n_updates - agent.n_pretrain_updates,
                "return": float(returns.mean()),
                "seconds": time.perf_counter() - started,
            }
        )
        print(f"  {arm} seed {seed}: {sessions} sessions -> {returns.mean():.2f}", flush=True)

    def epsilon(sessions_done: int) -> float:
        if arm == "dqfd":
            return s.dqfd_epsilon
        frac = min(1.0, sessions_done / max(1, s.pdd_epsilon_sessions))
        return s.pdd_epsilon_start + frac * (s.pdd_epsilon_end - s.pdd_epsilon_start)

    pending = sorted(c for c in s.checkpoints if c <= s.online_sessions)
    if pending and pending[0] == 0:
        checkpoint(0, 0)
        pending.pop(0)
    envs = [RecommendationEnv(config, catalogue) for _ in range(min(s.parallel_envs, s.online_sessions))]
    obs: list[np.ndarray | None] = [None] * len(envs)
    masks: list[np.ndarray | None] = [None] * len(envs)
    buffers: list[list[tuple]] = [[] for _ in envs]
    next_user = 0
    done_sessions = 0
    env_steps = 0
    since_update = 0

    def start(i: int) -> None:
        nonlocal next_user
        if next_user < len(train_seeds):
            o, info = envs[i].reset(seed=train_seeds[next_user])
            obs[i], masks[i] = o, info["action_mask"]
            next_user += 1
        else:
            obs[i] = None

    for i in range(len(envs)):
        start(i)
    while pending:
        active = [i for i in range(len(envs)) if obs[i] is not None]
        if not active:
            break
        states = np.stack([obs[i] for i in active])
        mask_arr = np.stack([masks[i] for i in active])
        greedy = np.argmax(agent.q_values(states, mask_arr), axis=1)
        eps = epsilon(done_sessions)
        for row, i in enumerate(active):
            action = int(greedy[row])
            if rng.random() < eps:
                action = int(rng.choice(np.flatnonzero(mask_arr[row])))
            o, r, term, trunc, info = envs[i].step(action)
            buffers[i].append((obs[i], action, r, o, term, masks[i], info["action_mask"], trunc))
            obs[i], masks[i] = o, info["action_mask"]
            env_steps += 1
            since_update += 1
            if term or trunc:
                for tr in buffers[i]:
                    agent.observe(*tr[:5], mask=tr[5], next_mask=tr[6], truncated=tr[7])
                buffers[i] = []
                done_sessions += 1
                start(i)
                if pending and done_sessions >= pending[0]:
                    checkpoint(done_sessions, env_steps)
                    pending.pop(0)
            while since_update >= s.train_every and agent.n_agent_transitions >= s.batch_size:
                agent.train_step()
                since_update -= s.train_every
    result["seconds"] = time.perf_counter() - started
    return result


def _job(args: tuple[str, int, Settings, dict[str, Any]]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    arm, seed, s, config_dict = args
    config = SimulatorConfig(**config_dict)
    if arm == "imitation":
        return run_imitation(seed, s, config)
    if arm == "references":
        return run_references(seed, s, config)
    return run_rl(arm, seed, s, config)


# -------------------------------------------------------------------------------------- reporting
def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width (Student t over seeds)."""
    from statistics import mean, stdev

    t95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
    n = len(values)
    if n < 2:
        return float(values[0]), float("nan")
    return mean(values), t95.get(n - 1, 1.96) * stdev(values) / np.sqrt(n)


def aggregate(results: list[dict[str, Any]], s: Settings) -> dict[str, Any]:
    """Per-arm means and CIs at every checkpoint, and the target checks."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    refs = {name: [r[name] for r in by_arm["references"]] for name in ("expert", "random", "oracle")}
    summary: dict[str, Any] = {"references": {k: mean_ci(v) for k, v in refs.items()}, "curves": {}}
    for arm in ("dqfd", "pdd"):
        points = {}
        for r in by_arm.get(arm, []):
            for p in r["curve"]:
                points.setdefault(p["sessions"], []).append(p)
        summary["curves"][arm] = [
            {
                "sessions": k,
                "return": mean_ci([p["return"] for p in v]),
                "env_steps": float(np.mean([p["env_steps"] for p in v])),
                "updates": float(np.mean([p["updates"] for p in v])),
                "seeds": len(v),
            }
            for k, v in sorted(points.items())
        ]
    summary["imitation"] = mean_ci([r["return"] for r in by_arm.get("imitation", [])])
    expert = summary["references"]["expert"][0]
    dqfd = {p["sessions"]: p for p in summary["curves"]["dqfd"]}
    pdd = {p["sessions"]: p for p in summary["curves"]["pdd"]}
    last = max(dqfd)
    exceed = next((p for p in summary["curves"]["dqfd"] if p["return"][0] > expert), None)
    # Per-seed paired comparison at the last checkpoint.
    final_d = {r["seed"]: r["curve"][-1]["return"] for r in by_arm["dqfd"]}
    final_p = {r["seed"]: r["curve"][-1]["return"] for r in by_arm["pdd"]}
    diffs = [final_d[k] - final_p[k] for k in final_d if k in final_p]
    summary["targets"] = {
        "pretrained_ratio": dqfd[0]["return"][0] / expert,
        "final_ratio": dqfd[last]["return"][0] / expert,
        "final_sessions": last,
        "dqfd_minus_pdd": mean_ci(diffs) if diffs else (float("nan"), float("nan")),
        "pdd_final": pdd[last]["return"][0] if last in pdd else float("nan"),
        "exceed_sessions": None if exceed is None else exceed["sessions"],
        "exceed_env_steps": None if exceed is None else exceed["env_steps"],
    }
    # Crossings and the average evaluation return over the online phase (trapezoid over checkpoints),
    # a proxy for what users saw while the arm was learning.
    summary["online"] = {}
    for arm in ("dqfd", "pdd"):
        curve = summary["curves"][arm]
        per_seed = []
        for r in by_arm.get(arm, []):
            x = np.array([p["sessions"] for p in r["curve"]], dtype=float)
            y = np.array([p["return"] for p in r["curve"]])
            per_seed.append(
                float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0])) if len(x) > 1 else y[0]
            )
        summary["online"][arm] = {
            "average_return": mean_ci(per_seed) if per_seed else (float("nan"), float("nan")),
            "first_above_expert": next((p["sessions"] for p in curve if p["return"][0] > expert), None),
            "first_above_110": next((p["sessions"] for p in curve if p["return"][0] >= 1.1 * expert), None),
        }
    return summary


def _fmt(mc: tuple[float, float]) -> str:
    m, c = mc
    return f"{m:.2f} ± {c:.2f}" if np.isfinite(c) else f"{m:.2f}"


def write_report(
    summary: dict[str, Any],
    results: list[dict[str, Any]],
    s: Settings,
    command: str,
    out_dir: Path,
    stem: str,
    elapsed: float,
) -> list[str]:
    """Markdown table + target lines, JSON with everything, and the plots; returns the target lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t = summary["targets"]
    expert = summary["references"]["expert"][0]
    lines = [
        f"{'PASS' if t['pretrained_ratio'] >= 0.95 else 'FAIL'}: pretrained DQfD reaches "
        f"{100 * t['pretrained_ratio']:.1f}% of the expert's session return at online step 0 (target ≥ 95%)",
        f"{'PASS' if t['final_ratio'] >= 1.10 else 'FAIL'}: after {t['final_sessions']} online sessions DQfD "
        f"reaches {100 * t['final_ratio']:.1f}% of the expert (target ≥ 110%)",
        f"{'PASS' if t['dqfd_minus_pdd'][0] > 0 else 'FAIL'}: DQfD − PDD DQN after {t['final_sessions']} "
        f"sessions = {_fmt(t['dqfd_minus_pdd'])} (paired over seeds; target > 0)",
    ]
    report_points = [c for c in s.report_at if any(p["sessions"] == c for p in summary["curves"]["dqfd"])]
    head = (
        "| arm | "
        + " | ".join(f"{c} sessions" if c else "after pretraining (0)" for c in report_points)
        + " |"
    )
    rows = [head, "|---|" + "---:|" * len(report_points)]
    for arm, label in (("dqfd", "DQfD (pretrain + online)"), ("pdd", "PDD DQN from scratch")):
        pts = {p["sessions"]: p for p in summary["curves"][arm]}
        rows.append(f"| {label} | " + " | ".join(_fmt(pts[c]["return"]) for c in report_points) + " |")
    imit = _fmt(summary["imitation"])
    rows.append("| imitation only (offline) | " + " | ".join([imit] * len(report_points)) + " |")
    for name, label in (
        ("expert", "logging expert (myopic)"),
        ("oracle", "oracle (hidden state)"),
        ("random", "random"),
    ):
        ref = _fmt(summary["references"][name])
        rows.append(f"| {label} | " + " | ".join([ref] * len(report_points)) + " |")
    curve_rows = [
        "| online sessions | DQfD return | DQfD env steps | DQfD updates "
        "| PDD return | PDD env steps | PDD updates |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    pdd_pts = {p["sessions"]: p for p in summary["curves"]["pdd"]}
    for p in summary["curves"]["dqfd"]:
        q = pdd_pts.get(p["sessions"])
        pdd_cells = f"{_fmt(q['return'])} | {q['env_steps']:.0f} | {q['updates']:.0f}" if q else "– | – | –"
        dqfd_cells = f"{_fmt(p['return'])} | {p['env_steps']:.0f} | {p['updates']:.0f}"
        curve_rows.append(f"| {p['sessions']} | {dqfd_cells} | {pdd_cells} |")
    online = summary.get("online", {})
    online_lines = []
    for arm, label in (("dqfd", "DQfD"), ("pdd", "PDD DQN")):
        o = online.get(arm)
        if o:
            above = "never" if o["first_above_expert"] is None else f"{o['first_above_expert']} sessions"
            above110 = "never" if o["first_above_110"] is None else f"{o['first_above_110']} sessions"
            online_lines.append(
                f"- {label}: average evaluation return over the online phase {_fmt(o['average_return'])}; "
                f"first checkpoint above the expert: {above}; at ≥ 110% of the expert: {above110}."
            )
    diag_rows = _diagnostics_table(out_dir, stem)
    notes_path = out_dir / f"{stem}_notes.md"
    notes = notes_path.read_text().strip().splitlines() if notes_path.exists() else []
    exceed = (
        "never within the run"
        if t["exceed_sessions"] is None
        else f"{t['exceed_sessions']} online sessions ({t['exceed_env_steps']:.0f} environment steps)"
    )
    md = [
        "# Offline-to-online: DQfD on the recommendation simulator",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        f"Wall time {elapsed / 60:.1f} min, {s.seeds} seeds, {s.eval_sessions} greedy evaluation sessions "
        "per "
        f"seed and checkpoint (the same users for every arm), {s.demo_sessions} expert-logged sessions, "
        f"{s.pretrain_steps} pretraining updates, one update per {s.train_every} online steps. "
        "Mean session return (clicks per session) ± 95% CI over seeds.",
        "",
        *rows,
        "",
        f"DQfD first exceeds the expert's mean ({expert:.2f}) after: {exceed}.",
        "",
        "## Targets",
        "",
        *[f"- {line}" for line in lines],
        "",
        "## Learning curves (mean over seeds; env steps and gradient updates of the online phase)",
        "",
        *curve_rows,
        "",
        *online_lines,
        "",
        *([*diag_rows, ""] if diag_rows else []),
        *([*notes, ""] if notes else []),
        "## Settings",
        "",
        "```json",
        json.dumps(asdict(s), indent=1),
        "```",
        "",
        f"Plots: `{stem}.png` (session return against online sessions; DQfD pretraining losses).",
    ]
    (out_dir / f"{stem}.md").write_text("\n".join(md) + "\n")
    payload = {
        "command": command,
        "settings": asdict(s),
        "summary": summary,
        "runs": results,
        "target_lines": lines,
        "elapsed_seconds": elapsed,
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=float))
    plot(summary, results, out_dir / f"{stem}.png")
    return lines


def _diagnostics_table(out_dir: Path, stem: str) -> list[str]:
    """A table of the DQfD diagnostic runs (``{stem}_diag_*_partial.json``), if any."""
    rows: list[str] = []
    for path in sorted(out_dir.glob(f"{stem}_diag_*_partial.json")):
        data = json.loads(path.read_text())
        points: dict[int, list[float]] = {}
        for r in data["runs"]:
            for p in r.get("curve", []):
                points.setdefault(p["sessions"], []).append(p["return"])
        if not points:
            continue
        if not rows:
            rows = ["## Diagnostic runs (DQfD variants, fewer seeds)", ""]
        cells = ", ".join(f"{k}: {np.mean(v):.2f}" for k, v in sorted(points.items()))
        seeds = len(data["runs"])
        rows.append(f"- `{data['command']}` ({seeds} seeds) — mean return by online sessions: {cells}")
    return rows


def plot(summary: dict[str, Any], results: list[dict[str, Any]], path: Path) -> None:
    """Left: session return vs online sessions (mean and 95% band); right: DQfD pretraining losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    xmax = max(p["sessions"] for p in summary["curves"]["dqfd"])
    for arm, label, color in (("dqfd", "DQfD", "C0"), ("pdd", "PDD DQN (scratch)", "C1")):
        pts = summary["curves"][arm]
        x = np.array([p["sessions"] for p in pts])
        m = np.array([p["return"][0] for p in pts])
        c = np.nan_to_num(np.array([p["return"][1] for p in pts]))
        ax.plot(x, m, marker="o", ms=3, label=label, color=color)
        ax.fill_between(x, m - c, m + c, alpha=0.2, color=color)
    flat = [("imitation", summary["imitation"], "C2")] + [
        (name, summary["references"][name], col)
        for name, col in (("expert", "C3"), ("oracle", "C4"), ("random", "C7"))
    ]
    for name, (m, c), color in flat:
        ax.plot([0, xmax], [m, m], ls="--", color=color, label=name)
        if np.isfinite(c):
            ax.fill_between([0, xmax], m - c, m + c, alpha=0.1, color=color)
    ax.set_xlabel("online sessions")
    ax.set_ylabel("mean session return (greedy evaluation)")
    ax.set_title("Session return vs online sessions")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    keys = ("loss", "j_dq", "j_n", "j_e", "j_l2")
    for key in keys:
        curves = [[h[key] for h in r["pretrain"]["history"]] for r in results if r.get("pretrain")]
        if not curves:
            continue
        steps = [h["step"] for h in next(r for r in results if r.get("pretrain"))["pretrain"]["history"]]
        ax2.plot(steps, np.mean(curves, axis=0), label=key)
    ax2.set_yscale("log")
    ax2.set_xlabel("pretraining update")
    ax2.set_title("DQfD pretraining loss components (mean over seeds)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> tuple[Settings, Path, str]:
    """Settings from the command line (``--quick`` first, then any override)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke test (< 2 minutes)")
    p.add_argument("--seeds", type=int)
    p.add_argument("--demo-sessions", type=int)
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--online-sessions", type=int)
    p.add_argument("--checkpoints", type=int, nargs="+")
    p.add_argument("--eval-sessions", type=int)
    p.add_argument("--train-every", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--dqfd-epsilon", type=float)
    p.add_argument("--dqfd-online-margin", type=float)
    p.add_argument("--arms", nargs="+", choices=ARMS, help="subset of arms to run (default: all)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--rerender", type=Path, help="rebuild the report and plot from a saved results JSON")
    p.add_argument("--stem", default=None, help="output file stem (default offline_to_online[_quick])")
    a = p.parse_args(argv)
    s = quick_settings() if a.quick else Settings()
    for name in (
        "seeds",
        "demo_sessions",
        "pretrain_steps",
        "online_sessions",
        "eval_sessions",
        "train_every",
        "workers",
        "learning_rate",
        "dqfd_epsilon",
        "dqfd_online_margin",
    ):
        value = getattr(a, name)
        if value is not None:
            setattr(s, name, value)
    if a.arms is not None:
        s.arms = tuple(a.arms)
    if a.checkpoints is not None:
        s.checkpoints = tuple(sorted(set(a.checkpoints)))
    s.checkpoints = tuple(c for c in s.checkpoints if c <= s.online_sessions)
    if s.online_sessions not in s.checkpoints:
        s.checkpoints = (*s.checkpoints, s.online_sessions)
    if 0 not in s.checkpoints:
        s.checkpoints = (0, *s.checkpoints)
    s.report_at = tuple(c for c in s.report_at if c in s.checkpoints) or (0, s.online_sessions)
    stem = a.stem or ("offline_to_online_quick" if a.quick else "offline_to_online")
    s.rerender = a.rerender
    return s, a.out_dir, stem


def main(argv: list[str] | None = None) -> list[str]:
    """Run the experiment, write the report, print the target lines (returned too)."""
    argv = sys.argv[1:] if argv is None else argv
    s, out_dir, stem = parse_args(argv)
    if s.rerender is not None:
        saved = json.loads(Path(s.rerender).read_text())
        settings = Settings(**{k: v for k, v in saved["settings"].items() if k != "rerender"})
        settings.checkpoints = tuple(settings.checkpoints)
        settings.report_at = tuple(settings.report_at)
        summary = aggregate(saved["runs"], settings)
        lines = write_report(
            summary, saved["runs"], settings, saved["command"], out_dir, stem, saved["elapsed_seconds"]
        )
        for line in lines:
            print(line)
        return lines
    command = command_line("benchmarks/offline_to_online.py", argv)
    config = SimulatorConfig()
    # Longest jobs first (DQfD, PDD), then the cheap ones, for a balanced pool.
    jobs = [(arm, seed, s, config.to_dict()) for arm in ARMS for seed in range(s.seeds) if arm in s.arms]
    started = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if s.workers > 1:
        with get_context("spawn").Pool(s.workers) as pool:
            results = []
            for r in pool.imap_unordered(_job, jobs):
                results.append(r)
                print(
                    f"[{(time.perf_counter() - started) / 60:5.1f} min] done {r['arm']} seed {r['seed']}",
                    flush=True,
                )
    else:
        results = [_job(j) for j in jobs]
    results.sort(key=lambda r: (r["arm"], r["seed"]))
    elapsed = time.perf_counter() - started
    if set(s.arms) != set(ARMS):  # a partial run (exploration): raw curves only, no report
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{stem}_partial.json").write_text(json.dumps({"command": command, "runs": results}))
        for r in results:
            curve = [(p["sessions"], round(p["return"], 2)) for p in r.get("curve", [])]
            print(r["arm"], r["seed"], curve or {k: v for k, v in r.items() if k not in ("ce_loss",)})
        return []
    summary = aggregate(results, s)
    lines = write_report(summary, results, s, command, out_dir, stem, elapsed)
    print((out_dir / f"{stem}.md").read_text())
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    main()
