"""Command line of the paper reproduction (``benchmarks/paper.py``)."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from command_line import command_line

from . import peers, throughput
from .demonstrators import demonstrations, demonstrator_mean
from .report import claims_markdown, plot_task, table_markdown
from .runner import run_job
from .settings import ARMS, BUDGETS, QUICK_BUDGETS, Budget
from .stats import claim_line, claims, metrics, summarize

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEMO_EVAL_EPISODES = 30


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny budgets, 2 seeds, 2 tasks, no peers (CI smoke)")
    p.add_argument("--tasks", nargs="+", default=None, help="Gymnasium ids (default: all four)")
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 5, --quick 2)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes, one torch thread each")
    p.add_argument(
        "--peers",
        nargs="*",
        default=None,
        choices=list(peers.PEERS),
        help="peer implementations to run (default: all, none with --quick)",
    )
    p.add_argument("--peer-seeds", type=int, default=None, help="seeds of SB3 DQN (default: --seeds)")
    p.add_argument("--ding-seeds", type=int, default=3, help="seeds of each DI-engine setting (default 3)")
    p.add_argument("--no-throughput", action="store_true", help="skip the updates-per-second comparison")
    p.add_argument(
        "--throughput-updates", type=int, default=throughput.UPDATES, help="timed updates per round and peer"
    )
    p.add_argument("--env-steps", type=int, default=None, help="override every task's online budget")
    p.add_argument("--pretrain-updates", type=int, default=None, help="override every task's pretraining")
    p.add_argument("--early-steps", type=int, default=None, help="override every task's early window")
    p.add_argument("--only-throughput", action="store_true", help="only the updates-per-second comparison")
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    p.add_argument("--name", default="paper", help="prefix of the output files")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in {out}/{name}_raw.json (a run that was stopped) and do only the rest",
    )
    p.add_argument(
        "--rerender", type=Path, nargs="+", default=None, help="only rebuild the report from *_raw.json files"
    )
    p.add_argument(
        "--notes",
        type=Path,
        default=None,
        help="with --rerender: a Markdown file shown as the report's Notes",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = command_line("benchmarks/paper.py", argv or sys.argv[1:], python="python")
    if args.rerender is not None:
        notes = args.notes.read_text().strip() if args.notes else ""
        report = rerender(args.rerender, args.out, args.name, rebuilt_by=command, notes=notes)
        print(report["claims_text"], flush=True)
        return report
    budgets = dict(QUICK_BUDGETS if args.quick else BUDGETS)
    tasks = args.tasks or list(budgets)
    for t in tasks:
        if t not in budgets:
            budgets[t] = BUDGETS[t]
    for field in ("env_steps", "pretrain_updates", "early_steps"):
        if getattr(args, field):
            budgets = {t: Budget(**{**asdict(b), field: getattr(args, field)}) for t, b in budgets.items()}
    seeds = args.seeds or (2 if args.quick else 5)
    peer_names = ([] if args.quick else list(peers.PEERS)) if args.peers is None else args.peers
    peer_seeds = args.peer_seeds or seeds
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.only_throughput:
        result = throughput.compare(peer_names, log=print, updates=args.throughput_updates)
        text = "\n".join(
            [
                f"# Gradient updates per second: {args.name}",
                "",
                "Produced by:",
                "",
                "```",
                command,
                "```",
                "",
                _machine(),
                "",
                throughput.markdown(result),
                "",
            ]
        )
        (args.out / f"{args.name}.md").write_text(text)
        raw_text = json.dumps({"command": command, "throughput": result})
        (args.out / f"{args.name}_raw.json").write_text(raw_text)
        print(text, flush=True)
        return {"throughput": result, "markdown": text}
    started = time.perf_counter()

    demos, demo_stats = {}, {}
    for task in tasks:
        demos[task] = demonstrations(task, budgets[task].demo_episodes)
        demo_stats[task] = demonstrator_mean(task, 5 if args.quick else DEMO_EVAL_EPISODES)
        print(
            f"{task}: demonstrator mean {demo_stats[task][0]:.1f} (sd {demo_stats[task][1]:.1f}); "
            f"{len(demos[task])} demonstration episodes, returns "
            f"{[round(d.ret, 1) for d in demos[task]]}",
            flush=True,
        )

    jobs = [
        {"arm": arm, "env_id": task, "budget": budgets[task], "demos": demos[task], "seed": seed}
        for seed in range(seeds)
        for task in tasks
        for arm in args.arms
    ]
    raw: dict[str, Any] = {"command": command, "runs": [], "peers": [], "throughput": None}
    raw_path = args.out / f"{args.name}_raw.json"
    if args.resume and raw_path.exists():
        # A long run stopped part-way (a session ended, the machine went away): keep what it finished.
        previous = json.loads(raw_path.read_text())
        raw.update(previous, command=previous.get("command", command), resumed_by=command)
        done = {(r["env_id"], r["arm"], r["seed"]) for r in raw["runs"]}
        jobs = [j for j in jobs if (j["env_id"], j["arm"], j["seed"]) not in done]
        print(f"resuming {raw_path}: {len(done)} runs kept, {len(jobs)} to do", flush=True)

    def save() -> None:
        raw_path.write_text(json.dumps(raw, default=float))

    if args.workers > 1:
        pool = mp.get_context("fork").Pool(args.workers, maxtasksperchild=1)
        iterator = pool.imap_unordered(run_job, jobs)
    else:
        pool, iterator = None, map(run_job, jobs)
    for k, result in enumerate(iterator, 1):
        result["budget"] = asdict(budgets[result["env_id"]])
        result["demo_stats"] = list(demo_stats[result["env_id"]])
        raw["runs"].append(result)
        save()
        m = metrics(result, budgets[result["env_id"]], demo_stats[result["env_id"]][0])
        print(
            f"[{k}/{len(jobs)} {time.perf_counter() - started:.0f}s] {result['env_id']} {result['arm']} "
            f"seed {result['seed']}: start {m['start']:.1f} early {m['early']:.1f} final {m['final']:.1f} "
            f"({result['seconds']:.0f}s, {m['updates_per_second']:.0f} updates/s)",
            flush=True,
        )
    if pool is not None:
        pool.close()
        pool.join()

    if peer_names and raw["peers"]:
        print(f"peers: {len(raw['peers'])} results kept from the resumed run", flush=True)
    elif peer_names:
        raw["peers"] = peers.run_peers(
            peer_names, tasks, budgets, peer_seeds, args.ding_seeds, args.workers, log=print
        )
        for result in raw["peers"]:
            result["budget"] = asdict(budgets[result["env_id"]])
            result["demo_stats"] = list(demo_stats[result["env_id"]])
        save()
    else:
        print("peers: skipped (--quick or --peers with no names)", flush=True)
    if not args.no_throughput and not args.quick and raw.get("throughput") is None:
        raw["throughput"] = throughput.compare(peer_names, log=print, updates=args.throughput_updates)
        save()
    elif args.quick:
        print("throughput comparison: skipped in --quick", flush=True)

    report = render(raw, budgets, tasks, demo_stats, args.out, args.name, time.perf_counter() - started)
    print(report["claims_text"], flush=True)
    return report


def render(
    raw: dict[str, Any],
    budgets: dict[str, Budget],
    tasks: list[str],
    demo_stats: dict[str, tuple[float, float]],
    out: Path,
    name: str,
    seconds: float,
    rebuilt_by: str = "",
    notes: str = "",
) -> dict[str, Any]:
    """Write ``{name}.md`` (command, table, claims, throughput) and one ``{name}_{task}.png`` per task.
    ``rebuilt_by`` is the --rerender command that merged the runs, ``notes`` what a reader needs to know
    about them (e.g. that they ran on different trees); both are written only when given."""
    runs = raw["runs"] + raw.get("peers", [])
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {t: {} for t in tasks}
    for r in runs:
        if r["env_id"] in grouped and not r.get("error"):
            grouped[r["env_id"]].setdefault(r["arm"], []).append(r)
    table = {
        t: {
            arm: summarize([metrics(r, budgets[t], demo_stats[t][0]) for r in rs])
            for arm, rs in sorted(grouped[t].items(), key=lambda kv: _arm_order(kv[0]))
        }
        for t in tasks
    }
    demo_means = {t: demo_stats[t][0] for t in tasks}
    rows = claims(table, demo_means)  # each DQfD variant on the tasks where it and PDD DQN ran
    claims_text = "\n".join(claim_line(r) for r in rows)
    plots = []
    for t in tasks:
        if grouped[t]:
            path = out / f"{name}_{t.split('-')[0].lower()}.png"
            plot_task(
                t,
                dict(sorted(grouped[t].items(), key=lambda kv: _arm_order(kv[0]))),
                budgets[t],
                demo_means[t],
                path,
            )
            plots.append(path.name)
    errors = [r for r in runs if r.get("error")]
    lines = [
        f"# DQfD paper reproduction: {name}",
        "",
        "Produced by:",
        "",
        "```",
        *([raw["command"]] if isinstance(raw["command"], str) else raw["command"]),
        "```",
        "",
        *(
            ["Report rebuilt from their raw results by:", "", "```", rebuilt_by, "```", ""]
            if rebuilt_by
            else []
        ),
        _machine("Machine that rebuilt the report" if rebuilt_by else "Machine")
        + ("" if not np.isfinite(seconds) else f" Wall time {seconds / 60:.1f} min."),
        "Means over seeds with 95% percentile-bootstrap intervals (10,000 resamples). Returns after "
        "pretraining and final returns are greedy (ε = 0) evaluations of "
        f"{'/'.join(sorted({str(budgets[t].eval_episodes) for t in tasks}))} episodes from fixed reset "
        "seeds; "
        "the early-window mean averages the training-episode learning curve over the window.",
        "",
        *(["## Notes", "", notes, ""] if notes else []),
        "## Claims",
        "",
        claims_markdown(rows),
        "",
        "## Results",
        "",
        table_markdown(table, budgets, demo_stats),
    ]
    if raw.get("throughput"):
        lines += [
            "## Gradient updates per second (one torch thread, same run)",
            "",
            throughput.markdown(raw["throughput"]),
            "",
        ]
    if errors:
        lines += ["## Errors", ""]
        lines += [f"- {r['arm']} on {r['env_id']}: `{r['error']}`" for r in errors]
        lines.append("")
    lines += ["## Plots", "", *[f"![{p}]({p})" for p in plots], ""]
    text = "\n".join(lines)
    (out / f"{name}.md").write_text(text)
    return {"table": table, "claims": rows, "claims_text": claims_text, "markdown": text, "plots": plots}


def _machine(label: str = "Machine") -> str:
    return (
        f"{label}: {platform.platform()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        "one torch thread per process."
    )


def _arm_order(arm: str) -> int:
    order = [*ARMS, *peers.ARM_NAMES]
    return order.index(arm) if arm in order else len(order)


def rerender(
    raw_paths: list[Path], out: Path, name: str, rebuilt_by: str = "", notes: str = ""
) -> dict[str, Any]:
    """Rebuild the report from ``*_raw.json`` files (a run stopped early, or several runs merged)."""
    raw: dict[str, Any] = {"command": [], "runs": [], "peers": [], "throughput": None}
    for path in raw_paths:
        part = json.loads(path.read_text())
        raw["command"] += [part["command"]] if isinstance(part["command"], str) else part["command"]
        raw["runs"] += part.get("runs", [])
        raw["peers"] += part.get("peers", [])
        raw["throughput"] = part.get("throughput") or raw["throughput"]
    runs = [r for r in raw["runs"] + raw["peers"] if "budget" in r]
    for r in raw["peers"]:  # peers of runs written before peers carried their budget
        same = next((x for x in runs if x["env_id"] == r["env_id"]), None)
        if "budget" not in r and same is not None:
            r["budget"], r["demo_stats"] = same["budget"], same["demo_stats"]
    tasks = list(dict.fromkeys(r["env_id"] for r in runs))
    budgets = {t: Budget(**next(r["budget"] for r in runs if r["env_id"] == t)) for t in tasks}
    demo_stats = {t: tuple(next(r["demo_stats"] for r in runs if r["env_id"] == t)) for t in tasks}
    return render(raw, budgets, tasks, demo_stats, out, name, float("nan"), rebuilt_by, notes)


if __name__ == "__main__":
    np.set_printoptions(precision=2)
    main()
