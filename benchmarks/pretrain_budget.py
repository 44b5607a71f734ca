"""How many pretraining updates the service needs before it serves (issue 11, "pretraining steps").

The service pretrains a fixed number of updates (``DQFD_PRETRAIN_STEPS``) before its first version serves,
and promises to start "as good as the policy that made the logs". benchmarks/sensitivity.py found that its
budget reaches the demonstrator on the simulator and on CartPole and Acrobot but not on MountainCar and
LunarLander. This benchmark measures the whole pretraining curve instead of three points: one agent per
problem and seed, with the service's configuration (``sensitivity.default_config`` through
``service.learning.agents.agent_config``), pretrained in stages to each of :data:`CHECKPOINTS` updates and
evaluated greedily after each stage, with no online step.

At every checkpoint it records:

- the metric of benchmarks/sensitivity.py: the greedy session return as a ratio to the logging expert's
  (simulator) or the normalised score (return − random's) / (demonstrator's − random's) (Gymnasium), on
  the same evaluation users / episodes as that study;
- the agreement: the share of demonstration states whose greedy action is the demonstrated one (a
  signal the service has without an environment: a candidate for deriving the budget from the data);
- the mean Q over the demonstration states (the value scale still moving means TD has not converged);
- J_E (the margin loss) and J_DQ averaged over the last stage, and the CPU seconds spent pretraining.

All checkpoints of one run share the target period the service derives for the largest budget
(``derived_target_update_period(CHECKPOINTS[-1])`` = 1,000, the same as for any budget of 2,000 or more),
so points below 2,000 are not exactly what a budget that small would train (its τ would be shorter).

Every finished run is appended to ``<out>/<stem>_runs.jsonl``; a rerun skips the runs already there and
``--report`` rebuilds ``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` from them.

Cost (3 Dec 2026, shared 2-core machine, one torch thread): a Gymnasium run to 20,000 updates is 1–4 CPU
minutes (LunarLander's and CartPole's 10-episode evaluations are the longer); ``sim1000``'s 1,000-way head
makes its updates ~2× dearer than ``sim100``'s.

    .venv/bin/python benchmarks/pretrain_budget.py --workers 2     # 6 problems x 3 seeds
    .venv/bin/python benchmarks/pretrain_budget.py --network feature --problems sim100 \
        --stem pretrain_budget_feature                             # the feature network (~6 CPU min a run)
    .venv/bin/python benchmarks/pretrain_budget.py --report        # rebuild the report
    .venv/bin/python benchmarks/pretrain_budget.py --quick         # smoke test, < 1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
for _path in (str(BENCHMARKS), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import offline_to_online as o2o  # noqa: E402
import sensitivity  # noqa: E402
from command_line import command_line  # noqa: E402

from service.settings import Settings  # noqa: E402

CHECKPOINTS = (500, 1000, 2000, 4000, 7000, 10000, 15000, 20000)
"""Pretraining updates after which the agent is evaluated: from a quarter of the service's default budget
to 10× it (the paper benchmark pretrains 10,000; the paper 750,000)."""

QUICK_CHECKPOINTS = (20, 40)
"""``--quick``: a pipeline test (numbers meaningless)."""

REACH_FRACTION = 0.95
"""The report's "reaches the reference" line: the metric at ≥ 0.95, issue 11's "≥ 95% of the expert at the
first session" carried to every problem (normalised score 0.95 on Gymnasium)."""

DEFAULT_SEEDS = 3

MAX_SCORED_PAIRS = 1_000_000
"""The most (state, action) pairs scored at once for the demonstration statistics (memory bound)."""

NETWORK_NOTES = {
    "fixed": "the fixed head (one output per action, 2×256 dueling), as the service trains on a catalogue "
    "without numeric item columns and on any discrete action set.",
    "feature": "the service's feature network over the simulator's items.csv (benchmarks/feature_adapter.py: "
    "the item agent service.learning.item_agents builds), as the service trains on a catalogue with numeric "
    "item columns.",
}


def study_config() -> sensitivity.StudyConfig:
    """The service's default configuration with the largest checkpoint as its pretraining budget."""
    base = sensitivity.default_config()
    return dataclasses.replace(base, pretrain_steps=CHECKPOINTS[-1])


def _stages(
    agent: Any,
    checkpoints: tuple[int, ...],
    evaluate: Any,
    states: np.ndarray,
    actions: np.ndarray,
    masks: np.ndarray | None,
) -> list[dict[str, Any]]:
    """Pretrain ``agent`` to each checkpoint in turn; after each, the greedy return and the demonstration
    statistics (agreement, mean Q) and the last stage's mean losses."""
    points: list[dict[str, Any]] = []
    done = 0
    cpu = 0.0
    for target in checkpoints:
        started = time.process_time()
        summary = agent.pretrain(target - done)
        cpu += time.process_time() - started
        done = target
        greedy, best = _greedy_and_max(agent, states, masks)
        points.append(
            {
                "updates": target,
                "return": float(evaluate()),
                "agreement": float(np.mean(greedy == actions)),
                "mean_q": float(np.mean(best)),
                "j_e": float(summary["final"]["j_e"]),
                "j_dq": float(summary["final"]["j_dq"]),
                "pretrain_cpu_seconds": cpu,
            }
        )
    return points


def _greedy_and_max(
    agent: Any, states: np.ndarray, masks: np.ndarray | None, max_pairs: int = MAX_SCORED_PAIRS
) -> tuple[np.ndarray, np.ndarray]:
    """argmax_a Q(s, a) and max_a Q(s, a) for every demonstration state, scored in chunks of rows so that
    no chunk holds more than ``max_pairs`` (state, action) pairs: the feature network scores each pair
    through its towers, and all of the simulator's ~18,000 states × 1,000 items at once needed > 20 GB."""
    greedy, best = [], []
    n_actions = None
    start = 0
    while start < len(states):
        rows = 1 if n_actions is None else max(1, max_pairs // n_actions)
        q = agent.q_values(
            states[start : start + rows], None if masks is None else masks[start : start + rows]
        )
        n_actions = q.shape[1]
        greedy.append(np.argmax(q, axis=1))
        best.append(np.max(q, axis=1))
        start += rows
    return np.concatenate(greedy), np.concatenate(best)


def run_sim(
    seed: int, n_items: int, checkpoints: tuple[int, ...], quick: bool, network: str = "fixed"
) -> dict[str, Any]:
    """One simulator run: offline_to_online's demonstrations and evaluation users, the service's agent on
    ``network`` (``fixed``: the fixed head; ``feature``: the feature network the service trains on the
    simulator's items.csv, benchmarks/feature_adapter.py)."""
    import feature_adapter
    import torch

    from agent import DQfDAgent
    from simulator import SimulatorConfig, generate_catalogue

    s = sensitivity.sim_settings(quick, sensitivity.ONLINE_SESSIONS)
    config = SimulatorConfig(n_items=n_items)
    cfg = dataclasses.replace(
        sensitivity.service_agent_config(study_config()),
        replay_capacity=o2o._agent_config(s, 0, 1.0, s.dqfd_epsilon).replay_capacity,
        epsilon=s.dqfd_epsilon,
    )
    torch.manual_seed(seed)  # as offline_to_online.run_rl's callers
    catalogue = generate_catalogue(config)
    make = feature_adapter.feature_factory(config) if network == "feature" else DQfDAgent
    agent = make(config.obs_dim, config.n_items, cfg, seed=seed)
    arrays, _ = o2o._demos(seed, s, config)
    o2o.add_demonstration_arrays(agent, arrays)
    eval_seeds = o2o.session_seeds(o2o.EVAL_SEED_OFFSET + seed, s.eval_sessions)

    def evaluate() -> float:
        return float(o2o.evaluate_greedy(agent.q_values, eval_seeds, config, catalogue).mean())

    points = _stages(agent, checkpoints, evaluate, arrays.states, arrays.actions, arrays.masks)
    return {
        "points": points,
        "demonstrations": len(arrays.actions),
        "agent_config": sensitivity._config_dict(cfg),
    }


def run_gym(seed: int, env_id: str, checkpoints: tuple[int, ...], quick: bool) -> dict[str, Any]:
    """One Gymnasium run: the paper benchmark's demonstrations and evaluation episodes, the service's
    agent (as benchmarks/sensitivity.run_gym, without the online phase)."""
    import gymnasium as gym
    import torch
    from paper.demonstrators import demonstrations
    from paper.runner import evaluate as evaluate_episodes
    from paper.runner import to_episodes

    from agent import DQfDAgent

    study = study_config()
    budget = sensitivity.gym_budget(env_id, study, quick, None)
    cfg = sensitivity.service_agent_config(study, replay_capacity=sensitivity.GYM_REPLAY_CAPACITY)
    env = gym.make(env_id)
    state_dim, n_actions = env.observation_space.shape[0], int(env.action_space.n)
    env.close()
    torch.manual_seed(seed)  # as paper.runner.run_job
    agent = DQfDAgent(state_dim, n_actions, cfg, seed=seed)
    demos = demonstrations(env_id, budget.demo_episodes)
    agent.add_demonstration_episodes(to_episodes(demos))
    states = np.concatenate([np.asarray(d.states, dtype=np.float32) for d in demos])
    actions = np.concatenate([np.asarray(d.actions) for d in demos])

    def evaluate() -> float:
        policy = lambda obs: agent.act(obs, epsilon=0.0)  # noqa: E731
        return float(np.mean(evaluate_episodes(policy, env_id, budget.eval_episodes)))

    points = _stages(agent, checkpoints, evaluate, states, actions, None)
    return {"points": points, "demonstrations": len(actions), "agent_config": sensitivity._config_dict(cfg)}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One job (a run or a problem's references) as a jsonl row; the entry point of a worker process."""
    import torch

    torch.set_num_threads(1)
    started, cpu_started = time.perf_counter(), time.process_time()
    problem, quick, seed = job["problem"], job["quick"], job["seed"]
    checkpoints = QUICK_CHECKPOINTS if quick else CHECKPOINTS
    if problem in sensitivity.SIM_PROBLEMS:
        n_items = sensitivity.SIM_PROBLEMS[problem]
        if job["config"] == "references":
            s = sensitivity.sim_settings(quick, sensitivity.ONLINE_SESSIONS)
            out = sensitivity.sim_references(seed, n_items, s)
        else:
            out = run_sim(seed, n_items, checkpoints, quick, job["network"])
    elif job["config"] == "references":
        out = sensitivity.gym_references(problem, quick, None)
    else:
        out = run_gym(seed, problem, checkpoints, quick)
    row = {k: job[k] for k in ("problem", "config", "seed", "network")}
    return {
        **row,
        **out,
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
    }


def jobs(
    problems: list[str], seeds: list[int], quick: bool, network: str = "fixed"
) -> Iterator[dict[str, Any]]:
    """Seed-major, each problem's references first (per seed on the simulator, once on Gymnasium)."""
    for seed in seeds:
        for problem in problems:
            sim = problem in sensitivity.SIM_PROBLEMS
            common = {"problem": problem, "quick": quick, "network": network}
            if sim or seed == seeds[0]:
                yield {**common, "config": "references", "seed": seed if sim else None}
            yield {**common, "config": "default", "seed": seed}


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["problem"], row["config"], row["seed"])


# -------------------------------------------------------------------------------------- reporting
def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per problem and checkpoint: the metric, agreement and mean Q (mean, 95% CI over seeds), the
    smallest checkpoint whose mean metric reaches :data:`REACH_FRACTION`, and the best checkpoint."""
    out: dict[str, Any] = {}
    for problem in sensitivity.PROBLEMS:
        prow = [r for r in rows if r["problem"] == problem]
        refs = {r["seed"]: r for r in prow if r["config"] == "references"}
        runs = [r for r in prow if r["config"] != "references"]
        if not runs or not refs:
            continue
        metric = sensitivity._metric_fn(problem, refs)
        per_point: dict[int, dict[str, list[float]]] = {}
        seeds = []
        for run in runs:
            if metric({"seed": run["seed"], "start": 0.0, "end": 0.0}) is None:
                continue
            seeds.append(run["seed"])
            for p in run["points"]:
                m = metric({"seed": run["seed"], "start": p["return"], "end": p["return"]})["start"]
                entry = per_point.setdefault(p["updates"], {})
                for name, value in (
                    ("metric", m),
                    ("agreement", p["agreement"]),
                    ("mean_q", p["mean_q"]),
                    ("j_e", p["j_e"]),
                    ("cpu", p["pretrain_cpu_seconds"]),
                ):
                    entry.setdefault(name, []).append(value)
        points = {
            u: {name: sensitivity.mean_ci(values) for name, values in entry.items()}
            for u, entry in sorted(per_point.items())
        }
        counts = [run["demonstrations"] for run in runs if "demonstrations" in run]
        reached = [u for u, e in points.items() if e["metric"][0] >= REACH_FRACTION]
        best = max(points, key=lambda u: points[u]["metric"][0]) if points else None
        out[problem] = {
            "metric": "ratio_to_expert" if problem in sensitivity.SIM_PROBLEMS else "normalised_score",
            "seeds": sorted(seeds),
            "tolerance": sensitivity._tolerance(problem, refs),
            "references": sensitivity._reference_means(refs),
            "points": points,
            "first_reaching": reached[0] if reached else None,
            "best": best,
            # the simulator's logs differ per seed: their range
            "demonstrations": "–".join(dict.fromkeys(f"{c:,}" for c in (min(counts), max(counts))))
            if counts
            else "",
        }
    return out


def write_report(summary: dict[str, Any], meta: dict[str, Any], out: Path, stem: str) -> None:
    """``<stem>.md`` (tables per problem), ``<stem>.json`` and ``<stem>.png``."""
    default_budget = int(Settings.model_fields["pretrain_steps"].default)
    lines = [
        "# Pretraining budget of the service (issue 11)",
        "",
        "Commands, in order (each run appended to "
        f"`{stem}_runs.jsonl` as it finished; a later command skips the runs already there):",
        "",
        *[f"    {c}" for c in meta["commands"]],
        "",
        meta["machine"],
        "",
        f"Network: {NETWORK_NOTES[meta.get('network', 'fixed')]}",
        "",
        "One agent per problem and seed with the service's configuration (the defaults of "
        "benchmarks/sensitivity.py, τ = 1,000), pretrained in stages and evaluated greedily after each "
        "stage, with no online step. Metric: as benchmarks/sensitivity.py (simulator: session return / the "
        "expert's; Gymnasium: (return − random) / (demonstrator − random)). Agreement: share of "
        "demonstration states whose greedy action is the demonstrated one. Mean Q: mean over the "
        "demonstration states of max_a Q. Mean ± 95% CI (Student t) over seeds. "
        f"The service's default budget is {default_budget:,} updates.",
        "",
        "## Where each problem gets to",
        "",
        f"Mean metric over the seeds after each number of pretraining updates (the service's default "
        f"budget, {default_budget:,}, in bold; 95% intervals in the tables below).",
        "",
    ]
    checkpoints = sorted({u for ps in summary.values() for u in ps["points"]})
    head = [f"**{u:,}**" if u == default_budget else f"{u:,}" for u in checkpoints]
    lines += [
        f"| problem | seeds | demonstrations | {' | '.join(head)} | first ≥ {REACH_FRACTION:g} |",
        "|---|---:|---:|" + "---:|" * len(checkpoints) + "---:|",
    ]
    for problem, ps in summary.items():
        cells = [f"{ps['points'][u]['metric'][0]:.2f}" if u in ps["points"] else "–" for u in checkpoints]
        first = ps["first_reaching"]
        lines.append(
            f"| {problem} | {len(ps['seeds'])} | {ps['demonstrations']} | {' | '.join(cells)} | "
            f"{f'{first:,}' if first is not None else 'none'} |"
        )
    for problem, ps in summary.items():
        lines += [
            "",
            f"## {problem} ({ps['metric'].replace('_', ' ')}; X = {ps['tolerance']:.3f})",
            "",
            "References (mean return on the evaluation set): "
            + ", ".join(f"{k} {v:.2f}" for k, v in ps["references"].items())
            + ".",
            "",
            "| updates | metric | agreement | mean Q | J_E (last stage) | pretraining CPU s |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        fmt = sensitivity._fmt
        for u, e in ps["points"].items():
            lines.append(
                f"| {u:,} | {fmt(e['metric'])} | {fmt(e['agreement'])} | {fmt(e['mean_q'], 2)} | "
                f"{fmt(e['j_e'])} | {e['cpu'][0]:.0f} |"
            )
    notes = out / f"{stem}_notes.md"
    if notes.exists():  # hand-written reading of the numbers, kept across re-reports
        lines += ["", notes.read_text().strip()]
    cpu = meta.get("cpu_seconds", 0.0)
    lines += ["", f"Compute: {cpu / 3600:.2f} CPU core-hours over the runs.", "", f"Plot: `{stem}.png`."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps({**meta, "summary": summary}, indent=1, default=float))
    plot(summary, default_budget, out / f"{stem}.png")


def plot(summary: dict[str, Any], default_budget: int, path: Path) -> None:
    """Three panels against pretraining updates (log scale): the metric, the agreement and the mean Q
    relative to its value at the last checkpoint; one line per problem, the default budget marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for i, (problem, ps) in enumerate(summary.items()):
        us = list(ps["points"])
        metric = np.array([ps["points"][u]["metric"] for u in us])
        axes[0].plot(us, metric[:, 0], "-o", ms=3, color=f"C{i}", label=problem)
        axes[0].fill_between(
            us, metric[:, 0] - metric[:, 1], metric[:, 0] + metric[:, 1], color=f"C{i}", alpha=0.12
        )
        axes[1].plot(us, [ps["points"][u]["agreement"][0] for u in us], "-o", ms=3, color=f"C{i}")
        q = np.array([ps["points"][u]["mean_q"][0] for u in us])
        axes[2].plot(us, q / abs(q[-1]) if q[-1] else q, "-o", ms=3, color=f"C{i}")
    axes[0].axhline(REACH_FRACTION, color="0.4", ls="--", lw=1)
    titles = (
        "metric after pretraining (1 = expert / demonstrator)",
        "agreement with the demonstrated action",
        "mean max-Q on demonstrations / |its last value|",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.axvline(default_budget, color="0.3", ls=":", lw=1.2)
        if default_budget != sensitivity.STUDY_PRETRAIN_STEPS:
            ax.axvline(sensitivity.STUDY_PRETRAIN_STEPS, color="0.6", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("pretraining updates")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    former = sensitivity.STUDY_PRETRAIN_STEPS
    fig.suptitle(
        f"Pretraining curves with the service's configuration (dotted: the default budget, {default_budget:,}"
        + (f"; dashed: the former default, {former:,})" if former != default_budget else ")")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- command
def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budgets, 1 seed, 2 problems")
    p.add_argument(
        "--seeds", type=int, default=DEFAULT_SEEDS, help=f"seeds 0 .. N-1 (default {DEFAULT_SEEDS})"
    )
    p.add_argument("--problems", nargs="+", choices=sensitivity.PROBLEMS, default=list(sensitivity.PROBLEMS))
    p.add_argument(
        "--network",
        choices=("fixed", "feature"),
        default="fixed",
        help="fixed head, or the service's feature network (simulator problems only; use its own --stem)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes (one torch thread each)")
    p.add_argument("--out-dir", type=Path, default=o2o.RESULTS)
    p.add_argument("--stem", help="file stem (default pretrain_budget, pretrain_budget_quick with --quick)")
    p.add_argument("--report", action="store_true", help="only rebuild the report from the saved runs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or, with ``--report``, only report) and write the report; returns the summary."""
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    stem = a.stem or ("pretrain_budget_quick" if a.quick else "pretrain_budget")
    problems = ["sim100", "CartPole-v1"] if a.quick else a.problems
    if a.network == "feature":
        if a.quick:
            problems = ["sim100"]
        elif any(problem not in sensitivity.SIM_PROBLEMS for problem in problems):
            raise SystemExit("--network feature: simulator problems only (add --problems sim100 sim1000)")
    seeds = [0] if a.quick else list(range(a.seeds))
    a.out_dir.mkdir(parents=True, exist_ok=True)
    runs_path = a.out_dir / f"{stem}_runs.jsonl"
    meta_path = a.out_dir / f"{stem}_meta.json"
    before = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if a.report:
        if before is None:
            raise SystemExit(f"no {meta_path}: run without --report first")
        meta = before
    else:
        meta = {
            **(before or {}),
            "commands": [
                *(before or {}).get("commands", []),
                command_line("benchmarks/pretrain_budget.py", argv),
            ],
            "machine": sensitivity._machine(),
        }
        saved = sensitivity.load_rows(runs_path)
        networks = {r.get("network", "fixed") for r in saved}
        if networks - {a.network}:
            raise SystemExit(f"{runs_path} holds runs on the {networks.pop()} network: use another --stem")
        meta["network"] = a.network
        done = {_key(r) for r in saved}
        todo = [j for j in jobs(problems, seeds, a.quick, a.network) if _key(j) not in done]
        for row in sensitivity.execute(todo, a.workers, run_job):
            meta["cpu_seconds"] = meta.get("cpu_seconds", 0.0) + row["cpu_seconds"]
            with runs_path.open("a") as fh:
                fh.write(json.dumps(row, default=float) + "\n")
            meta_path.write_text(json.dumps(meta, indent=1))
            print(
                f"{row['problem']} {row['config']} seed {row['seed']} done ({row['wall_seconds']:.0f} s)",
                flush=True,
            )
        meta_path.write_text(json.dumps(meta, indent=1))
    rows = sensitivity.load_rows(runs_path)
    summary = summarise(rows)
    write_report(summary, meta, a.out_dir, stem)
    print((a.out_dir / f"{stem}.md").read_text())
    return summary


if __name__ == "__main__":
    main()
