"""Peer implementations, each in its own virtual environment under benchmarks/work/, run as subprocesses
that print one JSON line (see peer_sb3.py and peer_ding.py)."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .runner import EVAL_SEED
from .settings import Budget

HERE = Path(__file__).resolve().parent
WORK = HERE.parents[0] / "work"
PEERS = {"sb3": "venv-sb3", "ding": "venv-ding"}
ARM_NAMES = ("sb3_dqn", "ding_dqfd_default", "ding_dqfd_ours")
DING_TASKS = ("CartPole-v1",)
"""DI-engine's DQfD is measured on CartPole only, as the issue asks."""


def peer_python(name: str) -> Path | None:
    python = WORK / PEERS[name] / "bin" / "python"
    return python if python.exists() else None


def peer_script(name: str) -> Path:
    return HERE / f"peer_{name}.py"


def _run(name: str, job: dict[str, Any], timeout: int = 3_600) -> dict[str, Any]:
    python = peer_python(name)
    base = {"arm": job.get("arm"), "env_id": job.get("env_id"), "seed": job.get("seed")}
    if python is None:
        return {**base, "error": f"{WORK / PEERS[name]} missing: see docs/paper_reproduction.md"}
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        # Run in the git-ignored work folder: DI-engine writes its logs to the current directory.
        proc = subprocess.run(
            [str(python), str(peer_script(name)), json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=WORK,
        )
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout}s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:] if proc.stderr.strip() else ["no output"]
        return {**base, "error": " | ".join(tail)}
    return {**base, **json.loads(proc.stdout.strip().splitlines()[-1])}


def run_peers(
    names: list[str],
    tasks: list[str],
    budgets: dict[str, Budget],
    seeds: int,
    ding_seeds: int,
    workers: int,
    log=print,
) -> list[dict[str, Any]]:
    """Learning runs of each peer on the same tasks and budgets (DI-engine: CartPole, two settings)."""
    jobs: list[tuple[str, dict[str, Any]]] = []
    for seed in range(max(seeds, ding_seeds)):
        for task in tasks:
            b = budgets[task]
            common = {"eval_episodes": b.eval_episodes, "eval_seed": EVAL_SEED}
            if "sb3" in names and seed < seeds:
                jobs.append(
                    (
                        "sb3",
                        {
                            "mode": "learn",
                            "arm": "sb3_dqn",
                            "env_id": task,
                            "seed": seed,
                            "env_steps": b.env_steps,
                            **common,
                        },
                    )
                )
            if "ding" in names and task in DING_TASKS and seed < ding_seeds:
                for setting in ("default", "ours"):
                    jobs.append(
                        (
                            "ding",
                            {
                                "mode": "learn",
                                "arm": f"ding_dqfd_{setting}",
                                "setting": setting,
                                "env_id": task,
                                "seed": seed,
                                "env_steps": b.env_steps,
                                "pretrain_updates": b.pretrain_updates,
                                "demo_episodes": b.demo_episodes,
                                "repo": str(HERE.parents[1]),
                                **common,
                            },
                        )
                    )
    results = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (_, job), result in zip(jobs, pool.map(lambda nj: _run(*nj), jobs), strict=True):
            results.append(result)
            status = result.get("error") or f"final {np.mean(result['final_eval']):.1f}"
            log(f"peer {job['arm']} {job['env_id']} seed {job['seed']}: {status}", flush=True)
    return results
