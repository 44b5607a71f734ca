"""Metrics of a run, 95% bootstrap confidence intervals over seeds, and the paper's claims."""

from __future__ import annotations

from typing import Any

import numpy as np

from .settings import DQFD_VARIANTS, Budget

GRID_POINTS = 100
BOOTSTRAP_RESAMPLES = 10_000
REACH_WINDOW = 5
"""Steps to the demonstrator's mean: the first step at which the mean of the last 5 training episodes
reaches it."""


def bootstrap_ci(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval of the mean over seeds (NaN where there are no values)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (resamples, x.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(low), float(high)


def curve(result: dict[str, Any], budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    """Learning curve on a grid of environment steps: at each grid point, the mean return of the training
    episodes that ended since the previous point, carried forward when none did (backfilled with the first
    episode before it ends). Step 0 is the greedy evaluation after pretraining. Arms without online learning
    (imitation) have a flat curve at their evaluation return."""
    grid = np.linspace(0, budget.env_steps, GRID_POINTS + 1).astype(int)
    start = float(np.mean(result["start_eval"])) if result.get("start_eval") else float("nan")
    episodes = result["episodes"]
    if not episodes:
        flat = float(np.mean(result["final_eval"])) if result.get("final_eval") else float("nan")
        return grid, np.full(grid.shape, flat)
    ends = np.asarray([e[0] for e in episodes])
    returns = np.asarray([e[1] for e in episodes], dtype=float)
    values = np.empty(grid.shape)
    values[0] = start if np.isfinite(start) else returns[0]
    last = returns[0]
    for i in range(1, grid.size):
        inside = (ends > grid[i - 1]) & (ends <= grid[i])
        if inside.any():
            last = float(returns[inside].mean())
        values[i] = last
    return grid, values


def metrics(result: dict[str, Any], budget: Budget, demo_mean: float) -> dict[str, float]:
    """start (greedy return after pretraining), early (mean curve over the early window), final (greedy
    return at the end), steps to the demonstrator's mean (NaN when never reached)."""
    grid, values = curve(result, budget)
    in_window = (grid > 0) & (grid <= budget.early_steps)
    reach = float("nan")
    episodes = result["episodes"]
    if episodes:
        returns = np.asarray([e[1] for e in episodes], dtype=float)
        for k in range(len(episodes)):
            if returns[max(0, k - REACH_WINDOW + 1) : k + 1].mean() >= demo_mean:
                reach = float(episodes[k][0])
                break
    elif result.get("final_eval") and np.mean(result["final_eval"]) >= demo_mean:
        reach = 0.0
    return {
        "start": float(np.mean(result["start_eval"])) if result.get("start_eval") else float("nan"),
        "early": float(values[in_window].mean()),
        "final": float(np.mean(result["final_eval"])) if result.get("final_eval") else float("nan"),
        "steps_to_demo": reach,
        "updates_per_second": _rate(result),
    }


def _rate(result: dict[str, Any]) -> float:
    seconds = result.get("pretrain_seconds", 0.0) + result.get("online_seconds", 0.0)
    return result["updates"] / seconds if result.get("updates") and seconds > 0 else float("nan")


def summarize(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    """Mean and CI of each metric over seeds; steps_to_demo counts seeds that never reached it."""
    out: dict[str, Any] = {"seeds": len(per_seed)}
    for key in ("start", "early", "final", "updates_per_second"):
        out[key] = bootstrap_ci([m[key] for m in per_seed])
    reached = [m["steps_to_demo"] for m in per_seed if np.isfinite(m["steps_to_demo"])]
    out["reached"] = len(reached)
    out["steps_to_demo"] = bootstrap_ci(reached)
    return out


CLAIM_NAMES = {"dqfd": "DQfD", "q_filter": "DQfD + Q-filter"}
"""How a claim line names each variant of DQfD (settings.DQFD_VARIANTS); short forms of ARM_LABELS."""


def claims(table: dict[str, dict[str, dict[str, Any]]], demo_means: dict[str, float]) -> list[dict[str, Any]]:
    """The paper's claims as pass/fail rows, once for each DQfD variant in the table (the faithful DQfD's
    rows first, with their original wording, then the service's Q-filter variant's). ``table[task][arm]`` is
    :func:`summarize`'s output. A variant's claims cover the tasks where both it and PDD DQN ran."""
    rows: list[dict[str, Any]] = []
    for variant in DQFD_VARIANTS:
        tasks = [t for t in table if {variant, "pdd_dqn"} <= set(table[t])]
        if tasks:
            rows += _variant_claims({t: table[t] for t in tasks}, demo_means, variant)
    return rows


def _variant_claims(
    table: dict[str, dict[str, dict[str, Any]]], demo_means: dict[str, float], variant: str
) -> list[dict[str, Any]]:
    """The claims of one variant, computed only from its own numbers (and those of the arms it is compared
    with); for ``dqfd`` the text is that of the results files written before the Q-filter arm existed."""
    rows: list[dict[str, Any]] = []
    name = CLAIM_NAMES[variant]
    of_variant = "" if variant == "dqfd" else f" of {name}"

    def mean(task: str, arm: str, key: str) -> float:
        return table[task][arm][key][0] if arm in table[task] else float("nan")

    def add(task: str, text: str, left: float, right: float, passed: bool, names: tuple[str, str]) -> None:
        if not (np.isfinite(left) and np.isfinite(right)):
            return  # an arm of the claim was not run (e.g. --arms without it)
        rows.append(
            {
                "task": task,
                "claim": text,
                "pass": bool(passed),
                "left": left,
                "right": right,
                "names": names,
                "variant": variant,
            }
        )

    for task in table:
        a, b = mean(task, variant, "early"), mean(task, "pdd_dqn", "early")
        add(task, f"{name} beats PDD DQN over the early window", a, b, a > b, (name, "PDD DQN"))
        a, b = mean(task, variant, "start"), mean(task, "pdd_dqn", "start")
        add(task, f"{name} starts higher than PDD DQN", a, b, a > b, (name, "PDD DQN"))
        a, b = mean(task, variant, "final"), mean(task, "imitation", "final")
        add(task, f"{name} ends at least as high as imitation", a, b, a >= b, (name, "imitation"))
        # λ2 = 0 is the ablation of both variants: without J_E there is nothing for the Q-filter to filter.
        a, b = mean(task, "no_margin", "start"), mean(task, variant, "start")
        add(task, f"Removing the margin loss lowers the start{of_variant}", a, b, a < b, ("λ2=0", name))
    best = [(t, mean(t, variant, "final"), demo_means[t]) for t in table]
    exceeded = [t for t, f, d in best if f > d]
    rows.append(
        {
            "task": "any",
            "claim": f"{name} exceeds the demonstrator's mean on at least one task",
            "pass": bool(exceeded),
            "left": float("nan"),
            "right": float("nan"),
            "names": (name, "demonstrator"),
            "variant": variant,
            "detail": ", ".join(f"{t}: {f:.1f} vs {d:.1f}" for t, f, d in best),
        }
    )
    return rows


def claim_line(row: dict[str, Any]) -> str:
    verdict = "PASS" if row["pass"] else "FAIL"
    if row["task"] == "any":
        left, right = row["names"]
        return f"CLAIM [{verdict}] {row['claim']} (final {left} vs {right}: {row['detail']})"
    left, right = row["names"]
    return (
        f"CLAIM [{verdict}] {row['task']}: {row['claim']} "
        f"({left} {row['left']:.1f} vs {right} {row['right']:.1f})"
    )
