"""Property-based fuzzing of the live API from its own OpenAPI document (schemathesis), on SQLite and
PostgreSQL: every operation gets valid (positive) and invalid (negative) requests generated from the
served schema, and every response must be no 5xx, a documented status code, a documented content type
and a body that conforms to the documented schema.

``positive_data_acceptance`` (a schema-valid request must get a 2xx) is left out on purpose: the schema
cannot say which ids exist (catalogue item ids, event ids, job ids, model versions are data), so a
schema-valid request for an unknown id rightly gets a documented 404 or 422.

    .venv/bin/python benchmarks/fuzz.py                 # ≥ 10,000 requests per database
    .venv/bin/python benchmarks/fuzz.py --examples 50   # a quick look

Writes benchmarks/results/fuzz.md and fuzz.json: requests per operation by status, and the failures.
The short CI variant is tests/service/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
PG_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MODES = ("positive", "negative")


def checks() -> list[Any]:
    """The response checks every request must pass (see the module docstring for the one left out)."""
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    return [
        not_a_server_error,
        status_code_conformance,
        response_schema_conformance,
        content_type_conformance,
    ]


def fuzz(base_url: str, headers: dict[str, str], max_examples: int, max_failures: int = 50) -> dict[str, Any]:
    """Run every operation of ``base_url``'s /openapi.json with ``max_examples`` generated requests per
    generation mode (a fixed, derandomized hypothesis seed); returns the status counts per operation and
    the failures (at most ``max_failures`` kept, all counted)."""
    import hypothesis
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    counts: dict[str, Counter[int]] = defaultdict(Counter)
    failures: list[dict[str, Any]] = []
    n_failures = 0
    session = requests.Session()
    response_checks = checks()

    def record(case: Any) -> None:
        nonlocal n_failures
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        label = case.operation.label
        counts[label][response.status_code] += 1
        try:
            case.validate_response(response, checks=response_checks)
        except (
            Exception,
            BaseExceptionGroup,
        ) as exc:  # a check failed: record it, keep fuzzing (no shrinking)
            n_failures += 1
            if len(failures) < max_failures:
                failures.append(
                    {
                        "operation": label,
                        "status": response.status_code,
                        "failure": str(exc)[:2000],
                        "curl": case.as_curl_command()[:2000],
                    }
                )

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in MODES:
            run = hypothesis.settings(
                max_examples=max_examples,
                derandomize=True,  # the same requests every run (CI is deterministic)
                database=None,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )(hypothesis.given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))(record))
            try:
                run()
            except hypothesis.errors.Unsatisfiable:  # no input to break (e.g. GET /healthz): no negatives
                assert mode == "negative", operation.label
    return {
        "requests": sum(sum(c.values()) for c in counts.values()),
        "operations": {label: {str(k): v for k, v in sorted(c.items())} for label, c in counts.items()},
        "n_failures": n_failures,
        "failures": failures,
    }


def fuzz_settings(database_url: str) -> Any:
    """Settings of an API-only replica (role ``api``: retrains the fuzzer queues are never run)."""
    from tests.service.conftest import make_settings

    return make_settings(database_url, role="api", model_poll_s=0.5)


@contextmanager
def database(kind: str) -> Iterator[str]:
    """A scratch, migrated database of ``kind`` with the test catalogue, demonstrations and an active
    model version 1."""
    from benchmarks.scratch import scratch_postgres_database
    from service.store import migrate
    from tests.service.conftest import make_settings, pretrain_model, seed_database

    with tempfile.TemporaryDirectory() as tmp:
        if kind == "sqlite":
            scratch: Any = nullcontext(f"sqlite:///{tmp}/fuzz.db")
        else:
            scratch = scratch_postgres_database(PG_URL, "fuzz")
        with scratch as url:
            migrate.upgrade(url)
            seed_database(url)
            pretrain_model(make_settings(url))
            yield url


def fuzz_database(kind: str, max_examples: int) -> dict[str, Any]:
    """Serve a scratch database of ``kind`` with a live server and fuzz it."""
    from tests.service.conftest import LiveServer, admin_headers

    with database(kind) as url, LiveServer(fuzz_settings(url)) as server:
        started = time.perf_counter()
        result = fuzz(server.url, admin_headers(), max_examples)
        result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def write_results(results: dict[str, Any], command: str) -> None:
    """benchmarks/results/fuzz.json and fuzz.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "databases": results}
    (RESULTS / "fuzz.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# API fuzzing (schemathesis)",
        "",
        f"Command: `{command}`",
        "",
        "Checks: not_a_server_error, status_code_conformance, response_schema_conformance, "
        "content_type_conformance (positive_data_acceptance is left out: the schema cannot say which "
        "ids exist, so a valid request for an unknown id rightly gets a documented 404/422).",
        "",
    ]
    for kind, result in results.items():
        lines += [
            f"## {kind}: {result['requests']} requests, {result['n_failures']} failures "
            f"({result['seconds']} s)",
            "",
            "| operation | requests by status |",
            "|---|---|",
        ]
        for label, by_status in sorted(result["operations"].items()):
            text = ", ".join(f"{status}: {n}" for status, n in by_status.items())
            lines.append(f"| `{label}` | {text} |")
        for failure in result["failures"][:10]:
            lines += ["", f"- `{failure['operation']}` → {failure['status']}: {failure['failure'][:300]}"]
        lines.append("")
    (RESULTS / "fuzz.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=800,
        help="generated requests per operation and mode (800 × 7 operations with inputs × 2 modes ≈ 11,000)",
    )
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    from benchmarks.command_line import command_line

    command = command_line("benchmarks/fuzz.py", sys.argv[1:], python="python")
    results = {}
    for kind in args.databases:
        results[kind] = fuzz_database(kind, args.examples)
        print(
            kind, results[kind]["requests"], "requests,", results[kind]["n_failures"], "failures", flush=True
        )
    if not args.no_write:
        write_results(results, command.strip())
    summary = {
        k: {key: v[key] for key in ("requests", "operations", "n_failures")} for k, v in results.items()
    }
    print(json.dumps(summary, indent=1))
    for kind, result in results.items():
        for failure in result["failures"][:5]:
            print(kind, failure["operation"], failure["status"], failure["failure"][:1500], sep="\n")


if __name__ == "__main__":
    main()
