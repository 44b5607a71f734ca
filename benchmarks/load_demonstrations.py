"""Importing and loading logged demonstrations against a raw PostgreSQL ``COPY`` of the same rows.

One run on PostgreSQL (a scratch database created on ``--database-url``'s server and dropped after):

1. ``--rows`` logged transitions (1,000,000 by default) with 64 float32 features, sessions of 20 steps
   over 100 items, are generated once into a Parquet file under benchmarks/work/ (the importer's input,
   in the logged-interactions contract);
2. the limit: a raw ``COPY ... FROM STDIN`` of the same rows (same columns, states as float32 bytes)
   into a plain table, from arrays already in memory, in both binary (psycopg ``write_row``) and text
   (preformatted buffers) format; the faster one is the limit;
3. the service path: ``service.ingest.importer.import_logs`` (Parquet file → ``logged_interactions``), then
   ``Trainer``'s buffer fill (``service.learning.demos`` → a ``DQfDAgent``'s demonstration replay) in a fresh
   subprocess, whose resident-memory growth is sampled every 5 ms.

Targets (docs/issue 4): import + load within 3x of the raw COPY, peak memory of the load under 2x the
raw array bytes (states N x 64 x 4 + actions, rewards, flags).

    .venv/bin/python benchmarks/load_demonstrations.py                 # 1,000,000 rows
    .venv/bin/python benchmarks/load_demonstrations.py --quick         # 50,000 rows
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.command_line import command_line  # noqa: E402
from benchmarks.scratch import scratch_postgres_database  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "work" / "load_demonstrations"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
STATE_DIM = 64
N_ITEMS = 100
SESSION_STEPS = 20
TIME_TARGET = 3.0
MEMORY_TARGET = 2.0


# --------------------------------------------------------------------------------------------------
# Data.


def generate(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of ``rows`` logged transitions: sessions of SESSION_STEPS steps (the last one shorter)."""
    rng = np.random.default_rng(seed)
    index = np.arange(rows)
    session = index // SESSION_STEPS
    step = index % SESSION_STEPS
    last = np.r_[session[1:] != session[:-1], True]
    return {
        "session": session,
        "step": step,
        "states": rng.standard_normal((rows, STATE_DIM), dtype=np.float32),
        "actions": rng.integers(0, N_ITEMS, rows),
        "rewards": rng.random(rows, dtype=np.float32).astype(np.float64),
        "dones": last & (step == SESSION_STEPS - 1),  # a full session terminates; the tail is truncated
    }


def write_parquet(data: dict[str, np.ndarray], path: Path) -> None:
    """The importer's input: the logged-interactions contract, ``state`` as ``list<float32>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = len(data["step"])
    offsets = pa.array(np.arange(0, rows * STATE_DIM + 1, STATE_DIM, dtype=np.int32))
    states = pa.ListArray.from_arrays(offsets, pa.array(data["states"].reshape(-1)))
    table = pa.table(
        {
            "session_id": pa.array([f"s{s:08d}" for s in data["session"]]),
            "step": pa.array(data["step"].astype(np.int64)),
            "state": states,
            "item_id": pa.array([f"item-{a}" for a in data["actions"]]),
            "reward": pa.array(data["rewards"]),
            "done": pa.array(data["dones"]),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=100_000)


def raw_bytes(rows: int) -> int:
    """The raw arrays of the buffer: float32 states + int64 actions + float32 rewards + bool dones."""
    return rows * (STATE_DIM * 4 + 8 + 4 + 1)


# --------------------------------------------------------------------------------------------------
# Database.


def scratch_database(url: str) -> AbstractContextManager[str]:
    """A new, empty PostgreSQL database next to ``url``'s, dropped afterwards."""
    return scratch_postgres_database(url, "bench_load")


RAW_TABLE = (
    "CREATE TABLE {name} (id bigserial PRIMARY KEY, session_id varchar(255) NOT NULL, step integer NOT NULL,"
    " state bytea NOT NULL, item_id varchar(255) NOT NULL, reward double precision NOT NULL,"
    " done boolean NOT NULL)"
)
RAW_COLUMNS = "session_id, step, state, item_id, reward, done"


def copy_binary(conn: Any, data: dict[str, np.ndarray], table: str) -> None:
    """COPY FROM STDIN, binary format, one ``write_row`` per row."""
    session_ids = [f"s{s:08d}" for s in data["session"].tolist()]
    item_ids = [f"item-{a}" for a in data["actions"].tolist()]
    steps, rewards, dones = data["step"].tolist(), data["rewards"].tolist(), data["dones"].tolist()
    states = data["states"]
    copy_sql = f"COPY {table} ({RAW_COLUMNS}) FROM STDIN (FORMAT BINARY)"
    with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
        copy.set_types(["varchar", "int4", "bytea", "varchar", "float8", "bool"])
        for i in range(len(steps)):
            copy.write_row((session_ids[i], steps[i], states[i].tobytes(), item_ids[i], rewards[i], dones[i]))
    conn.commit()


def copy_text(conn: Any, data: dict[str, np.ndarray], table: str, chunk: int = 50_000) -> None:
    """COPY FROM STDIN, text format, from preformatted buffers (bytea as hex)."""
    states = data["states"]
    with conn.cursor() as cursor, cursor.copy(f"COPY {table} ({RAW_COLUMNS}) FROM STDIN") as copy:
        for lo in range(0, len(states), chunk):
            hi = min(lo + chunk, len(states))
            hexes = states[lo:hi].tobytes().hex()
            width = STATE_DIM * 8
            buffer = io.StringIO()
            for j, (s, st, a, r, d) in enumerate(
                zip(
                    data["session"][lo:hi].tolist(),
                    data["step"][lo:hi].tolist(),
                    data["actions"][lo:hi].tolist(),
                    data["rewards"][lo:hi].tolist(),
                    data["dones"][lo:hi].tolist(),
                    strict=True,
                )
            ):
                state = hexes[j * width : (j + 1) * width]
                buffer.write(f"s{s:08d}\t{st}\t\\\\x{state}\titem-{a}\t{r!r}\t{'t' if d else 'f'}\n")
            copy.write(buffer.getvalue())
    conn.commit()


def time_raw_copy(url: str, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Seconds of each raw COPY variant into a fresh plain table."""
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    timings = {}
    with psycopg.connect(conninfo) as conn:
        for name, fn in (("binary", copy_binary), ("text", copy_text)):
            table = f"raw_copy_{name}"
            conn.execute(RAW_TABLE.format(name=table))
            conn.commit()
            began = time.perf_counter()
            fn(conn, data, table)
            timings[name] = time.perf_counter() - began
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert count == len(data["step"]), (name, count)
            conn.execute(f"DROP TABLE {table}")
            conn.commit()
    return timings


# --------------------------------------------------------------------------------------------------
# The load, in a fresh process (so its memory growth is its own).


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Samples the resident set size every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def load_child(url: str, chunk_rows: int) -> dict[str, Any]:
    """Fill a DQfD agent's demonstration replay from the database the way the trainer does."""
    from service.ingest.catalogue import load_catalogue
    from service.learning.trainer import Trainer
    from service.settings import Settings
    from service.store.db import make_engine, make_session_factory

    settings = Settings(
        _env_file=None,
        database_url=url,
        state_dim=STATE_DIM,
        hidden_sizes=(64, 64),
        demo_chunk_rows=chunk_rows,
    )
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    trainer = Trainer(settings, engine, sessions)
    with sessions() as session:
        catalogue = load_catalogue(session)
    from service.learning.agents import new_agent

    agent = new_agent(settings, catalogue.n_actions)
    baseline = rss_bytes()
    began = time.perf_counter()
    with PeakSampler() as sampler:
        trainer.replays.fill(agent, catalogue)
    seconds = time.perf_counter() - began
    engine.dispose()
    return {
        "load_s": seconds,
        "rss_baseline": baseline,
        "rss_peak": sampler.peak,
        "rss_growth": sampler.peak - baseline,
        "demonstrations": int(agent.n_demonstrations),
    }


def time_service_path(url: str, parquet: Path, rows: int, chunk_rows: int) -> dict[str, Any]:
    """The importer (timed here), then the load in a subprocess."""
    from service.ingest.catalogue import import_items
    from service.ingest.importer import import_logs
    from service.ingest.synthetic import make_items
    from service.store.db import make_engine, make_session_factory, session_scope

    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        import_items(session, make_items(N_ITEMS))
    began = time.perf_counter()
    imported = import_logs(engine, parquet, STATE_DIM, progress=False)
    import_s = time.perf_counter() - began
    engine.dispose()
    assert imported == rows, (imported, rows)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--load-child", url, "--chunk-rows", str(chunk_rows)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    load = json.loads(out.strip().splitlines()[-1])
    return {"import_s": import_s, **load}


# --------------------------------------------------------------------------------------------------
# The run.


def report_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    r = report["results"]
    mb = 1024 * 1024
    lines = [
        "# Loading demonstrations",
        "",
        "Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"- {report['rows']:,} logged transitions, {STATE_DIM} float32 features, sessions of {SESSION_STEPS} "
        f"steps, {N_ITEMS} items; PostgreSQL scratch database ({report['postgres']})",
        f"- load average at start {report['load_average_start']}, at end {report['load_average_end']} "
        f"({report['cpu_count']} CPUs): numbers taken under load are noisy, compare the ratios",
        "- limit: raw COPY FROM STDIN of the same rows into a plain table: "
        f"binary {r['copy_binary_s']:.2f} s, "
        f"text {r['copy_text_s']:.2f} s; the limit is {r['copy_format']} ({r['copy_s']:.2f} s)",
        "- service path: `import_logs` (Parquet → logged_interactions, COPY) + the trainer's buffer fill "
        "(`service.learning.demos` → DQfDAgent demonstration replay) in a fresh process",
        f"- {report['platform']}",
        "",
        "| step | seconds | ratio to COPY |",
        "| --- | ---: | ---: |",
        f"| raw COPY ({r['copy_format']}) | {r['copy_s']:.2f} | 1.00 |",
        f"| import (file → table) | {r['import_s']:.2f} | {r['import_s'] / r['copy_s']:.2f} |",
        f"| load (table → replay) | {r['load_s']:.2f} | {r['load_s'] / r['copy_s']:.2f} |",
        f"| import + load | {r['total_s']:.2f} | {r['total_to_copy']:.2f} |",
        "",
        f"Memory of the load: resident growth {r['rss_growth'] / mb:.0f} MB "
        f"(peak {r['rss_peak'] / mb:.0f} MB) "
        f"for {r['raw_bytes'] / mb:.0f} MB of raw arrays = {r['memory_to_raw']:.2f}x",
        "",
        "```",
        *report["verdicts"],
        "```",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_URL))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--chunk-rows", type=int, default=10_000, help="the loader's fetch size (DQFD_DEMO_CHUNK_ROWS)"
    )
    parser.add_argument("--quick", action="store_true", help="50,000 rows")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="load_demonstrations")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--load-child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 50_000)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.load_child:
        print(json.dumps(load_child(args.load_child, args.chunk_rows)))
        return {}
    command = command_line("benchmarks/load_demonstrations.py", argv or sys.argv[1:])
    load_start = [round(x, 2) for x in os.getloadavg()]
    print(f"load average {load_start} on {os.cpu_count()} CPUs", flush=True)
    data = generate(args.rows)
    parquet = args.work / f"logs_{args.rows}x{STATE_DIM}.parquet"
    if not parquet.exists():
        print(f"==> writing {parquet}", flush=True)
        write_parquet(data, parquet)
    from service.store import migrate

    with scratch_database(args.database_url) as url:
        migrate.upgrade(url)
        print("==> raw COPY (binary, text)", flush=True)
        copies = time_raw_copy(url, data)
        print(f"    {copies}", flush=True)
        print("==> service path: import + load", flush=True)
        service = time_service_path(url, parquet, args.rows, args.chunk_rows)
        from sqlalchemy import create_engine

        engine = create_engine(url)
        with engine.connect() as conn:
            postgres = conn.exec_driver_sql("SHOW server_version").scalar()
        engine.dispose()
    fmt = min(copies, key=copies.get)
    copy_s = copies[fmt]
    total = service["import_s"] + service["load_s"]
    raw = raw_bytes(args.rows)
    results = {
        "copy_binary_s": copies["binary"],
        "copy_text_s": copies["text"],
        "copy_format": fmt,
        "copy_s": copy_s,
        **service,
        "total_s": total,
        "total_to_copy": total / copy_s,
        "raw_bytes": raw,
        "memory_to_raw": service["rss_growth"] / raw,
    }
    assert service["demonstrations"] > 0
    verdicts = [
        f"{'PASS' if results['total_to_copy'] <= TIME_TARGET else 'FAIL'}: import + load took "
        f"{results['total_to_copy']:.2f}x the raw COPY (target <= {TIME_TARGET:g}x)",
        f"{'PASS' if results['memory_to_raw'] < MEMORY_TARGET else 'FAIL'}: peak memory of the load "
        f"{results['memory_to_raw']:.2f}x the raw array bytes (target < {MEMORY_TARGET:g}x)",
    ]
    report = {
        "command": command,
        "rows": args.rows,
        "state_dim": STATE_DIM,
        "postgres": postgres,
        "load_average_start": load_start,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "platform": f"{platform.platform()}, Python {platform.python_version()}",
        "results": results,
        "targets": {"total_to_copy_max": TIME_TARGET, "memory_to_raw_max": MEMORY_TARGET},
        "verdicts": verdicts,
    }
    text = report_markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
