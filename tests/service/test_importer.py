"""Importing logged interactions and the catalogue, and loading demonstrations into the agent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from service.errors import InvalidInputError
from service.ingest.catalogue import import_items, load_catalogue
from service.ingest.importer import import_logs
from service.ingest.synthetic import generate_logs, make_items
from service.learning.agents import new_agent
from service.learning.demos import load_demonstrations
from service.settings import Settings
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.features import decode_state
from service.store.models import Item, LoggedInteraction
from tests.service.conftest import N_ITEMS, STATE_DIM


@pytest.fixture
def engine(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database_url)
    with session_scope(make_session_factory(engine)) as session:
        import_items(session, make_items(N_ITEMS))
    yield engine
    engine.dispose()


def _stored(engine) -> list[LoggedInteraction]:  # type: ignore[no-untyped-def]
    with make_session_factory(engine)() as session:
        return list(
            session.scalars(
                select(LoggedInteraction).order_by(LoggedInteraction.session_id, LoggedInteraction.step)
            )
        )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_import_file_in_chunks(engine, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    frame = generate_logs(6, STATE_DIM, N_ITEMS, seed=1)
    frame.loc[0, "allowed_items"] = None
    frame.at[1, "allowed_items"] = ["item-0", "item-2", frame.at[1, "item_id"]]
    if fmt == "csv":
        out = frame.copy()
        out["state"] = [json.dumps(s) for s in out["state"]]
        out["allowed_items"] = [None if a is None else json.dumps(a) for a in out["allowed_items"]]
        path = tmp_path / "logs.csv"
        out.to_csv(path, index=False)
    else:
        path = tmp_path / "logs.parquet"
        out = frame.copy()
        out["state"] = [np.asarray(s, dtype=np.float32) for s in out["state"]]
        out.to_parquet(path)
    written = import_logs(engine, path, STATE_DIM, chunk_rows=7, progress=False)
    assert written == len(frame)
    rows = _stored(engine)
    assert len(rows) == len(frame)
    first = frame.sort_values(["session_id", "step"]).iloc[0]
    np.testing.assert_allclose(
        decode_state(rows[0].state), np.asarray(first["state"], dtype=np.float32), rtol=1e-6
    )
    assert rows[0].item_id == first["item_id"]
    assert rows[0].reward == pytest.approx(first["reward"])
    assert rows[0].timestamp is not None
    with_allowed = [r for r in rows if r.allowed_items is not None]
    assert [r.allowed_items for r in with_allowed] == [["item-0", "item-2", frame.at[1, "item_id"]]]
    assert sum(r.done for r in rows) == int(frame["done"].sum())


def test_import_rejects_bad_rows_naming_the_column(engine) -> None:  # type: ignore[no-untyped-def]
    frame = generate_logs(2, STATE_DIM, N_ITEMS, seed=2)
    bad_state = frame.copy()
    bad_state.at[0, "state"] = [0.0] * (STATE_DIM + 1)
    with pytest.raises(InvalidInputError) as err:
        import_logs(engine, bad_state, STATE_DIM, progress=False)
    assert err.value.field == "state"
    unknown = frame.copy()
    unknown.loc[0, "item_id"] = "no-such-item"
    with pytest.raises(InvalidInputError) as err:
        import_logs(engine, unknown, STATE_DIM, progress=False)
    assert err.value.field == "item_id"
    not_allowed = frame.copy()
    not_allowed.at[0, "allowed_items"] = ["item-0"] if frame.at[0, "item_id"] != "item-0" else ["item-1"]
    with pytest.raises(InvalidInputError) as err:
        import_logs(engine, not_allowed, STATE_DIM, progress=False)
    assert err.value.field == "allowed_items"
    with pytest.raises(InvalidInputError) as err:
        import_logs(engine, frame.drop(columns=["reward"]), STATE_DIM, progress=False)
    assert err.value.field == "reward"
    assert _stored(engine) == []


def test_import_can_extend_the_catalogue(engine) -> None:  # type: ignore[no-untyped-def]
    frame = generate_logs(3, STATE_DIM, N_ITEMS, seed=3)
    frame.loc[0, "item_id"] = "brand-new"
    import_logs(engine, frame, STATE_DIM, create_items=True, progress=False)
    with make_session_factory(engine)() as session:
        catalogue = load_catalogue(session)
        assert catalogue.item_ids[-1] == "brand-new"
        assert catalogue.index["brand-new"] == N_ITEMS
        assert session.scalar(select(func.count()).select_from(Item)) == N_ITEMS + 1


def test_items_reimport_updates_active_flag(engine) -> None:  # type: ignore[no-untyped-def]
    items = make_items(N_ITEMS)
    items.loc[2, "active"] = False
    with session_scope(make_session_factory(engine)) as session:
        assert import_items(session, items) == 0
    with make_session_factory(engine)() as session:
        catalogue = load_catalogue(session)
    assert catalogue.active.tolist() == [True, True, False, True, True]
    assert catalogue.item_ids == tuple(f"item-{i}" for i in range(N_ITEMS))


def test_demonstrations_load_into_the_agent(engine, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    frame = generate_logs(8, STATE_DIM, N_ITEMS, seed=4)
    frame.at[3, "allowed_items"] = ["item-1", frame.at[3, "item_id"]]
    import_logs(engine, frame, STATE_DIM, progress=False)
    with make_session_factory(engine)() as session:
        catalogue = load_catalogue(session)
    demos = load_demonstrations(engine, catalogue, STATE_DIM, chunk_rows=5)
    ordered = frame.sort_values(["session_id", "step"]).reset_index(drop=True)
    assert len(demos) == len(frame)
    assert demos.states.dtype == np.float32 and demos.states.shape == (len(frame), STATE_DIM)
    np.testing.assert_allclose(demos.states, np.stack(ordered["state"]).astype(np.float32), rtol=1e-6)
    assert demos.actions.tolist() == [int(i.split("-")[1]) for i in ordered["item_id"]]
    assert demos.dones.tolist() == ordered["done"].tolist()
    # episode ids: contiguous per session, one per session
    assert len(set(demos.episode_ids.tolist())) == ordered["session_id"].nunique()
    assert (np.diff(demos.episode_ids) >= 0).all()
    row = ordered.index[
        (ordered["session_id"] == frame.at[3, "session_id"]) & (ordered["step"] == frame.at[3, "step"])
    ][0]
    expected = [f"item-{i}" in {"item-1", frame.at[3, "item_id"]} for i in range(N_ITEMS)]
    assert demos.masks is not None and demos.masks[row].tolist() == expected
    assert demos.masks[row - 1].all() if row > 0 else True
    agent = new_agent(settings, catalogue.n_actions)
    added = agent.add_demonstrations(
        demos.states, demos.actions, demos.rewards, demos.dones, demos.episode_ids, demos.masks
    )
    assert 0 < added <= len(frame)
    losses = agent.train_step(demo_only=True)
    assert np.isfinite(losses["loss"])


def test_simulator_logs_import(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    simulator = pytest.importorskip("simulator.logs")
    from simulator import SimulatorConfig, generate_catalogue

    config = SimulatorConfig()
    frame = simulator.generate_logs("expert", 3, 0, config, include_masks=True)
    path = simulator.write_logs(frame, tmp_path / "sim.parquet")
    items = simulator.items_frame(generate_catalogue(config))
    with session_scope(make_session_factory(engine)) as session:
        session.query(Item).delete()
        session.flush()
        import_items(session, items)
    assert import_logs(engine, path, config.obs_dim, progress=False) == len(frame)
    with make_session_factory(engine)() as session:
        catalogue = load_catalogue(session)
    demos = load_demonstrations(engine, catalogue, config.obs_dim)
    assert len(demos) == len(frame)
    assert demos.masks is not None and demos.masks.shape == (len(frame), config.n_items)
    assert isinstance(pd.Timestamp(_stored(engine)[0].timestamp), pd.Timestamp)
