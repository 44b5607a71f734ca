"""A small synthetic logger: example logged interactions in the contract format (until the project's
simulator is importable, the quickstart uses this)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd


def make_items(n_items: int) -> pd.DataFrame:
    """An items.csv-shaped catalogue: ``item-0`` … in action-index order, all active."""
    return pd.DataFrame(
        {
            "item_id": [f"item-{i}" for i in range(n_items)],
            "active": True,
            "title": [f"Item {i}" for i in range(n_items)],
        }
    )


def generate_logs(
    n_sessions: int,
    state_dim: int,
    n_items: int,
    seed: int = 0,
    max_steps: int = 20,
    epsilon: float = 0.2,
    stop_probability: float = 0.1,
    json_columns: bool = False,
) -> pd.DataFrame:
    """Sessions of a myopic ε-greedy logging policy in a linear-preference world.

    The user's state drifts towards the items they are shown; the click probability is a logistic
    function of the state · item embedding. The logger greedily picks the highest immediate click
    probability (with ε exploration), so its propensities are recorded. Rows follow the logged-
    interactions contract; ``json_columns`` writes list columns as JSON strings (the CSV form).
    """
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(n_items, state_dim)).astype(np.float32) / np.sqrt(state_dim)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    records: list[dict] = []
    for session in range(n_sessions):
        state = rng.normal(size=state_dim).astype(np.float32)
        t = start + timedelta(minutes=session)
        for step in range(max_steps):
            scores = embeddings @ state
            greedy = int(np.argmax(scores))
            explore = rng.random() < epsilon
            action = int(rng.integers(n_items)) if explore else greedy
            propensity = epsilon / n_items + (1 - epsilon if action == greedy else 0.0)
            click = rng.random() < 1.0 / (1.0 + np.exp(-3.0 * scores[action]))
            terminal = bool(rng.random() < stop_probability) or (not click and rng.random() < 0.2)
            records.append(
                {
                    "session_id": f"s{session:06d}",
                    "step": step,
                    "state": state.tolist(),
                    "item_id": f"item-{action}",
                    "reward": float(click),
                    "done": terminal,
                    "propensity": float(propensity),
                    "allowed_items": None,
                    "timestamp": (t + timedelta(seconds=30 * step)).isoformat(),
                }
            )
            if terminal:
                break
            state = (0.85 * state + 0.3 * embeddings[action] + 0.05 * rng.normal(size=state_dim)).astype(
                np.float32
            )
    frame = pd.DataFrame.from_records(records)
    if json_columns:
        frame["state"] = [json.dumps([round(float(x), 6) for x in s]) for s in frame["state"]]
        frame["allowed_items"] = [None if a is None else json.dumps(a) for a in frame["allowed_items"]]
    return frame
