"""The logged-interactions writer: contract columns, done semantics, CSV/Parquet round trips, arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simulator import SimulatorConfig, generate_catalogue
from simulator.catalogue import Catalogue
from simulator.evaluate import run_sessions
from simulator.logs import (
    LOG_COLUMNS,
    generate_logs,
    items_frame,
    logs_to_arrays,
    main,
    read_logs,
    write_items,
    write_logs,
)

# Short sessions so that both terminated and truncated sessions occur.
CONFIG = SimulatorConfig(max_session_length=12)


@pytest.fixture(scope="module")
def logs() -> pd.DataFrame:
    return generate_logs("expert", 30, seed=4, config=CONFIG, include_masks=True)


def test_columns_and_values(logs: pd.DataFrame) -> None:
    assert list(logs.columns) == list(LOG_COLUMNS)
    assert logs["session_id"].iloc[0] == "sim-000000"
    assert logs["item_id"].str.fullmatch(r"item_\d{5}").all()
    assert logs["propensity"].between(0, 1, inclusive="right").all()
    assert all(s.dtype == np.float32 and s.shape == (CONFIG.obs_dim,) for s in logs["state"])
    for _, session in logs.groupby("session_id"):
        assert session["step"].tolist() == list(range(len(session)))
        assert session["timestamp"].is_monotonic_increasing and session["timestamp"].is_unique
        assert not session["done"].iloc[:-1].any()
        served = session["item_id"].tolist()
        for t, allowed in enumerate(session["allowed_items"]):
            assert served[t] in allowed and not set(served[:t]) & set(allowed)


def test_done_only_on_terminated_sessions(logs: pd.DataFrame) -> None:
    episodes = run_sessions("expert", 30, seed=4, config=CONFIG)
    lasts = logs.groupby("session_id").tail(1)
    assert lasts["done"].tolist() == [e.terminated for e in episodes]
    assert any(e.truncated for e in episodes) and any(e.terminated for e in episodes)
    # Same users, same actions as the evaluation rollouts.
    returns = logs.groupby("session_id")["reward"].sum().to_numpy()
    np.testing.assert_allclose(returns, [e.session_return for e in episodes])


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(b.columns) == list(LOG_COLUMNS)
    for col in ("session_id", "item_id", "timestamp", "allowed_items"):
        assert a[col].tolist() == b[col].tolist()
    np.testing.assert_array_equal(a["step"].to_numpy(), b["step"].to_numpy())
    np.testing.assert_array_equal(a["reward"].to_numpy(), b["reward"].to_numpy())
    np.testing.assert_array_equal(a["done"].to_numpy(bool), b["done"].to_numpy(bool))
    np.testing.assert_allclose(a["propensity"].to_numpy(), b["propensity"].to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(np.stack(a["state"]), np.stack(b["state"]))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(logs: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = write_logs(logs, tmp_path / f"logs{suffix}")
    _assert_same(logs, read_logs(path))


def test_csv_encoding(logs: pd.DataFrame, tmp_path: Path) -> None:
    path = write_logs(logs.head(3), tmp_path / "logs.csv")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(raw.columns) == list(LOG_COLUMNS)
    state = json.loads(raw["state"].iloc[0])
    assert len(state) == CONFIG.obs_dim and raw["state"].iloc[0].startswith("[")
    assert json.loads(raw["allowed_items"].iloc[0])[0] == "item_00000"
    assert raw["done"].isin(["true", "false"]).all()
    assert raw["timestamp"].iloc[0] == "2024-01-01T00:00:00Z"


def test_parquet_schema_and_null_masks(tmp_path: Path) -> None:
    df = generate_logs("random", 3, seed=0, config=CONFIG)
    assert df["allowed_items"].isna().all()
    path = write_logs(df, tmp_path / "logs.parquet")
    schema = pq.read_schema(path)
    assert schema.names == list(LOG_COLUMNS)
    assert schema.field("state").type == pa.list_(pa.float32())
    assert schema.field("allowed_items").type == pa.list_(pa.string())
    assert schema.field("done").type == pa.bool_()
    _assert_same(df, read_logs(path))
    csv = write_logs(df, tmp_path / "logs.csv")
    assert read_logs(csv)["allowed_items"].isna().all()


def test_items_csv(tmp_path: Path) -> None:
    cat = generate_catalogue(CONFIG)
    path = write_items(cat, tmp_path / "items.csv")
    items = pd.read_csv(path)
    assert list(items.columns[:2]) == ["item_id", "active"]
    assert items["item_id"].tolist() == [f"item_{i:05d}" for i in range(100)]
    assert items["active"].all()
    np.testing.assert_allclose(items["quality"], cat.quality)
    np.testing.assert_allclose(items["appeal"], cat.appeal)
    topic_columns = [f"topic_{t}" for t in range(CONFIG.n_topics)]
    assert list(items.columns) == ["item_id", "active", "topic", "appeal", "quality", *topic_columns]
    # The mix is numeric (a feature for the service), rounded to 6 decimals; the label is text (not one).
    assert all(items[c].dtype == np.float64 for c in topic_columns)
    np.testing.assert_allclose(items[topic_columns].to_numpy(), cat.topics, atol=5e-7)
    assert items["topic"].tolist() == [f"t{t}" for t in cat.primary_topic]


def test_items_frame_by_hand() -> None:
    # Two items, three topics: item 0 is mostly topic 2, item 1 mostly topic 0.
    cat = Catalogue(
        topics=np.array([[0.1, 0.2, 0.7], [0.5000004, 0.4999996, 0.0]]),
        appeal=np.array([0.25, 0.75]),
        quality=np.array([-0.5, 0.5]),
    )
    frame = items_frame(cat)
    assert list(frame.columns) == [
        "item_id",
        "active",
        "topic",
        "appeal",
        "quality",
        "topic_0",
        "topic_1",
        "topic_2",
    ]
    assert frame["item_id"].tolist() == ["item_00000", "item_00001"]
    assert frame["active"].tolist() == [True, True]
    assert frame["topic"].tolist() == ["t2", "t0"]
    assert frame["appeal"].tolist() == [0.25, 0.75] and frame["quality"].tolist() == [-0.5, 0.5]
    # Rounded to 6 decimals: 0.5000004 -> 0.5, 0.4999996 -> 0.5.
    assert frame["topic_0"].tolist() == [0.1, 0.5]
    assert frame["topic_1"].tolist() == [0.2, 0.5]
    assert frame["topic_2"].tolist() == [0.7, 0.0]


def test_logs_to_arrays(logs: pd.DataFrame) -> None:
    shuffled = logs.sample(frac=1.0, random_state=0)
    arrays = logs_to_arrays(shuffled, n_items=100)
    n = len(logs)
    assert arrays.states.shape == (n, CONFIG.obs_dim) and arrays.states.dtype == np.float32
    np.testing.assert_array_equal(arrays.states, np.stack(logs["state"]))
    np.testing.assert_array_equal(arrays.actions, [int(x[5:]) for x in logs["item_id"]])
    np.testing.assert_array_equal(arrays.dones, logs["done"].to_numpy())
    assert np.all(np.diff(arrays.episode_ids) >= 0) and arrays.episode_ids[-1] == 29
    assert arrays.masks is not None and arrays.masks.shape == (n, 100)
    assert arrays.masks[np.arange(n), arrays.actions].all()
    no_masks = logs_to_arrays(generate_logs("random", 2, seed=0, config=CONFIG))
    assert no_masks.masks is None


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, items = tmp_path / "data" / "logs.parquet", tmp_path / "data" / "items.csv"
    main(["--policy", "expert", "--sessions", "5", "--seed", "0", "--out", str(out), "--items", str(items)])
    assert "5 sessions" in capsys.readouterr().out
    df = read_logs(out)
    assert df["session_id"].nunique() == 5 and len(pd.read_csv(items)) == 100
