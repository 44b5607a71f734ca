"""``/act`` over a whole catalogue of 100,000 items with features (issue 15): latency and recall.

One process, one core: the process is pinned to one CPU and NumPy/BLAS and torch run one thread each, as
the issue's target says ("p99 ≤ 20 ms for k = 10 on one core"). The run:

1. builds a synthetic items.csv-shaped catalogue (``--items``, default 100,000) with text, boolean and
   numeric columns, fits the service's :class:`~service.ingest.item_features.FeatureSpec` on it, and
   saves an :class:`agent.item_dqfd.ItemDQfDAgent` checkpoint of the default :class:`ItemNetworkConfig`
   network (state width 17, the service default), randomly initialised — and a second one briefly trained
   (``--train-steps`` Adam steps of regression onto a synthetic Q with a state × item interaction that
   is not a dot product), so recall is measured where the cross term matters;
2. decodes each checkpoint as serving does, publishes it to a :class:`PolicyStore` over the catalogue
   (timing the binding: item features + cached item vectors) and times the growth of the catalogue by
   1,000 items (vectors for the new items only);
3. times ``service.serving.choice.choose`` (what ``/act`` calls) on ``--requests`` random states, k = 10,
   ε = 0.01: the whole catalogue; with 1% of items inactive (masked retrieval); with a 100-item
   candidate list (exact); and, as the limit measured in the same run, the fixed-head policy at 1,000
   items (the size the fixed-head network serves today) and the bare retrieval product u·Vᵀ alone;
4. recall@10 of retrieval (R = 100) then exact scoring against exact scoring of the whole catalogue on
   ``--recall-states`` states, for both networks;
5. with ``--http``, the real service in role ``api`` on 127.0.0.1 (``--port``, SQLite under
   benchmarks/work/) with the trained model active: ``--http-requests`` sequential ``POST /act`` (k = 10,
   no candidates), and the same count to ``GET /healthz`` as the HTTP limit of the same process.

Results: benchmarks/results/serving_catalogue.{json,md}.

    nice -n 10 .venv/bin/python benchmarks/serving_catalogue.py --http
    .venv/bin/python benchmarks/serving_catalogue.py --quick           # 5,000 items, seconds
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before NumPy loads its BLAS: one thread (not when imported by a test)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse
import io
import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.dqfd import DQfDAgent  # noqa: E402
from agent.item_dqfd import ItemDQfDAgent, ItemNetworkConfig  # noqa: E402
from agent.item_inference import CatalogueScorer, recall_at_k  # noqa: E402
from agent.item_table import ItemTable  # noqa: E402
from service.ingest.catalogue import Catalogue  # noqa: E402
from service.ingest.item_features import feature_matrix, fit_feature_spec  # noqa: E402
from service.serving.choice import choose  # noqa: E402
from service.serving.policy_store import PolicyStore, ServingPolicy, decode_checkpoint  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "work" / "serving_catalogue"
STATE_DIM = 17  # the service default (the simulator's observation)
K = 10
EPSILON = 0.01  # the service default (Hester et al. 2018, Sec. 4)
TARGET_P99_MS = 20.0
N_TOPICS = 8


def make_attributes(n: int, seed: int, start: int = 0) -> tuple[list[str], list[dict[str, Any]]]:
    """An items.csv-like catalogue: a text title and dominant topic, a topic mix, appeal, quality, price,
    popularity (a count) and a boolean; 2% of the cells of ``price`` missing."""
    rng = np.random.default_rng(seed)
    mix = rng.dirichlet(np.full(N_TOPICS, 0.3), size=n)
    appeal, quality = rng.beta(2, 5, size=n), rng.uniform(0, 1, size=n)
    price, popularity = rng.lognormal(3, 1, size=n), rng.poisson(50, size=n)
    fresh, missing = rng.random(n) < 0.3, rng.random(n) < 0.02
    ids, rows = [], []
    for i in range(n):
        row: dict[str, Any] = {f"topic_{t}": float(mix[i, t]) for t in range(N_TOPICS)}
        row |= {"title": f"Item {start + i}", "topic": f"t{int(mix[i].argmax())}", "appeal": float(appeal[i])}
        row |= {"quality": float(quality[i]), "popularity": int(popularity[i]), "fresh": bool(fresh[i])}
        if not missing[i]:
            row["price"] = float(price[i])
        ids.append(f"item-{start + i}")
        rows.append(row)
    return ids, rows


def save(agent: Any) -> bytes:
    buffer = io.BytesIO()
    agent.save(buffer)
    return buffer.getvalue()


def train_briefly(agent: ItemDQfDAgent, steps: int, seed: int) -> float:
    """Regression of the online network onto a synthetic Q with a non-bilinear interaction; final MSE."""
    gen = torch.Generator().manual_seed(seed)
    features = agent.items.features
    n, f = features.shape
    w = torch.randn(STATE_DIM, f, generator=gen) / np.sqrt(f)
    optimizer = torch.optim.Adam(agent.online.parameters(), lr=1e-3)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        states = torch.randn(64, STATE_DIM, generator=gen)
        idx = torch.randint(0, n, (64, 32), generator=gen)
        x = features[idx]
        # tanh of a bilinear score, plus an interaction only the cross network can express well.
        target = torch.tanh(torch.einsum("bs,sf,bkf->bk", states, w, x)) + 0.5 * (
            states[:, :1].abs() * x[..., 0] * x[..., 1]
        )
        loss = ((agent.online(states, idx, x) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def timed(fns: dict[str, Callable[[int], Any]], n: int, warmup: int = 50) -> dict[str, dict[str, float]]:
    """Latency of each ``fn(i)`` over n calls after a warm-up: p50, p99, mean and max in ms. The functions
    are called in turn (a, b, c, a, b, c, ...), so each sees the same load of this shared machine and
    their ratios are fair even when the load changes during the run."""
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    times = np.empty((len(fns), n))
    for i in range(n):
        for j, fn in enumerate(fns.values()):
            start = time.perf_counter()
            fn(i)
            times[j, i] = time.perf_counter() - start
    out = {}
    for name, row in zip(fns, times * 1e3, strict=True):
        out[name] = {
            "n": n,
            "p50_ms": float(np.percentile(row, 50)),
            "p99_ms": float(np.percentile(row, 99)),
            "mean_ms": float(row.mean()),
            "max_ms": float(row.max()),
        }
    return out


def fixed_head_policy(n_items: int = 1000) -> ServingPolicy:
    """The fixed-head policy (the service's default network) at n_items, decoded as serving does."""
    agent = DQfDAgent(STATE_DIM, n_items, seed=0)
    store = PolicyStore(STATE_DIM)
    store.set_catalogue(Catalogue.build([f"item-{i}" for i in range(n_items)], [True] * n_items))
    assert store.publish(decode_checkpoint(save(agent)), 1)
    return store.require()


def policy_latencies(
    store: PolicyStore, fixed: ServingPolicy, states: np.ndarray, n: int, item_ids: list[str]
) -> dict[str, Any]:
    """``choose`` latencies, interleaved: the feature policy over the whole catalogue, with 1% of the
    items inactive, with 100 candidates; the fixed-head policy at 1,000 items (the limit); and the bare
    retrieval product u·Vᵀ (the floor of a whole-catalogue request)."""
    policy = store.require()
    rows = states.tolist()
    m = len(rows)
    catalogue = policy.catalogue
    active = np.ones(catalogue.n_actions, dtype=bool)
    active[::100] = False
    masked = ServingPolicy(
        policy.network, Catalogue.build(list(catalogue.item_ids), active.tolist()), policy.model_version
    )
    rng = np.random.default_rng(5)
    lists = [[item_ids[j] for j in rng.choice(len(item_ids), 100, replace=False)] for _ in range(64)]
    vectors = policy.network.scorer.vectors
    fns: dict[str, Callable[[int], Any]] = {
        "whole": lambda i: choose(policy, rows[i % m], STATE_DIM, None, None, K, EPSILON),
        "one_percent_inactive": lambda i: choose(masked, rows[i % m], STATE_DIM, None, None, K, EPSILON),
        "candidates_100": lambda i: choose(policy, rows[i % m], STATE_DIM, lists[i % 64], None, K, EPSILON),
        "fixed_head_1000": lambda i: choose(fixed, rows[i % m], STATE_DIM, None, None, K, EPSILON),
        "retrieval_product": lambda i: vectors @ vectors[i % 512],
    }
    return timed(fns, n)


def prepare_database(name: str, item_ids: list[str], attributes: list | None, checkpoint: bytes) -> str:
    """A scratch SQLite database under benchmarks/work/ with the catalogue and ``checkpoint`` active."""
    from sqlalchemy import insert

    from service.store import catalogue_revision, migrate, registry
    from service.store.db import make_engine, make_session_factory, session_scope
    from service.store.models import Item

    WORK.mkdir(parents=True, exist_ok=True)
    db = WORK / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    migrate.upgrade(url)
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        rows = [
            {"action_index": i, "item_id": item, "active": True, "attributes": attrs}
            for i, (item, attrs) in enumerate(
                zip(item_ids, attributes or [None] * len(item_ids), strict=True)
            )
        ]
        session.execute(insert(Item), rows)
        catalogue_revision.bump(session)  # as import_items does: replicas read the catalogue once
        registry.save_version(
            session, checkpoint=checkpoint, state_dim=STATE_DIM, n_actions=len(item_ids), config={},
            metrics={}, source="benchmark", n_updates=0, activate=True,
        )  # fmt: skip
    engine.dispose()
    return url


def start_server(url: str, port: int, poll_s: float) -> subprocess.Popen[bytes]:
    """``python -m service serve`` in role api on 127.0.0.1:port, pinned to this machine's first CPU."""
    env = os.environ | {
        "DATABASE_URL": url, "DQFD_STATE_DIM": str(STATE_DIM), "DQFD_ROLE": "api",
        "DQFD_PORT": str(port), "DQFD_HOST": "127.0.0.1", "DQFD_ACCESS_LOG": "false",
        "DQFD_MODEL_POLL_S": str(poll_s),
    }  # fmt: skip
    cpu = sorted(os.sched_getaffinity(0))[0]
    command = ["taskset", "-c", str(cpu), sys.executable, "-m", "service", "serve"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(client: Any, server: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 180
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            stderr = server.stderr.read().decode()[-2000:] if server.stderr else ""
            raise RuntimeError(f"the service did not become ready: {stderr}")
        time.sleep(0.5)


def http_run(args: argparse.Namespace, item_ids: list[str], attributes: list, checkpoint: bytes) -> dict:
    """Two real services (role api, SQLite) on one CPU: the feature model over the catalogue on
    ``--port`` and the fixed-head model at 1,000 items on ``--port`` + 1; sequential ``POST /act`` to
    each and ``GET /healthz``, interleaved."""
    import httpx

    start = time.perf_counter()
    feature_url = prepare_database("feature", item_ids, attributes, checkpoint)
    fixed_ids = [f"item-{i}" for i in range(1000)]
    fixed_url = prepare_database("fixed", fixed_ids, None, save(DQfDAgent(STATE_DIM, 1000, seed=0)))
    prepare_s = time.perf_counter() - start
    servers = [start_server(feature_url, args.port, args.poll_s), start_server(fixed_url, args.port + 1, 2.0)]
    try:
        feature = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=30.0)
        fixed = httpx.Client(base_url=f"http://127.0.0.1:{args.port + 1}", timeout=30.0)
        with feature, fixed:
            wait_ready(feature, servers[0])
            wait_ready(fixed, servers[1])
            rng = np.random.default_rng(11)
            bodies = [{"state": rng.normal(size=STATE_DIM).tolist(), "k": K} for _ in range(256)]

            def act(client: httpx.Client) -> Callable[[int], None]:
                def call(i: int) -> None:
                    response = client.post("/act", json=bodies[i % 256])
                    assert response.status_code == 200, response.text

                return call

            def health(i: int) -> None:
                assert feature.get("/healthz").status_code == 200

            fns = {"feature_act": act(feature), "fixed_head_1000_act": act(fixed), "healthz": health}
            result: dict[str, Any] = timed(fns, args.http_requests)
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
    result["prepare_s"] = prepare_s
    result["poll_s"] = args.poll_s
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000, help="choose() calls per measurement")
    parser.add_argument("--recall-states", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--http", action="store_true", help="also measure the real service over HTTP")
    parser.add_argument("--http-requests", type=int, default=1000)
    parser.add_argument("--port", type=int, default=18500)
    parser.add_argument(
        "--poll-s", type=float, default=2.0, help="DQFD_MODEL_POLL_S (the service default: 2)"
    )
    parser.add_argument("--quick", action="store_true", help="5,000 items, 300 requests, 50 recall states")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement alone (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.requests, args.recall_states, args.train_steps = 5000, 300, 50, 50
        args.http_requests = min(args.http_requests, 200)
    cpu = sorted(os.sched_getaffinity(0))[-1]
    if not args.no_pin:  # one core: this process on the last CPU, one torch thread
        os.sched_setaffinity(0, {cpu})
        torch.set_num_threads(1)
    load_start = os.getloadavg()

    item_ids, attributes = make_attributes(args.items, seed=0)
    spec = fit_feature_spec(attributes)
    table = ItemTable(spec.width, feature_matrix(spec, attributes))
    agents = {}
    for name in ("random", "trained"):
        agent = ItemDQfDAgent(STATE_DIM, table, network_config=ItemNetworkConfig(), seed=0)
        agent.metadata = {"item_features": spec.to_json()}
        agents[name] = agent
    train_mse = train_briefly(agents["trained"], args.train_steps, seed=1)
    rng = np.random.default_rng(2)
    states = rng.normal(size=(512, STATE_DIM)).astype(np.float32)
    recall_states = rng.normal(size=(args.recall_states, STATE_DIM)).astype(np.float32)
    report: dict[str, Any] = {
        "command": shlex.join(
            ["benchmarks/serving_catalogue.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "items": args.items,
        "features": spec.names,
        "k": K,
        "requests": args.requests,
        "retrieved": max(100, 10 * K),
        "epsilon": EPSILON,
        "network": ItemNetworkConfig().to_dict(),
        "train_steps": args.train_steps,
        "train_mse": train_mse,
        "cpu": cpu,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "networks": {},
    }
    fixed_policy = fixed_head_policy()
    for name, agent in agents.items():
        checkpoint = save(agent)
        store = PolicyStore(STATE_DIM)
        store.set_catalogue(Catalogue.build(item_ids, [True] * len(item_ids), attributes))
        start = time.perf_counter()
        assert store.publish(decode_checkpoint(checkpoint), 1), store.last_error
        bind_s = time.perf_counter() - start
        entry: dict[str, Any] = {"checkpoint_bytes": len(checkpoint), "publish_s": bind_s}
        entry["choose"] = policy_latencies(store, fixed_policy, states, args.requests, item_ids)
        scorer: CatalogueScorer = store.require().network.scorer
        entry["recall_at_10"] = recall_at_k(scorer, recall_states, K)
        new_ids, new_attributes = make_attributes(1000, seed=9, start=args.items)
        grown = Catalogue.build(
            [*item_ids, *new_ids], [True] * (args.items + 1000), [*attributes, *new_attributes]
        )
        start = time.perf_counter()
        store.set_catalogue(grown)
        entry["grow_by_1000_s"] = time.perf_counter() - start
        assert store.require().network.n_actions == args.items + 1000
        report["networks"][name] = entry
        print(
            f"{name}: p99 whole {entry['choose']['whole']['p99_ms']:.2f} ms, "
            f"recall@10 {entry['recall_at_10']:.3f}"
        )
    if args.http:
        report["http"] = http_run(args, item_ids, attributes, save(agents["trained"]))
    report["load_average"] = {"start": load_start, "end": os.getloadavg()}
    write(report, args.out)
    return report


def write(report: dict[str, Any], out: Path) -> None:
    """benchmarks/results/serving_catalogue.{json,md}."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving_catalogue.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# /act over the whole catalogue with item features",
        "",
        f"Command: `nice -n 10 .venv/bin/python {report['command']}`",
        "",
        f"{report['items']:,} items, {len(report['features'])} features ({', '.join(report['features'])}), "
        f"state width {STATE_DIM}, k = {report['k']}, ε = {report['epsilon']}, retrieval of "
        f"{report['retrieved']} items by ⟨u, v⟩ then exact Q. One core (CPU {report['cpu']}, one BLAS and "
        f"torch thread); {report['machine']}; load average {report['load_average']['start'][0]:.2f} at "
        f"start, {report['load_average']['end'][0]:.2f} at the end (a shared machine: other jobs ran).",
        "",
        "Latency of `service.serving.choice.choose` (what /act calls), ms, over "
        f"{report['requests']:,} requests each, the rows of a network measured in turn (request 1 of each "
        "row, then request 2, ...), so that they share the machine's load. The limit, measured with them: "
        "the fixed-head policy at 1,000 items (today's network; its output layer grows with the catalogue) "
        "and the bare retrieval product u·Vᵀ over the catalogue (the floor of a whole-catalogue request). "
        f"Target: p99 ≤ {TARGET_P99_MS:.0f} ms.",
        "",
        "| network | request | p50 | p99 | mean | p99 / fixed-head 1k | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    labels = {
        "whole": "whole catalogue",
        "one_percent_inactive": "whole catalogue, 1% inactive",
        "candidates_100": "100 candidates (exact)",
        "fixed_head_1000": "fixed-head policy, 1,000 items (limit)",
        "retrieval_product": "u·Vᵀ alone (floor)",
    }
    for name, entry in report["networks"].items():
        fixed = entry["choose"]["fixed_head_1000"]["p99_ms"]
        for request, r in entry["choose"].items():
            feature = request in ("whole", "one_percent_inactive", "candidates_100")
            verdict = ("PASS" if r["p99_ms"] <= TARGET_P99_MS else "FAIL") if feature else ""
            lines.append(
                f"| {name} | {labels[request]} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                f"{r['mean_ms']:.3f} | {r['p99_ms'] / fixed:.2f} | {verdict} |"
            )
    lines += [
        "",
        "| network | recall@10 (retrieval vs exact) | publish (bind: features + vectors) "
        "| grow by 1,000 items | checkpoint |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, entry in report["networks"].items():
        lines.append(
            f"| {name} | {entry['recall_at_10']:.3f} | {entry['publish_s']:.2f} s "
            f"| {entry['grow_by_1000_s']:.2f} s | {entry['checkpoint_bytes'] / 1e6:.1f} MB |"
        )
    lines += [
        "",
        f"The trained network: {report['train_steps']} Adam steps of regression onto a synthetic Q with an "
        f"interaction the dot product cannot express (final MSE {report['train_mse']:.3f}); recall is the "
        "share of the exact top 10 (every item scored exactly) that retrieval then exact scoring returns.",
    ]
    if "http" in report:
        http = report["http"]
        limit = http["fixed_head_1000_act"]["p99_ms"]
        rows = [
            (f"POST /act, feature network, {report['items']:,} items", http["feature_act"]),
            ("POST /act, fixed-head network, 1,000 items (the limit)", http["fixed_head_1000_act"]),
            ("GET /healthz (the first row's server)", http["healthz"]),
        ]
        lines += [
            "",
            "Real HTTP: two services in role `api` (`python -m service serve`, SQLite, group-commit decision "
            f"log, `DQFD_MODEL_POLL_S={http['poll_s']:g}`) pinned to one CPU, the client on the other; "
            f"{http['feature_act']['n']} sequential requests per row (k = 10, no candidates, after a "
            "warm-up), the rows in turn. Each /act includes its decision's commit.",
            "",
            "| request | p50 ms | p99 ms | mean ms | p99 / fixed-head /act p99 | verdict |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for label, r in rows:
            verdict = ("PASS" if r["p99_ms"] <= TARGET_P99_MS else "FAIL") if r is http["feature_act"] else ""
            lines.append(
                f"| {label} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_ms']:.2f} | "
                f"{r['p99_ms'] / limit:.2f} | {verdict} |"
            )
        lines += [
            "",
            "The server reads the 100,000-item catalogue only when its revision token changes "
            "(service/store/catalogue_revision.py). Before the token, the poller read it on every poll "
            "(0.3-0.5 s of Python holding the GIL): earlier runs of this script measured the feature /act's "
            "p99 at 39.9 ms with a 1 s poll and 4.4 ms with a 60 s one (`--poll-s`).",
        ]
    (out / "serving_catalogue.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
