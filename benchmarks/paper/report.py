"""The results table (Markdown), the claim lines and the learning-curve plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .settings import ARM_LABELS, Budget
from .stats import bootstrap_ci, claim_line, curve

COLORS = {
    "dqfd": "tab:blue",
    "q_filter": "tab:cyan",
    "pdd_dqn": "tab:red",
    "imitation": "tab:green",
    "no_margin": "tab:purple",
    "no_nstep": "tab:orange",
    "sb3_dqn": "tab:gray",
    "ding_dqfd_default": "tab:brown",
    "ding_dqfd_ours": "tab:pink",
}


def fmt(ci: tuple[float, float, float], digits: int = 1) -> str:
    mean, low, high = ci
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def table_markdown(
    table: dict[str, dict[str, dict[str, Any]]],
    budgets: dict[str, Budget],
    demo_stats: dict[str, tuple[float, float]],
) -> str:
    lines = []
    for task, arms in table.items():
        budget = budgets[task]
        mean, std = demo_stats[task]
        lines += [
            f"### {task}",
            "",
            f"Demonstrator: mean return {mean:.1f} (sd {std:.1f}); {budget.demo_episodes} demonstration "
            f"episodes; {budget.pretrain_updates:,} pretraining updates; {budget.env_steps:,} online steps; "
            f"early window = first {budget.early_steps:,} steps.",
            "",
            "| arm | seeds | return after pretraining | early-window mean | final return "
            "| steps to demonstrator's mean (reached) | updates/s |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for arm, s in arms.items():
            reach = f"{fmt(s['steps_to_demo'], 0)} ({s['reached']}/{s['seeds']})"
            lines.append(
                f"| {ARM_LABELS.get(arm, arm)} | {s['seeds']} | {fmt(s['start'])} | {fmt(s['early'])} "
                f"| {fmt(s['final'])} | {reach} | {fmt(s['updates_per_second'], 0)} |"
            )
        lines.append("")
    return "\n".join(lines)


def claims_markdown(rows: list[dict[str, Any]]) -> str:
    return "\n".join(["```", *[claim_line(r) for r in rows], "```"])


def plot_task(
    task: str,
    results: dict[str, list[dict[str, Any]]],
    budget: Budget,
    demo_mean: float,
    path: Path,
) -> None:
    """Mean learning curve and 95% bootstrap band over seeds for each arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for arm, runs in results.items():
        if not runs:
            continue
        curves = np.stack([curve(r, budget)[1] for r in runs])
        grid = curve(runs[0], budget)[0]
        bands = np.array([bootstrap_ci(curves[:, i], resamples=2_000)[1:] for i in range(grid.size)])
        mean = curves.mean(axis=0)
        color = COLORS.get(arm)
        style = "--" if arm == "imitation" else "-"
        ax.plot(grid, mean, style, color=color, label=f"{ARM_LABELS.get(arm, arm)} (n={len(runs)})")
        ax.fill_between(grid, bands[:, 0], bands[:, 1], color=color, alpha=0.15, linewidth=0)
    ax.axhline(demo_mean, color="black", linestyle=":", label=f"demonstrator mean ({demo_mean:.0f})")
    ax.axvline(budget.early_steps, color="0.7", linewidth=0.8)
    ax.set_xlabel("environment steps (after pretraining)")
    ax.set_ylabel("episode return")
    ax.set_title(f"{task}: mean and 95% bootstrap band over seeds")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
