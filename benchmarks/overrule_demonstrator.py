"""Letting live data overrule a myopic demonstrator, and the target period, on the project simulator
(issue 11).

The same experiment as ``benchmarks/offline_to_online.py`` (its run code is reused unchanged: same
simulator, demonstrations, budgets, evaluation users and seeds), with DQfD variants that differ from its
``dqfd`` arm in one or two settings each:

- ``faithful``: the paper's DQfD (λ2 = 1 on every demonstration), target period 1,000 as that benchmark;
- ``q_filter``: J_E only where Q(s, a_E) ≥ max_a Q(s, a) in online updates (``DQfDConfig.q_filter``);
- ``decay``: λ2 · D / (D + n_agent) in online updates (``DQfDConfig.margin_decay_demo_ratio = 1``);
- ``both``: the Q-filter and the decay together;
- ``<variant>_tau<N>``: the same with target period N (``_tau10k``: the paper's 10,000, the service's
  former default);
- ``pdd``: PDD DQN from scratch, as that benchmark's ``pdd`` arm;
- references (expert, random, oracle) on the same evaluation users.

Each finished run is appended to ``<out>/<stem>_runs.jsonl`` at once, so a run that is stopped keeps what
it finished and ``--report`` rebuilds the tables, plot and JSON from that file. Runs go seed by seed
(every variant of seed 0, then seed 1, ...), so a short run still compares the variants on equal seeds.

    nice -n 10 .venv/bin/python benchmarks/overrule_demonstrator.py --seeds 0 1 2 3 4 --online-sessions 5000
    .venv/bin/python benchmarks/overrule_demonstrator.py --report    # tables from the saved runs
    .venv/bin/python benchmarks/overrule_demonstrator.py --quick     # smoke test, < 1 minute

``--service-agent --network feature`` runs every variant (PDD DQN included) on the network the service
trains on a catalogue with numeric item columns, as the simulator's items.csv has: the feature network of
``agent.item_dqfd.ItemDQfDAgent`` built as a service job builds it (benchmarks/feature_adapter.py). Each
row and the meta record the network; a stem holds one network only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import feature_adapter  # noqa: E402
import offline_to_online as o2o  # noqa: E402
from command_line import command_line, niceness  # noqa: E402

from simulator import SimulatorConfig  # noqa: E402

BASES: dict[str, dict[str, Any]] = {
    "faithful": {"arm": "dqfd", "agent": {}, "label": "DQfD, paper (λ2 = 1 fixed)"},
    "q_filter": {"arm": "dqfd", "agent": {"q_filter": True}, "label": "DQfD + Q-filter"},
    "decay": {"arm": "dqfd", "agent": {"margin_decay_demo_ratio": 1.0}, "label": "DQfD + λ2 decay (ratio 1)"},
    "both": {
        "arm": "dqfd",
        "agent": {"q_filter": True, "margin_decay_demo_ratio": 1.0},
        "label": "DQfD + Q-filter + λ2 decay",
    },
    "pdd": {"arm": "pdd", "agent": {}, "label": "PDD DQN from scratch"},
}
"""Each base variant: which run of offline_to_online it is, the DQfDConfig fields it changes, its label."""

DEFAULT_VARIANTS = (
    "faithful",
    "q_filter",
    "decay",
    "pdd",
    "faithful_tau10k",
    "q_filter_tau10k",
    "decay_tau10k",
)
"""A variant is a base name, optionally with ``_tau<N>`` (target period N; ``10k`` = 10,000); without it
the target period is offline_to_online's 1,000."""


BASELINES = {
    "pdd": "PDD DQN",
    "faithful": "the paper's DQfD (τ = 1,000)",
    "faithful_tau10k": "the paper's DQfD with the paper's τ = 10,000 (the service's former defaults)",
}
"""Variants every other one is compared with, per seed, when the run has them."""


def variant_spec(name: str) -> dict[str, Any]:
    """The base's spec with the variant's target period (``settings``) and a label."""
    base, _, tau = name.partition("_tau")
    if base not in BASES or (tau and not tau.replace("k", "").isdigit()):
        raise ValueError(f"unknown variant {name!r}: a base of {sorted(BASES)}, optionally _tau<N>")
    period = int(tau.replace("k", "")) * (1000 if tau.endswith("k") else 1) if tau else 1000
    spec = dict(BASES[base])
    spec["settings"] = {"target_update_period": period}
    spec["label"] = f"{spec['label']}, τ = {period:,}"
    return spec


def label(name: str) -> str:
    """The variant's label in tables and the plot."""
    return variant_spec(name)["label"]


NETWORKS = ("fixed", "feature")
"""``--network``: the fixed head (``agent.DQfDAgent``, one output per item) or the service's feature
network (``agent.item_dqfd.ItemDQfDAgent`` through benchmarks/feature_adapter.py)."""

SERVICE_AGENT = {"priority_beta_anneal_updates": 1_000_000}
"""With ``--service-agent``, DQfDConfig fields kept at the agent's (and the service's) defaults, which
offline_to_online sets from its budget (β annealed over the run's updates there)."""


def run_variant(
    variant: str,
    seed: int,
    s: o2o.Settings,
    extra_agent: dict[str, Any] | None = None,
    network: str = "fixed",
) -> dict[str, Any]:
    """One seed of one variant, through offline_to_online's own run code with the variant's fields (and
    ``extra_agent``'s, for every variant), on the ``network`` of :data:`NETWORKS`."""
    import torch

    torch.set_num_threads(1)
    spec = variant_spec(variant)
    settings = dataclasses.replace(s, **spec["settings"])
    base = o2o._agent_config

    def with_overrides(st: o2o.Settings, total: int, lambda_margin: float, epsilon: float) -> Any:
        fields = {**(extra_agent or {}), **spec["agent"]}
        return dataclasses.replace(base(st, total, lambda_margin, epsilon), **fields)

    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}: one of {NETWORKS}")
    config = SimulatorConfig()
    make_agent = feature_adapter.feature_factory(config) if network == "feature" else None
    o2o._agent_config = with_overrides
    try:
        result = o2o.run_rl(spec["arm"], seed, settings, config, make_agent=make_agent)
    finally:
        o2o._agent_config = base
    result.pop("pretrain", None)
    result["variant"] = variant
    result["network"] = network
    return result


def summarise(runs: list[dict[str, Any]], references: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± 95% CI (Student t over seeds) per variant and checkpoint, paired differences against PDD
    DQN and the faithful variant on the seeds both have, and the references."""
    expert = o2o.mean_ci([r["expert"] for r in references]) if references else (float("nan"),) * 2
    out: dict[str, Any] = {
        "references": {
            name: o2o.mean_ci([r[name] for r in references]) for name in ("expert", "random", "oracle")
        }
        if references
        else {},
        "variants": {},
    }
    by_variant: dict[str, dict[int, dict[int, float]]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], {})[r["seed"]] = {p["sessions"]: p["return"] for p in r["curve"]}
    for variant, seeds in by_variant.items():
        checkpoints = sorted(set.intersection(*(set(c) for c in seeds.values())))
        rows = []
        for c in checkpoints:
            values = [seeds[k][c] for k in sorted(seeds)]
            row: dict[str, Any] = {"sessions": c, "return": o2o.mean_ci(values), "seeds": sorted(seeds)}
            if np.isfinite(expert[0]):
                row["ratio_to_expert"] = float(np.mean(values)) / expert[0]
            for other in BASELINES:
                if other == variant or other not in by_variant:
                    continue
                paired = [
                    seeds[k][c] - by_variant[other][k][c] for k in seeds if c in by_variant[other].get(k, {})
                ]
                if paired:
                    row[f"minus_{other}"] = o2o.mean_ci(paired)
                    row[f"minus_{other}_seeds"] = len(paired)
            rows.append(row)
        out["variants"][variant] = rows
    return out


def write_report(
    summary: dict[str, Any], runs: list[dict[str, Any]], meta: dict[str, Any], out: Path, stem: str
) -> None:
    """``<stem>.md``, ``<stem>.json`` and ``<stem>.png``."""
    fmt = o2o._fmt
    refs = summary["references"]
    st = meta["settings"]
    lines = [
        "# Overruling a myopic demonstrator, and the target period (project simulator)",
        "",
        "Commands, in order (each run appended to `"
        + f"{stem}_runs.jsonl"
        + "` as it finished; a later command skips the runs already there; this report rebuilt from it):",
        "",
        *[f"    {command}" for command in meta.get("commands", [meta["command"]])],
        "",
        f"Budget per run: {st['demo_sessions']} expert-logged sessions, "
        f"{st['pretrain_steps']} pretraining updates, up to {st['online_sessions']} "
        f"online sessions (one update per {st['train_every']} steps), "
        f"{st['eval_sessions']} greedy evaluation sessions per checkpoint; every other setting "
        f"as `benchmarks/offline_to_online.py` (batch {st['batch_size']}, lr {st['learning_rate']:g}, "
        f"hidden {'×'.join(map(str, st['hidden_sizes']))}, n = 10, ε = 0.01"
        + "".join(f", {k} = {v:,}" for k, v in meta.get("agent_overrides", {}).items())
        + "). "
        + _network_note(meta)
        + "Mean session return ± 95% CI (Student t) over the seeds listed; "
        "paired differences are per seed on the same users.",
        "",
    ]
    if refs:
        lines += [
            "References on the same evaluation users: "
            + ", ".join(f"{name} {fmt(refs[name])}" for name in ("expert", "oracle", "random")),
            "",
        ]
    variants = _ordered(summary["variants"])
    checkpoints = sorted({r["sessions"] for v in variants for r in summary["variants"][v]})
    lines += ["| variant | seeds | " + " | ".join(f"{c} sessions" for c in checkpoints) + " |"]
    lines += ["|---|---:|" + "---:|" * len(checkpoints)]
    for v in variants:
        rows = {r["sessions"]: r for r in summary["variants"][v]}
        seeds = len(summary["variants"][v][0]["seeds"])
        cells = []
        for c in checkpoints:
            r = rows.get(c)
            cells.append(
                "–"
                if r is None
                else fmt(r["return"])
                + (f" ({100 * r['ratio_to_expert']:.0f}%)" if "ratio_to_expert" in r else "")
            )
        lines.append(f"| {label(v)} | {seeds} | " + " | ".join(cells) + " |")
    lines += ["", "Percentages: ratio to the expert's mean.", ""]
    for other, title in BASELINES.items():
        table = []
        for v in variants:
            rows = {r["sessions"]: r for r in summary["variants"][v]}
            if not any(f"minus_{other}" in r for r in rows.values()):
                continue
            cells = [
                fmt(rows[c][f"minus_{other}"]) if c in rows and f"minus_{other}" in rows[c] else "–"
                for c in checkpoints
            ]
            table.append(f"| {label(v)} | " + " | ".join(cells) + " |")
        if table:
            lines += [f"## Paired difference against {title} (same seeds, same users)", ""]
            lines += ["| variant | " + " | ".join(f"{c} sessions" for c in checkpoints) + " |"]
            lines += ["|---|" + "---:|" * len(checkpoints), *table, ""]
    notes = out / f"{stem}_notes.md"
    if notes.exists():  # hand-written reading of the numbers, kept across re-reports
        lines += [notes.read_text().strip(), ""]
    lines += [
        f"Wall time of the runs: {meta['seconds'] / 60:.1f} min, one process"
        + (f" at `nice -n {meta['nice']}`" if meta.get("nice", 10) else "")
        + " (on a machine shared with other jobs: not a measure of cost).",
        "",
        "Plot: `" + f"{stem}.png" + "` (mean and 95% band per variant).",
    ]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(
        json.dumps({**meta, "summary": summary, "runs": runs}, indent=1, default=float)
    )
    plot(summary, out / f"{stem}.png")


def _network_note(meta: dict[str, Any]) -> str:
    """The report's sentence on the feature network (empty for the fixed head: its reports are as before)."""
    if meta.get("network", "fixed") != "feature":
        return ""
    net = meta["item_network"]
    names = ", ".join(c["name"] for c in (meta.get("item_features") or {}).get("columns", []))
    return (
        "Network: the service's feature network (agent.item_dqfd.ItemDQfDAgent, Q(s, a) = f(s, x_a), built "
        f"by service.learning.item_agents for {meta['n_items']} items: state tower "
        f"{'×'.join(map(str, net['state_hidden']))}, item tower {'×'.join(map(str, net['item_hidden']))}, "
        f"cross {'×'.join(map(str, net['cross_hidden']))}, D = {net['embedding_dim']}, loss items "
        f"{net['loss_items'] or 'all'}; item features {names}, z-scored on the catalogue) for every variant, "
        "PDD DQN included; the hidden sizes above are the fixed head's and unused. "
    )


def check_network(network: str, meta_before: dict[str, Any] | None, runs: list[dict[str, Any]]) -> None:
    """Refuse to add ``network`` runs to a stem that holds another network's (a report never mixes them):
    the stem's meta and its saved rows (those written before rows recorded it were the fixed head's)."""
    found = {r.get("network", "fixed") for r in runs}
    if meta_before is not None:
        found.add(meta_before.get("network", "fixed"))
    others = found - {network}
    if others:
        raise SystemExit(
            f"this stem holds {sorted(others)[0]} network runs; --network {network} needs another --stem"
        )


def plot(summary: dict[str, Any], path: Path) -> None:
    """Session return against online sessions, one line and 95% band per variant, references dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = {"faithful": "C0", "q_filter": "C2", "decay": "C4", "both": "C6", "pdd": "C1"}
    styles = ["-", ":", "--", "-."]
    seen: dict[str, int] = {}
    xmax = 0
    for v in _ordered(summary["variants"]):
        rows = summary["variants"][v]
        base = v.partition("_tau")[0]
        style = styles[seen.get(base, 0) % len(styles)]
        seen[base] = seen.get(base, 0) + 1
        x = np.array([r["sessions"] for r in rows])
        m = np.array([r["return"][0] for r in rows])
        c = np.nan_to_num(np.array([r["return"][1] for r in rows]))
        color = colors[base]
        ax.plot(x, m, style, marker="o", ms=3, color=color, label=label(v))
        ax.fill_between(x, m - c, m + c, alpha=0.12, color=color)
        xmax = max(xmax, int(x.max()))
    for name, color in (("expert", "C3"), ("oracle", "C5")):
        if name in summary["references"]:
            ax.axhline(summary["references"][name][0], ls="--", color=color, lw=1, label=name)
    ax.set_xlabel("online sessions")
    ax.set_ylabel("mean session return (greedy evaluation)")
    ax.set_title("Overruling a myopic demonstrator (mean ± 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ordered(variants: dict[str, Any]) -> list[str]:
    """Variant names by base (faithful, Q-filter, decay, PDD), then by target period."""
    order = list(BASES)
    return sorted(
        variants,
        key=lambda v: (
            order.index(v.partition("_tau")[0]),
            variant_spec(v)["settings"]["target_update_period"],
        ),
    )


def load_runs(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The saved runs and reference evaluations of ``path`` (one JSON object a line)."""
    runs, refs = [], []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                (refs if row.get("variant") == "references" else runs).append(row)
    return runs, refs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or, with ``--report``, only report) and write the report; returns the summary."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budget, two variants, one seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seed numbers to run")
    p.add_argument(
        "--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="e.g. faithful q_filter_tau250"
    )
    p.add_argument("--online-sessions", type=int, default=5000)
    p.add_argument("--checkpoints", type=int, nargs="+", default=[0, 500, 1000, 2500, 5000])
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument(
        "--service-agent",
        action="store_true",
        help="the service's network and optimiser (agent defaults: 2×256, batch 32, lr 1e-4, β annealed over "
        "10^6 updates) and one update per online step (DQFD_UPDATES_PER_TRANSITION=1) instead of "
        "offline_to_online's",
    )
    p.add_argument(
        "--network",
        choices=NETWORKS,
        default="fixed",
        help="with --service-agent: fixed (one output per item, default) or feature (the service's feature "
        "network over the simulator's item columns, for every variant)",
    )
    p.add_argument("--out-dir", type=Path, default=o2o.RESULTS)
    p.add_argument("--stem", default="overrule_demonstrator")
    p.add_argument("--report", action="store_true", help="only rebuild the report from the saved runs")
    a = p.parse_args(argv)
    if a.network == "feature" and not a.service_agent:
        p.error("--network feature is the service's network: use it with --service-agent")
    s = o2o.quick_settings() if a.quick else o2o.Settings()
    if a.quick:  # quick_settings' 150 online sessions, evaluated after pretraining and at the end
        s.checkpoints = (0, s.online_sessions)
    else:
        s.online_sessions = a.online_sessions
        s.checkpoints = tuple(sorted({0, *a.checkpoints, s.online_sessions}))
    s.checkpoints = tuple(c for c in s.checkpoints if c <= s.online_sessions)
    if a.pretrain_steps is not None:
        s.pretrain_steps = a.pretrain_steps
    if a.service_agent:
        s.hidden_sizes, s.batch_size, s.learning_rate, s.train_every = (256, 256), 32, 1e-4, 1
    seeds = [0] if a.quick else a.seeds
    variants = ["faithful", "q_filter"] if a.quick else a.variants
    for name in variants:
        variant_spec(name)  # an unknown name fails before any run
    a.out_dir.mkdir(parents=True, exist_ok=True)
    runs_path = a.out_dir / f"{a.stem}_runs.jsonl"
    meta_path = a.out_dir / f"{a.stem}_meta.json"
    if a.report:
        meta = json.loads(meta_path.read_text())
    else:
        command = command_line("benchmarks/overrule_demonstrator.py", argv)
        meta = {
            "command": command,
            "nice": niceness(),
            "settings": json.loads(json.dumps(dataclasses.asdict(s), default=str)),
            "seconds": 0.0,
            "agent_overrides": SERVICE_AGENT if a.service_agent else {},
            "network": a.network,
        }
        if a.network == "feature":
            meta.update(feature_adapter.describe(SimulatorConfig()), n_items=SimulatorConfig().n_items)
        before = json.loads(meta_path.read_text()) if meta_path.exists() else None
        done_runs, done_refs = load_runs(runs_path)
        check_network(a.network, before, done_runs)
        if before is not None:
            meta["seconds"] = before.get("seconds", 0.0)
            meta["commands"] = [*before.get("commands", [before["command"]]), command]
        done = {(r["variant"], r["seed"]) for r in done_runs} | {("references", r["seed"]) for r in done_refs}
        for seed in seeds:
            for variant in ["references", *variants]:
                if (variant, seed) in done:
                    continue
                started = time.perf_counter()
                if variant == "references":
                    row = {**o2o.run_references(seed, s, SimulatorConfig()), "variant": "references"}
                else:
                    row = run_variant(
                        variant, seed, s, SERVICE_AGENT if a.service_agent else None, network=a.network
                    )
                meta["seconds"] += time.perf_counter() - started
                with runs_path.open("a") as fh:
                    fh.write(json.dumps(row, default=float) + "\n")
                meta_path.write_text(json.dumps(meta, indent=1))
                print(f"[{meta['seconds'] / 60:6.1f} min] {variant} seed {seed} done", flush=True)
        meta_path.write_text(json.dumps(meta, indent=1))
    runs, refs = load_runs(runs_path)
    summary = summarise(runs, refs)
    write_report(summary, runs, meta, a.out_dir, a.stem)
    print((a.out_dir / f"{a.stem}.md").read_text())
    return summary


if __name__ == "__main__":
    main()
