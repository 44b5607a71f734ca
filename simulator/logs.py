"""Logged interactions in the service's logged-interactions format, and the catalogue as ``items.csv``.

One row per served step, columns in this order (the contract shared with the service):

- ``session_id`` (str, ``sim-000042``), ``step`` (int, 0-based within the session),
- ``state`` (the observation; CSV: JSON array string of floats; Parquet: ``list<float32>``),
- ``item_id`` (str, ``item_00042`` = ``f"item_{action:05d}"``), ``reward`` (float),
- ``done`` (bool; True only on the last row of a session that *terminated*; False after truncation),
- ``propensity`` (float in (0, 1], nullable),
- ``allowed_items`` (nullable; CSV: JSON array string of item ids; Parquet: ``list<string>``),
- ``timestamp`` (ISO-8601 UTC string, synthetic, increasing within a session).

CLI::

    python -m simulator.logs --policy expert --sessions 1000 --seed 0 \\
        --out data/logs.parquet --items data/items.csv [--masks]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from simulator.catalogue import Catalogue, generate_catalogue, item_id, item_index
from simulator.config import SimulatorConfig
from simulator.env import RecommendationEnv
from simulator.evaluate import PolicyLike, resolve_policy, rollout, session_seeds
from simulator.policies import POLICY_NAMES

LOG_COLUMNS = (
    "session_id",
    "step",
    "state",
    "item_id",
    "reward",
    "done",
    "propensity",
    "allowed_items",
    "timestamp",
)
"""The logged-interactions columns, in contract order."""

LOG_START = datetime(2024, 1, 1, tzinfo=UTC)
"""Timestamp of the first step of the first session."""

STEP_SECONDS = 30
"""Synthetic seconds between two steps of a session."""

TOPIC_MIX_DECIMALS = 6
"""Decimals of the ``topic_k`` columns of ``items.csv`` (as the former JSON ``topic_mix`` column)."""

PARQUET_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("step", pa.int64()),
        ("state", pa.list_(pa.float32())),
        ("item_id", pa.string()),
        ("reward", pa.float64()),
        ("done", pa.bool_()),
        ("propensity", pa.float64()),
        ("allowed_items", pa.list_(pa.string())),
        ("timestamp", pa.string()),
    ]
)
"""Arrow schema of the Parquet file."""


def session_id(index: int) -> str:
    """The id of the ``index``-th generated session (``sim-000042``)."""
    return f"sim-{index:06d}"


def _timestamp(session_index: int, step: int, config: SimulatorConfig) -> str:
    seconds = (session_index * (config.max_session_length + 10) + step) * STEP_SECONDS
    return (LOG_START + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_logs(
    policy: PolicyLike = "expert",
    n_sessions: int = 1000,
    seed: int = 0,
    config: SimulatorConfig | None = None,
    include_masks: bool = False,
) -> pd.DataFrame:
    """Run ``policy`` (a name in ``POLICY_NAMES``, a :class:`~simulator.policies.Policy`, or a factory
    ``env -> Policy``) for ``n_sessions`` sessions and return the logged interactions.

    The ``state`` column holds float32 numpy arrays; ``allowed_items`` holds lists of item ids when
    ``include_masks`` is True, else None. Sessions use the same users as
    :func:`simulator.evaluate.run_sessions` with the same seed.
    """
    config = config if config is not None else SimulatorConfig()
    env = RecommendationEnv(config)
    pol = resolve_policy(policy, env)
    rng = np.random.default_rng([seed, 1])
    ids = np.array(env.catalogue.item_ids, dtype=object)
    rows: dict[str, list] = {c: [] for c in LOG_COLUMNS}
    for k, env_seed in enumerate(session_seeds(seed, n_sessions)):
        ep = rollout(env, pol, env_seed, rng)
        n = len(ep)
        sid = session_id(k)
        for t in range(n):
            rows["session_id"].append(sid)
            rows["step"].append(t)
            rows["state"].append(ep.states[t])
            rows["item_id"].append(item_id(ep.actions[t]))
            rows["reward"].append(ep.rewards[t])
            rows["done"].append(bool(ep.terminated and t == n - 1))
            rows["propensity"].append(ep.propensities[t])
            rows["allowed_items"].append(ids[ep.masks[t]].tolist() if include_masks else None)
            rows["timestamp"].append(_timestamp(k, t, config))
    df = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
    df["step"] = df["step"].astype("int64")
    df["reward"] = df["reward"].astype("float64")
    df["done"] = df["done"].astype(bool)
    df["propensity"] = df["propensity"].astype("float64")
    return df


def _float_list_json(values: np.ndarray) -> str:
    # str(np.float32) is the shortest repr that reads back to the same float32.
    return "[" + ", ".join(str(np.float32(v)) for v in values) + "]"


def write_logs(df: pd.DataFrame, path: str | Path) -> Path:
    """Write logs in the contract format; the format follows the suffix (``.csv`` or ``.parquet``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = df[list(LOG_COLUMNS)]
    if path.suffix == ".csv":
        out = df.copy()
        out["state"] = [_float_list_json(np.asarray(s)) for s in df["state"]]
        out["allowed_items"] = [None if a is None else json.dumps(list(a)) for a in df["allowed_items"]]
        out["done"] = ["true" if d else "false" for d in df["done"]]
        out.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        arrays = {
            "session_id": pa.array(df["session_id"].astype(str).tolist(), pa.string()),
            "step": pa.array(df["step"].to_numpy(np.int64), pa.int64()),
            "state": pa.array([np.asarray(s, np.float32) for s in df["state"]], pa.list_(pa.float32())),
            "item_id": pa.array(df["item_id"].astype(str).tolist(), pa.string()),
            "reward": pa.array(df["reward"].to_numpy(np.float64), pa.float64()),
            "done": pa.array(df["done"].to_numpy(bool), pa.bool_()),
            "propensity": pa.array(df["propensity"].to_numpy(np.float64), pa.float64(), from_pandas=True),
            "allowed_items": pa.array(
                [None if a is None else list(a) for a in df["allowed_items"]], pa.list_(pa.string())
            ),
            "timestamp": pa.array(df["timestamp"].astype(str).tolist(), pa.string()),
        }
        pq.write_table(pa.table(arrays, schema=PARQUET_SCHEMA), path)
    else:
        raise ValueError(f"unsupported log format {path.suffix!r}; use .csv or .parquet")
    return path


def read_logs(path: str | Path) -> pd.DataFrame:
    """Read logs written by :func:`write_logs` back into :func:`generate_logs`'s in-memory form
    (``state`` as float32 arrays, ``allowed_items`` as lists of str or None)."""
    path = Path(path)
    if path.suffix == ".csv":
        df = pd.read_csv(
            path,
            dtype={"session_id": str, "item_id": str, "timestamp": str, "allowed_items": str},
            keep_default_na=False,
            na_values={"propensity": [""]},
        )
        df["state"] = [np.asarray(json.loads(s), dtype=np.float32) for s in df["state"]]
        df["allowed_items"] = [json.loads(a) if a else None for a in df["allowed_items"]]
        df["done"] = df["done"].map(lambda v: str(v).lower() == "true").astype(bool)
    elif path.suffix == ".parquet":
        table = pq.read_table(path)
        df = pd.DataFrame(
            {
                "session_id": table["session_id"].to_pylist(),
                "step": table["step"].to_numpy(),
                "state": [np.asarray(s, dtype=np.float32) for s in table["state"].to_pylist()],
                "item_id": table["item_id"].to_pylist(),
                "reward": table["reward"].to_numpy(),
                "done": table["done"].to_numpy(zero_copy_only=False),
                "propensity": table["propensity"].to_numpy(zero_copy_only=False),
                "allowed_items": table["allowed_items"].to_pylist(),
                "timestamp": table["timestamp"].to_pylist(),
            }
        )
    else:
        raise ValueError(f"unsupported log format {path.suffix!r}; use .csv or .parquet")
    df["step"] = df["step"].astype("int64")
    df["reward"] = df["reward"].astype("float64")
    df["propensity"] = df["propensity"].astype("float64")
    return df[list(LOG_COLUMNS)]


def items_frame(catalogue: Catalogue) -> pd.DataFrame:
    """The catalogue as the service's items table: ``item_id`` in action-index order, ``active``,
    ``topic`` (the dominant topic as a text label, ``t3``), ``appeal``, ``quality`` and the topic mix as
    numeric columns ``topic_0 … topic_{n_topics-1}`` (rounded to 6 decimals).

    The mix is one column per topic, not a JSON string, because the service's feature network uses every
    numeric column as an item feature and leaves text out (``service/ingest/item_features.py``): as numbers
    it can match an item's topics to the user's per-topic interests (``simulator/observation.py``). The
    dominant topic is a label for the same reason: as an int it would be z-scored as if it were a quantity.
    """
    mix = np.round(np.asarray(catalogue.topics, dtype=np.float64), TOPIC_MIX_DECIMALS)
    columns: dict[str, object] = {
        "item_id": catalogue.item_ids,
        "active": np.ones(catalogue.n_items, dtype=bool),
        "topic": [f"t{t}" for t in catalogue.primary_topic.astype(int)],
        "appeal": catalogue.appeal,
        "quality": catalogue.quality,
    }
    columns |= {f"topic_{t}": mix[:, t] for t in range(mix.shape[1])}
    return pd.DataFrame(columns)


def write_items(catalogue: Catalogue, path: str | Path) -> Path:
    """Write ``items.csv`` (see :func:`items_frame`); the service maps action index = row order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = items_frame(catalogue)
    df["active"] = ["true" if a else "false" for a in df["active"]]
    df.to_csv(path, index=False)
    return path


@dataclass
class LogArrays:
    """Logs as arrays in session/step order, as ``DQfDAgent.add_demonstrations`` takes them."""

    states: np.ndarray
    """``(N, obs_dim)`` float32 observations."""
    actions: np.ndarray
    """``(N,)`` int64 action indices."""
    rewards: np.ndarray
    """``(N,)`` float32 rewards."""
    dones: np.ndarray
    """``(N,)`` bool, True on the last step of terminated sessions."""
    episode_ids: np.ndarray
    """``(N,)`` int64 session index (0-based, in order of first appearance after sorting)."""
    propensities: np.ndarray
    """``(N,)`` float64 logging propensities (NaN when missing)."""
    masks: np.ndarray | None = None
    """``(N, n_items)`` bool allowed-item masks, or None when the logs have no ``allowed_items``."""


def logs_to_arrays(
    df: pd.DataFrame, n_items: int | None = None, item_ids: list[str] | None = None
) -> LogArrays:
    """Turn a logs DataFrame into :class:`LogArrays`, sorted by ``(session_id, step)``.

    Item ids map to action indices through ``item_ids`` (row order of items.csv) when given, else by
    parsing ``item_NNNNN``. Masks are built only when every row has ``allowed_items``; their width is
    ``n_items`` (or ``len(item_ids)``), which is then required.
    """
    df = df.sort_values(["session_id", "step"], kind="stable").reset_index(drop=True)
    if item_ids is not None:
        lookup = {name: i for i, name in enumerate(item_ids)}
        n_items = len(item_ids) if n_items is None else n_items

        def to_index(name: str) -> int:
            return lookup[name]
    else:
        to_index = item_index
    actions = np.array([to_index(x) for x in df["item_id"]], dtype=np.int64)
    episode_ids = pd.factorize(df["session_id"])[0].astype(np.int64)
    states = np.stack([np.asarray(s, dtype=np.float32) for s in df["state"]]) if len(df) else np.zeros((0, 0))
    masks = None
    allowed = df.get("allowed_items")
    if allowed is not None and len(df) and all(a is not None for a in allowed):
        if n_items is None:
            raise ValueError("n_items (or item_ids) is required to build masks")
        masks = np.zeros((len(df), n_items), dtype=bool)
        for row, items in enumerate(allowed):
            masks[row, [to_index(x) for x in items]] = True
    return LogArrays(
        states=states.astype(np.float32),
        actions=actions,
        rewards=df["reward"].to_numpy(np.float32),
        dones=df["done"].to_numpy(bool),
        episode_ids=episode_ids,
        propensities=df["propensity"].to_numpy(np.float64),
        masks=masks,
    )


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Generate simulator logs in the service's format.")
    parser.add_argument("--policy", default="expert", choices=POLICY_NAMES)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="logs path (.csv or .parquet)")
    parser.add_argument("--items", type=Path, default=None, help="where to write items.csv")
    parser.add_argument("--masks", action="store_true", help="also write allowed_items")
    parser.add_argument("--n-items", type=int, default=None, help="catalogue size (default: config)")
    args = parser.parse_args(argv)
    config = SimulatorConfig() if args.n_items is None else SimulatorConfig(n_items=args.n_items)
    df = generate_logs(args.policy, args.sessions, args.seed, config, include_masks=args.masks)
    write_logs(df, args.out)
    if args.items is not None:
        write_items(generate_catalogue(config), args.items)
    returns = df.groupby("session_id")["reward"].sum()
    print(
        f"wrote {len(df)} rows / {df['session_id'].nunique()} sessions to {args.out} "
        f"(mean session return {returns.mean():.2f})"
        + (f"; items to {args.items}" if args.items is not None else "")
    )


if __name__ == "__main__":
    main()
