"""Serving throughput: ``/act`` and ``/feedback`` of the real service against a bare FastAPI endpoint.

One run, loopback only (127.0.0.1), every measurement bounded in time:

1. a scratch database (SQLite file under benchmarks/work/ by default; ``--database-url`` of a PostgreSQL
   server creates a scratch database there and drops it afterwards) is migrated, example logs from the
   project simulator are imported and a small model is pretrained (``--pretrain-steps``, hidden sizes
   ``[64, 64]`` as in the README's main command, ``scripts/main.sh``);
2. two uvicorn subprocesses, one worker each, access log off, same flags, both pinned to the first CPU
   while the load generator runs on the others (``--no-pin`` leaves placement to the scheduler: then
   the load generator takes CPU time from the server it measures): the real service in role
   ``api`` (serving only, no trainer in the process) and a bare FastAPI app whose ``POST /act`` parses
   the same request schema (``service.api.schemas.ActRequest``) and returns a constant;
3. the load generator (wrk with a Lua script when installed, else a bounded asyncio client on raw
   streams) drives, at ``--connections`` connections for ``--duration`` seconds after a ``--warmup``:
   the bare endpoint, ``/act`` (random valid states, sessions drawn from a pool, k=3) and ``/feedback``
   (reward 1.0 for each decision the ``/act`` run created, each event id once while they last; a repeat
   is an idempotent ``duplicate``).

It prints and writes ``benchmarks/results/serving.{md,json,png}``: req/s, p50 and p99 per endpoint, the
ratios to the bare endpoint and PASS/FAIL against the issue's first target (``/act`` at >= 40% of the bare
endpoint's req/s, p99 <= 30 ms at 32 connections), with the load average at start and end.

    .venv/bin/python benchmarks/serving.py                     # SQLite, 10 s per measurement
    .venv/bin/python benchmarks/serving.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/serving.py --quick             # 2 s per measurement (smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.command_line import command_line  # noqa: E402
from benchmarks.scratch import scratch_postgres_database  # noqa: E402
from service.api.schemas import ActRequest  # noqa: E402  (the bare endpoint parses the same schema)

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "work" / "serving"
HIDDEN_SIZES = (64, 64)  # scripts/main.sh (the README's main command)
STATE_DIM = 17  # the service default (the simulator's observation)
N_SESSIONS = 1000  # session ids the /act load draws from
ACT_TARGET_RATIO = 0.40
ACT_TARGET_P99_MS = 30.0


# --------------------------------------------------------------------------------------------------
# The bare endpoint: parses the same body as /act, does nothing else.


def bare_app() -> Any:
    """A FastAPI app whose POST /act validates an ``ActRequest`` and returns a constant."""
    from fastapi import FastAPI

    app = FastAPI()
    constant = {"event_id": "0", "item_id": "item-0"}

    @app.post("/act")
    async def act(body: ActRequest) -> dict[str, str]:
        return constant

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


UVICORN_FLAGS = ["--host", "127.0.0.1", "--workers", "1", "--log-level", "warning", "--no-access-log"]


def serve_bare(port: int) -> None:
    """Run the bare app (the same uvicorn flags as the service)."""
    import uvicorn

    uvicorn.run(bare_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------------------------------
# Scratch database, model, servers.


@contextmanager
def scratch_database(url: str | None, work: Path) -> Iterator[str]:
    """An empty database URL: a fresh SQLite file, or a new PostgreSQL database dropped afterwards."""
    if url is None:
        work.mkdir(parents=True, exist_ok=True)
        path = work / "serving.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        return
    with scratch_postgres_database(url, "bench_serving") as scratch:
        yield scratch


def service_env(database_url: str, pretrain_steps: int) -> dict[str, str]:
    """Environment of the service process (and of the preparation's settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DQFD_") and k != "DATABASE_URL"}
    env.update(
        {
            "DATABASE_URL": database_url,
            "DQFD_STATE_DIM": str(STATE_DIM),
            "DQFD_HIDDEN_SIZES": json.dumps(list(HIDDEN_SIZES)),
            "DQFD_PRETRAIN_STEPS": str(pretrain_steps),
            "DQFD_ROLE": "api",
            "DQFD_AUTO_PRETRAIN": "false",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def prepare_model(
    database_url: str, pretrain_steps: int, n_sessions: int, network: str = "auto"
) -> tuple[int, int, str]:
    """Migrate, import example logs, pretrain with ``DQFD_NETWORK=network``; returns (active model
    version, catalogue size, the checkpoint's format: which network is served)."""
    import io

    import torch

    from service.ingest.catalogue import load_catalogue
    from service.quickstart import prepare
    from service.settings import Settings
    from service.store import registry
    from service.store.db import make_engine, make_session_factory

    settings = Settings(
        _env_file=None,
        database_url=database_url,
        state_dim=STATE_DIM,
        hidden_sizes=HIDDEN_SIZES,
        pretrain_steps=pretrain_steps,
        seed=0,
        network=network,
    )
    version = prepare(settings, n_sessions=n_sessions)
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            n_items = load_catalogue(session).n_actions
            checkpoint = registry.load_checkpoint(session, version)
    finally:
        engine.dispose()
    kind = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)["format"]
    return version, n_items, str(kind)


def cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """CPUs for the servers and for the load generator: the first CPU for the servers and the others for
    the client when ``pin`` and there are at least two, so the load generator never takes CPU time from
    the one-worker server it measures; (None, None) leaves both to the scheduler."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def _pinned(cpus: set[int] | None) -> Any:
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def start(cmd: list[str], env: dict[str, str], log: Path, cpus: set[int] | None = None) -> subprocess.Popen:
    """A server subprocess with its output in ``log``, on ``cpus`` when given."""
    handle = log.open("w")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, preexec_fn=_pinned(cpus)
    )


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers 200."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server at {url} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT (graceful uvicorn shutdown), then kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


# --------------------------------------------------------------------------------------------------
# Load generators.

WRK_LUA = r"""
-- generated by benchmarks/serving.py
local mode = "{mode}"
local state_dim = {state_dim}
local n_sessions = {n_sessions}
local ids_path = "{ids_path}"
local threads = {{}}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local ids = {{}}
local next_id = 1
local step = 1
non2xx = 0  -- global: done() reads it with thread:get
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  math.randomseed(os.time() + 7919 * tid)
  if mode == "feedback" then
    for line in io.lines(ids_path) do ids[#ids + 1] = line end
    local n_threads = tonumber(args[1]) or 1
    next_id = tid + 1
    step = n_threads
  end
end

local function act_body()
  local parts = {{}}
  for i = 1, state_dim do parts[i] = string.format("%.4f", math.random() * 2 - 1) end
  return '{{"state":[' .. table.concat(parts, ",") .. '],"session_id":"bench-' ..
    math.random(n_sessions) .. '","k":3}}'
end

function request()
  local body
  if mode == "feedback" then
    local id = ids[((next_id - 1) % #ids) + 1]
    next_id = next_id + step
    body = '{{"event_id":"' .. id .. '","reward":1.0}}'
  else
    body = act_body()
  end
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do bad = bad + (thread:get("non2xx") or 0) end
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"max_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"status_errors": %d, "non2xx": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    latency.max, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status, bad))
end
"""


def run_wrk(
    url: str,
    mode: str,
    seconds: float,
    connections: int,
    threads: int,
    ids_path: Path | None,
    work: Path,
    cpus: set[int] | None = None,
) -> dict[str, Any]:
    """One wrk run; returns its summary (latencies in microseconds)."""
    script = work / f"wrk_{mode}.lua"
    script.write_text(
        WRK_LUA.format(mode=mode, state_dim=STATE_DIM, n_sessions=N_SESSIONS, ids_path=str(ids_path or ""))
    )
    cmd = [
        shutil.which("wrk") or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(threads),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 60, check=True, preexec_fn=_pinned(cpus)
    ).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    result = json.loads(line[len("WRKJSON ") :])
    errors = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return {
        "requests": result["requests"],
        "seconds": result["duration_us"] / 1e6,
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "mean_ms": result["mean_us"] / 1000,
        "max_ms": result["max_us"] / 1000,
        "errors": errors,
        "non2xx": max(result["status_errors"], result["non2xx"]),
    }


def act_body(rng: random.Random) -> bytes:
    """One /act body: a random valid state, a session from the pool, k=3."""
    state = ",".join(f"{rng.uniform(-1, 1):.4f}" for _ in range(STATE_DIM))
    return f'{{"state":[{state}],"session_id":"bench-{rng.randint(1, N_SESSIONS)}","k":3}}'.encode()


async def _python_load(
    host: str, port: int, path: str, bodies: Iterator[bytes], seconds: float, connections: int
) -> dict[str, Any]:
    """Bounded asyncio client on raw streams: HTTP/1.1 keep-alive, one request in flight per connection."""
    latencies: list[float] = []
    counts = {"errors": 0, "non2xx": 0}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                body = next(bodies)
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                began = time.perf_counter()
                writer.write(head + body)
                await writer.drain()
                header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                status = int(header.split(b" ", 2)[1])
                length = 0
                for line in header.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await asyncio.wait_for(reader.readexactly(length), 10)
                latencies.append(time.perf_counter() - began)
                if not 200 <= status < 300:
                    counts["non2xx"] += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            counts["errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [math.nan]

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": sum(ordered) / len(ordered) * 1000,
        "max_ms": ordered[-1] * 1000,
        **counts,
    }


def run_python(
    port: int, path: str, mode: str, seconds: float, connections: int, ids: list[str] | None
) -> dict[str, Any]:
    """The fallback load generator (same bodies as the wrk script)."""
    rng = random.Random(0)

    def bodies() -> Iterator[bytes]:
        if mode == "feedback":
            assert ids
            i = 0
            while True:
                yield json.dumps({"event_id": ids[i % len(ids)], "reward": 1.0}).encode()
                i += 1
        while True:
            yield act_body(rng)

    return asyncio.run(_python_load("127.0.0.1", port, path, bodies(), seconds, connections))


# --------------------------------------------------------------------------------------------------
# The run.


def event_ids(database_url: str) -> list[str]:
    """Event ids of the stored decisions (the /act run's), in a random order."""
    from sqlalchemy import select

    from service.store.db import make_engine
    from service.store.models import Decision

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            ids = list(conn.scalars(select(Decision.event_id)))
    finally:
        engine.dispose()
    random.Random(1).shuffle(ids)
    return ids


def measure(
    client: str,
    port: int,
    path: str,
    mode: str,
    args: argparse.Namespace,
    work: Path,
    ids: list[str] | None = None,
) -> dict[str, Any]:
    """Warm-up (discarded) then the measurement; /feedback gets separate ids for each."""
    warm_ids = measured_ids = ids
    if ids is not None:
        cut = max(1, int(len(ids) * args.warmup / (args.warmup + args.duration)))
        warm_ids, measured_ids = ids[:cut], ids[cut:] or ids
    results = []
    for seconds, chosen in ((args.warmup, warm_ids), (args.duration, measured_ids)):
        if seconds <= 0:
            continue
        if client == "wrk":
            ids_path = None
            if chosen is not None:
                ids_path = work / "event_ids.txt"
                ids_path.write_text("\n".join(chosen) + "\n")
            result = run_wrk(
                f"http://127.0.0.1:{port}{path}",
                mode,
                seconds,
                args.connections,
                args.threads,
                ids_path,
                work,
                args.client_cpus,
            )
        else:
            result = run_python(port, path, mode, seconds, args.connections, chosen)
        results.append(result)
    result = results[-1]
    if ids is not None:
        result["distinct_event_ids"] = len(measured_ids or [])
        result["event_ids_repeated"] = result["requests"] > len(measured_ids or [])
    return result


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def verdicts(results: dict[str, dict[str, Any]]) -> list[str]:
    """PASS/FAIL lines against the issue's first serving target."""
    bare, act, feedback = results["bare"], results["act"], results["feedback"]
    ratio = act["rps"] / bare["rps"] if bare["rps"] else math.nan
    lines = [
        f"{'PASS' if bare['non2xx'] == 0 and bare['errors'] == 0 else 'FAIL'}: the bare endpoint answered "
        f"2xx ({bare['non2xx']} non-2xx, {bare['errors']} socket errors)",
        f"{'PASS' if ratio >= ACT_TARGET_RATIO else 'FAIL'}: /act req/s is {ratio:.2f} of the bare endpoint "
        f"(target >= {ACT_TARGET_RATIO:.2f})",
        f"{'PASS' if act['p99_ms'] <= ACT_TARGET_P99_MS else 'FAIL'}: /act p99 {act['p99_ms']:.1f} ms "
        f"(target <= {ACT_TARGET_P99_MS:.0f} ms)",
        f"{'PASS' if act['non2xx'] == 0 and act['errors'] == 0 else 'FAIL'}: /act answered 2xx "
        f"({act['non2xx']} non-2xx, {act['errors']} socket errors)",
        f"{'PASS' if feedback['non2xx'] == 0 and feedback['errors'] == 0 else 'FAIL'}: /feedback answered "
        f"2xx ({feedback['non2xx']} non-2xx, {feedback['errors']} socket errors)",
    ]
    return lines


def report_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    r = report["results"]
    rows = [
        "| endpoint | req/s | p50 ms | p99 ms | max ms | requests | non-2xx | ratio to bare |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (("bare", "bare FastAPI /act"), ("act", "service /act"), ("feedback", "/feedback")):
        x = r[name]
        rows.append(
            f"| {label} | {x['rps']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['max_ms']:.1f} | "
            f"{x['requests']} | {x['non2xx']} | {x['rps'] / r['bare']['rps']:.2f} |"
        )
    cfg = report["config"]
    lines = [
        "# Serving benchmark",
        "",
        "Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"- load generator: {report['client']}; {cfg['connections']} connections, {cfg['duration_s']} s "
        f"per measurement after a {cfg['warmup_s']} s warm-up, 127.0.0.1",
        f"- CPU placement: {report.get('placement', 'servers and load generator placed by the scheduler')}",
        f"- load average at start {report['load_average_start']}, at end {report['load_average_end']} "
        f"({report['cpu_count']} CPUs): numbers taken under load are noisy, compare the ratios",
        f"- database: {cfg['database']}; model: {cfg.get('network', 'dqfd-agent')} (DQFD_NETWORK "
        f"{cfg.get('network_setting', 'auto')}), hidden sizes {cfg['hidden_sizes']}, state_dim "
        f"{cfg['state_dim']}, {cfg['n_items']} items, {cfg['pretrain_steps']} pretrain steps",
        "- servers: uvicorn, 1 worker, access log off; the service in role `api` (serving only: no "
        "trainer in the process); the bare app's POST /act parses the same `ActRequest` and returns a "
        "constant",
        f"- /act bodies: {cfg['state_dim']} random floats, a session id from a pool of {N_SESSIONS}, k=3; "
        f"/feedback: one reward per decision of the /act run ({r['feedback'].get('distinct_event_ids')} "
        f"event ids, repeated: {r['feedback'].get('event_ids_repeated')})",
        f"- {report['platform']}",
        "",
        *rows,
        "",
        "```",
        *report["verdicts"],
        f"ratio act/bare = {report['ratios']['act_to_bare']:.3f}",
        f"ratio feedback/bare = {report['ratios']['feedback_to_bare']:.3f}",
        "```",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Bars of req/s and p99 per endpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["bare", "act", "feedback"]
    labels = ["bare /act", "service /act", "/feedback"]
    r = report["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(labels, [r[n]["rps"] for n in names], color=["#999", "#1f77b4", "#2ca02c"])
    left.axhline(ACT_TARGET_RATIO * r["bare"]["rps"], color="red", ls="--", lw=1, label="40% of bare")
    left.set_ylabel("requests / s")
    left.legend()
    right.bar(labels, [r[n]["p99_ms"] for n in names], color=["#999", "#1f77b4", "#2ca02c"])
    right.axhline(ACT_TARGET_P99_MS, color="red", ls="--", lw=1, label="30 ms")
    right.set_ylabel("p99 latency (ms)")
    right.legend()
    fig.suptitle(
        f"{report['client']}, {report['config']['connections']} connections, "
        f"load {report['load_average_start'][0]}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", help="a PostgreSQL server's URL (a scratch database is created)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of discarded warm-up")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=200, help="example sessions to import")
    parser.add_argument("--quick", action="store_true", help="2 s per measurement, 1 s warm-up, few steps")
    parser.add_argument(
        "--network",
        choices=["auto", "fixed", "feature"],
        default="auto",
        help="DQFD_NETWORK of the pretrained model (auto: the service default, the feature network here: "
        "the simulator's items.csv has numeric columns)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="serving")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the scheduler place servers and load generator (default: servers on the first CPU, "
        "the load generator on the others)",
    )
    parser.add_argument("--bare-app-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 1.0)
        args.pretrain_steps, args.sessions = min(args.pretrain_steps, 50), min(args.sessions, 50)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.bare_app_port is not None:
        serve_bare(args.bare_app_port)
        return {}
    from service.quickstart import free_port

    command = command_line("benchmarks/serving.py", argv or sys.argv[1:])
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    client_text = (
        f"wrk ({shutil.which('wrk')}, {args.threads} threads, Lua script)"
        if client == "wrk"
        else "Python asyncio client on raw streams (wrk not installed or not chosen)"
    )
    server_cpus, args.client_cpus = cpu_split(not args.no_pin)
    if args.client_cpus is not None and client == "python":
        os.sched_setaffinity(0, args.client_cpus)  # the asyncio client runs in this process
    placement = (
        f"servers on CPU {sorted(server_cpus)}, load generator on CPUs {sorted(args.client_cpus)}"
        if server_cpus is not None
        else "servers and load generator placed by the scheduler"
    )
    load_start = load_average()
    print(f"load average {load_start} on {os.cpu_count()} CPUs; load generator: {client_text}", flush=True)
    print(placement, flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
    procs: list[subprocess.Popen] = []
    try:
        with scratch_database(args.database_url, work) as url:
            version, n_items, network = prepare_model(url, args.pretrain_steps, args.sessions, args.network)
            env = service_env(url, args.pretrain_steps)
            service_port, bare_port = free_port(), free_port()
            service_cmd = [
                sys.executable, "-m", "uvicorn", "service.api.app:create_app", "--factory",
                *UVICORN_FLAGS, "--port", str(service_port),
            ]  # fmt: skip
            bare_cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-app-port", str(bare_port)]
            procs.append(start(service_cmd, env, work / "service.log", server_cpus))
            procs.append(start(bare_cmd, env, work / "bare.log", server_cpus))
            wait_ready(procs[0], f"http://127.0.0.1:{service_port}/readyz", work / "service.log")
            wait_ready(procs[1], f"http://127.0.0.1:{bare_port}/readyz", work / "bare.log")
            results: dict[str, dict[str, Any]] = {}
            for name, port in (("bare", bare_port), ("act", service_port)):
                print(f"==> {name}: {args.duration:g} s at {args.connections} connections", flush=True)
                results[name] = measure(client, port, "/act", "act", args, work)
                print(
                    f"    {results[name]['rps']:.0f} req/s, p99 {results[name]['p99_ms']:.1f} ms", flush=True
                )
            ids = event_ids(url)
            print(f"==> feedback: {len(ids)} event ids from the /act run", flush=True)
            results["feedback"] = measure(client, service_port, "/feedback", "feedback", args, work, ids)
            print(f"    {results['feedback']['rps']:.0f} req/s, p99 {results['feedback']['p99_ms']:.1f} ms")
            for proc in procs:
                stop(proc)
    finally:
        for proc in procs:
            stop(proc)
    bare_rps = results["bare"]["rps"]
    report: dict[str, Any] = {
        "command": command,
        "client": client_text,
        "client_kind": client,  # "wrk" or "python": the load generator this run actually used
        "placement": placement,
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "cpu_count": os.cpu_count(),
        "platform": f"{platform.platform()}, Python {platform.python_version()}",
        "config": {
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "database": "PostgreSQL (scratch database)" if args.database_url else "SQLite file (WAL)",
            "hidden_sizes": list(HIDDEN_SIZES),
            "network": network,
            "network_setting": args.network,
            "state_dim": STATE_DIM,
            "n_items": n_items,
            "pretrain_steps": args.pretrain_steps,
            "model_version": version,
            "role": "api",
            "workers": 1,
        },
        "results": results,
        "ratios": {
            "act_to_bare": results["act"]["rps"] / bare_rps,
            "feedback_to_bare": results["feedback"]["rps"] / bare_rps,
        },
        "targets": {"act_to_bare_min": ACT_TARGET_RATIO, "act_p99_ms_max": ACT_TARGET_P99_MS},
    }
    report["verdicts"] = verdicts(results)
    text = report_markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_plot:
        plot(report, args.out / f"{args.name}.png")
    shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
