"""Coverage of the off-policy estimators' 95% intervals on the project simulator, where the truth is known.

The logging policy is the simulator's myopic expert (softmax over its estimated click logits, temperature
0.3: every allowed item has a positive propensity). The targets are the same expert at lower temperatures,
its greedy version, uniform choice and an anti-expert, ever further from the logging policy. For each
of ``--seeds`` independent logged data sets of ``--sessions`` sessions, agent/off_policy.py estimates each
target's one-step value (IPS, SNIPS, DR) and session return (trajectory-wise and per-decision IS), and the
report counts how often the 95% interval holds the truth.

The truth, by rollout in the simulator, with its hidden state:

- one-step value: the mean over ``--truth-sessions`` fresh logging-policy sessions, decision by decision, of
  ``Σ_a π(a|x) p_click(x, a)`` with the user's true click probabilities (the expected immediate reward of
  the target on the states the logging policy visits, what the one-step estimators estimate);
- session return: the mean return of ``--return-sessions`` sessions served by the target itself.

DR's reward model is the expert's own click model on the observation (``sigmoid`` of its estimated click
logit): a separate model that is close but wrong (noisy interests, no hidden fatigue), as a real one is.

    nice -n 10 .venv/bin/python benchmarks/ope_coverage.py --return-sessions 10000   # 200 seeds, ~6 minutes
    .venv/bin/python benchmarks/ope_coverage.py --quick --out /tmp/ope_quick   # CI smoke run, seconds

Writes {out}.md, {out}.json and {out}.png (default out: benchmarks/results/ope_coverage).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from command_line import command_line

from agent.off_policy import doubly_robust, ips, session_importance_sampling, snips
from simulator import SimulatorConfig, make_env
from simulator.evaluate import session_seeds
from simulator.policies import ExpertPolicy, masked_softmax
from simulator.user import click_probabilities

RESULTS = Path(__file__).resolve().parent / "results"
LOGGING_TEMPERATURE = 0.3  # the simulator's expert_temperature
# The targets, nearest first: the expert at lower temperatures, its greedy version, uniform over the allowed
# items, and an "anti-expert" (T = -0.3: prefers what the expert avoids), each further from the logs.
TARGET_TEMPERATURES: list[float | str] = [0.3, 0.2, 0.1, 0.05, "greedy", "uniform", -0.3]
# One-step estimators with the interval resampling decisions (as OBP does), and the same with the
# interval resampling whole sessions (clusters=session ids: decisions of one user are not independent).
ONE_STEP = ("ips", "snips", "dr", "ips_sessions", "snips_sessions", "dr_sessions")
PER_SESSION = ("trajectory_is", "per_decision_is")
LEVEL = 0.95


def target_name(temperature: float | str) -> str:
    """A target's label: its temperature, or "greedy"/"uniform"."""
    return temperature if isinstance(temperature, str) else f"T={temperature:g}"


def target_probs(logits: np.ndarray, mask: np.ndarray, temperature: float | str) -> np.ndarray:
    """The target's action distribution: softmax at ``temperature``, uniform, or one-hot on the best item."""
    if temperature == "uniform":
        return mask / mask.sum()
    if temperature != "greedy":
        return masked_softmax(logits / float(temperature), mask)
    probs = np.zeros(logits.shape[0])
    probs[int(np.argmax(np.where(mask, logits, -np.inf)))] = 1.0
    return probs


def log_sessions(
    config: SimulatorConfig, n_sessions: int, seed: int, with_truth: bool
) -> dict[str, np.ndarray]:
    """``n_sessions`` sessions of the logging policy, with per decision and target: π(a_logged), the DR
    model's terms, the KL divergence π‖μ, and (``with_truth``) the true expected reward under π."""
    env = make_env(config)
    expert = ExpertPolicy(config, env.catalogue, temperature=LOGGING_TEMPERATURE)
    rng = np.random.default_rng(seed)
    n_targets = len(TARGET_TEMPERATURES)
    rows: dict[str, list[Any]] = {
        k: [] for k in ("session", "reward", "mu", "pi", "q_logged", "q_target", "kl")
    }
    rows["truth"] = []
    for index, env_seed in enumerate(session_seeds(seed, n_sessions)):
        obs, info = env.reset(seed=env_seed)
        done = False
        while not done:
            mask = info["action_mask"]
            logits = expert.estimated_logits(obs)
            mu_all = masked_softmax(logits / LOGGING_TEMPERATURE, mask)
            cdf = np.cumsum(mu_all)
            action = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), mu_all.shape[0] - 1)
            while mu_all[action] <= 0:
                action -= 1
            q_model = 1.0 / (1.0 + np.exp(-logits))  # the DR reward model: the expert's click model
            pis = np.stack([target_probs(logits, mask, t) for t in TARGET_TEMPERATURES])
            if with_truth:
                p_true = click_probabilities(env.hidden_state(), env.catalogue, config)
                rows["truth"].append(pis @ p_true)
            with np.errstate(divide="ignore", invalid="ignore"):
                log_ratio = np.where(pis > 0, np.log(pis) - np.log(np.where(mu_all > 0, mu_all, 1.0)), 0.0)
            rows["kl"].append((pis * log_ratio).sum(axis=1))
            rows["session"].append(index)
            rows["mu"].append(mu_all[action])
            rows["pi"].append(pis[:, action])
            rows["q_logged"].append(np.full(n_targets, q_model[action]))
            rows["q_target"].append(pis @ q_model)
            obs, reward, terminated, truncated, info = env.step(action)
            rows["reward"].append(reward)
            done = terminated or truncated
    out = {k: np.asarray(v) for k, v in rows.items() if v}
    return out


def target_returns(config: SimulatorConfig, n_sessions: int, seed: int) -> np.ndarray:
    """Mean session return of each target policy, by rolling it out (the per-session truth)."""
    env = make_env(config)
    expert = ExpertPolicy(config, env.catalogue)
    means = []
    for t_index, temperature in enumerate(TARGET_TEMPERATURES):
        rng = np.random.default_rng(seed + t_index)
        total = 0.0
        for env_seed in session_seeds(seed, n_sessions):  # the same users for every target
            obs, info = env.reset(seed=env_seed)
            done = False
            while not done:
                probs = target_probs(expert.estimated_logits(obs), info["action_mask"], temperature)
                cdf = np.cumsum(probs)
                action = min(
                    int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), probs.shape[0] - 1
                )
                while probs[action] <= 0:
                    action -= 1
                obs, reward, terminated, truncated, info = env.step(action)
                total += reward
                done = terminated or truncated
        means.append(total / n_sessions)
    return np.asarray(means)


def estimate_seed(data: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """Every estimator on one logged data set, for every target."""
    out = []
    for t in range(len(TARGET_TEMPERATURES)):
        pi, mu, r = data["pi"][:, t], data["mu"], data["reward"]
        kw = {"n_bootstrap": n_bootstrap, "seed": seed, "alpha": 1 - LEVEL}
        estimates = {
            "ips": ips(r, mu, pi, **kw),
            "snips": snips(r, mu, pi, **kw),
            "dr": doubly_robust(r, mu, pi, data["q_logged"][:, t], data["q_target"][:, t], **kw),
            "ips_sessions": ips(r, mu, pi, clusters=data["session"], **kw),
            "snips_sessions": snips(r, mu, pi, clusters=data["session"], **kw),
            "dr_sessions": doubly_robust(
                r, mu, pi, data["q_logged"][:, t], data["q_target"][:, t], clusters=data["session"], **kw
            ),
        }
        sessions = session_importance_sampling(r, mu, pi, data["session"], **kw)
        estimates["trajectory_is"] = sessions.trajectory
        estimates["per_decision_is"] = sessions.per_decision
        out.append(
            {
                name: {"value": e.value, "lower": e.interval.lower, "upper": e.interval.upper, "ess": e.ess}
                for name, e in estimates.items()
            }
            | {"kl": float(data["kl"][:, t].mean()), "n": int(r.shape[0])}
        )
    return out


def wilson(hits: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a binomial proportion (the coverage's own uncertainty over the seeds)."""
    if n == 0:
        return (float("nan"), float("nan"))
    z, p = 1.96, hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 or n hits the limit is exactly 0 or 1; say so rather than round it to 0.9999999999999999.
    return (0.0 if hits == 0 else centre - half, 1.0 if hits == n else centre + half)


def summarise(
    per_seed: list[list[dict[str, Any]]], truth_step: np.ndarray, truth_return: np.ndarray
) -> list[dict]:
    """Per target: distance, ESS, and per estimator coverage, bias, RMSE and interval width."""
    rows = []
    for t, temperature in enumerate(TARGET_TEMPERATURES):
        seeds = [s[t] for s in per_seed]
        row: dict[str, Any] = {
            "target": target_name(temperature),
            "temperature": temperature,
            "kl": float(np.mean([s["kl"] for s in seeds])),
            "ess_fraction": float(np.mean([s["ips"]["ess"] / s["n"] for s in seeds])),
            "truth_one_step": float(truth_step[t]),
            "truth_session_return": float(truth_return[t]),
            "estimators": {},
        }
        for name in ONE_STEP + PER_SESSION:
            truth = truth_step[t] if name in ONE_STEP else truth_return[t]
            values = np.array([s[name]["value"] for s in seeds])
            lower = np.array([s[name]["lower"] for s in seeds])
            upper = np.array([s[name]["upper"] for s in seeds])
            hits = int(((lower <= truth) & (truth <= upper)).sum())
            row["estimators"][name] = {
                "coverage": hits / len(seeds),
                "coverage_ci": list(wilson(hits, len(seeds))),
                "bias": float(np.nanmean(values) - truth),
                "rmse": float(np.sqrt(np.nanmean((values - truth) ** 2))),
                "mean_width": float(np.nanmean(upper - lower)),
            }
        rows.append(row)
    return rows


def write_report(report: dict[str, Any], out: Path) -> None:
    """The Markdown table, the JSON and the coverage plot."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # The per-seed estimates (about 2 MB for 200 seeds) stay in the returned report, not in the file.
    summary = {k: v for k, v in report.items() if k != "per_seed"}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    a = report["args"]
    lines = [
        "# Off-policy estimators: coverage of the 95% interval on the simulator",
        "",
        f"Command: `{report['command']}` ({report['wall_s']:.0f} s)",
        "",
        f"Logging policy: the simulator's expert, softmax at T = {LOGGING_TEMPERATURE} over its estimated "
        f"click logits. {a['seeds']} seeds, each a logged data set of {a['sessions']} sessions "
        f"(about {report['mean_decisions']:.0f} decisions); {a['n_bootstrap']} bootstrap resamples per "
        f"interval. Truth by rollout: one-step values over {report['truth_decisions']} decisions of "
        f"{a['truth_sessions']} fresh logging sessions (standard error at most "
        f"{report['truth_se_max']:.4f}), session returns over {a['return_sessions']} sessions of each "
        "target. Coverage is the fraction of seeds whose interval holds the truth, with its own Wilson 95% "
        "interval over the seeds.",
        "",
        "## One-step value (IPS, SNIPS, DR)",
        "",
        "| target | KL(π‖μ) | ESS/n | truth | IPS coverage | SNIPS coverage | DR coverage | IPS width "
        "| DR width | IPS bias | DR bias |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cov(e: dict[str, Any]) -> str:
        lo, hi = e["coverage_ci"]
        return f"{e['coverage']:.2f} [{lo:.2f}, {hi:.2f}]"

    for row in report["targets"]:
        e = row["estimators"]
        lines.append(
            f"| {row['target']} | {row['kl']:.3f} | {row['ess_fraction']:.3f} | {row['truth_one_step']:.4f} "
            f"| {cov(e['ips'])} | {cov(e['snips'])} | {cov(e['dr'])} | {e['ips']['mean_width']:.4f} "
            f"| {e['dr']['mean_width']:.4f} | {e['ips']['bias']:+.4f} | {e['dr']['bias']:+.4f} |"
        )
    lines += [
        "",
        "## One-step value, interval resampling whole sessions (`clusters=session ids`)",
        "",
        "| target | IPS coverage | SNIPS coverage | DR coverage | IPS width | SNIPS width | DR width |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["targets"]:
        e = row["estimators"]
        lines.append(
            f"| {row['target']} | {cov(e['ips_sessions'])} | {cov(e['snips_sessions'])} "
            f"| {cov(e['dr_sessions'])} | {e['ips_sessions']['mean_width']:.4f} "
            f"| {e['snips_sessions']['mean_width']:.4f} | {e['dr_sessions']['mean_width']:.4f} |"
        )
    lines += [
        "",
        "## Session return (trajectory-wise and per-decision IS)",
        "",
        "| target | truth (return) | trajectory IS coverage | per-decision IS coverage | trajectory width "
        "| per-decision width | per-decision bias |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["targets"]:
        e = row["estimators"]
        lines.append(
            f"| {row['target']} | {row['truth_session_return']:.3f} | {cov(e['trajectory_is'])} "
            f"| {cov(e['per_decision_is'])} | {e['trajectory_is']['mean_width']:.2f} "
            f"| {e['per_decision_is']['mean_width']:.2f} | {e['per_decision_is']['bias']:+.3f} |"
        )
    lines += ["", *report.get("notes", []), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    _plot(report, out.with_suffix(".png"))


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["targets"]
    x = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ONE_STEP + PER_SESSION:
        cov = [r["estimators"][name]["coverage"] for r in rows]
        style = "--" if name in PER_SESSION else (":" if name.endswith("_sessions") else "-")
        ax1.plot(x, cov, marker="o", label=name, linestyle=style)
    ax1.axhline(LEVEL, color="grey", linewidth=0.8)
    ax1.axhline(0.90, color="grey", linewidth=0.8, linestyle=":")
    ax1.set_xticks(x, [f"{r['target']}\nKL {r['kl']:.2f}" for r in rows], fontsize=7)
    ax1.set_ylabel("coverage of the 95% interval")
    ax1.set_ylim(0, 1.02)
    ax1.legend(fontsize=7)
    ax1.set_title("coverage as the target moves away from the logging policy", fontsize=9)
    ax2.plot(x, [r["ess_fraction"] for r in rows], marker="o", color="black")
    ax2.set_xticks(x, [r["target"] for r in rows], fontsize=7)
    ax2.set_yscale("log")
    ax2.set_ylabel("effective sample size / n (one step)")
    ax2.set_title("effective sample size", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=200, help="independent logged data sets")
    p.add_argument("--sessions", type=int, default=300, help="logged sessions per data set")
    p.add_argument("--truth-sessions", type=int, default=20_000, help="sessions for the true values")
    p.add_argument("--return-sessions", type=int, default=5000, help="sessions per target's true return")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples per interval")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 6 seeds of 40 sessions, 400 for the truths"
    )
    p.add_argument("--out", default=str(RESULTS / "ope_coverage"), help="output path without suffix")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.sessions, args.n_bootstrap = 6, 40, 200
        args.truth_sessions = args.return_sessions = 400
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the study and write the report; returns it."""
    args = parse(argv)
    started = time.perf_counter()
    config = SimulatorConfig()
    truth_data = log_sessions(config, args.truth_sessions, seed=10**6, with_truth=True)
    truth_step = truth_data["truth"].mean(axis=0)
    truth_se = truth_data["truth"].std(axis=0, ddof=1) / math.sqrt(truth_data["truth"].shape[0])
    truth_return = target_returns(config, args.return_sessions, seed=2 * 10**6)
    per_seed = []
    decisions = []
    for seed in range(args.seeds):
        data = log_sessions(config, args.sessions, seed=seed, with_truth=False)
        decisions.append(data["reward"].shape[0])
        per_seed.append(estimate_seed(data, args.n_bootstrap, seed))
    command = command_line("benchmarks/ope_coverage.py", sys.argv[1:] if argv is None else argv)
    report = {
        "command": command,
        "args": {
            k: getattr(args, k)
            for k in ("seeds", "sessions", "truth_sessions", "return_sessions", "n_bootstrap", "quick")
        },
        "wall_s": time.perf_counter() - started,
        "mean_decisions": float(np.mean(decisions)),
        "truth_decisions": int(truth_data["truth"].shape[0]),
        "truth_se_max": float(truth_se.max()),
        "targets": summarise(per_seed, truth_step, truth_return),
        "per_seed": per_seed,
    }
    write_report(report, Path(args.out))
    return report


if __name__ == "__main__":
    main()
