"""The logs import is all-or-nothing, re-importing is harmless, errors name the row and the column, and
the state width is learned from the data (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from service.errors import ConflictError, InvalidInputError, StateWidthMismatchError
from service.ingest.catalogue import import_items, load_catalogue
from service.ingest.importer import import_logs, import_logs_report
from service.ingest.synthetic import generate_logs, make_items
from service.settings import Settings
from service.store import shape
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.models import Item, LoggedInteraction
from tests.service.conftest import N_ITEMS, STATE_DIM


@pytest.fixture
def engine(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database_url)
    with session_scope(make_session_factory(engine)) as session:
        import_items(session, make_items(N_ITEMS))
    yield engine
    engine.dispose()


def _count(engine) -> int:  # type: ignore[no-untyped-def]
    with make_session_factory(engine)() as session:
        return int(session.scalar(select(func.count()).select_from(LoggedInteraction)))


def _items(engine) -> int:  # type: ignore[no-untyped-def]
    with make_session_factory(engine)() as session:
        return int(session.scalar(select(func.count()).select_from(Item)))


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def big_csv(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """About 2,500 rows, list columns as JSON strings (the CSV form)."""
    frame = generate_logs(700, STATE_DIM, N_ITEMS, seed=11, json_columns=True)
    assert len(frame) > 2_100
    return _csv(frame, tmp_path / "logs.csv"), frame


def test_a_bad_row_late_in_the_file_leaves_nothing(engine, big_csv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, frame = big_csv
    bad = frame.astype({"reward": object})
    bad.loc[2_000, "state"] = "[0.1 0.2]"
    path = _csv(bad, tmp_path / "bad.csv")
    with pytest.raises(InvalidInputError) as err:
        import_logs(engine, path, chunk_rows=100, progress=False)  # 20 chunks written before it
    assert err.value.message.startswith("row 2001, column state: '[0.1 0.2]' is not a JSON array of numbers")
    assert _count(engine) == 0
    with make_session_factory(engine)() as session:
        assert shape.stored_state_dim(session) is None  # the width is not recorded either
    # the same with new item ids to create: the catalogue is left as it was too
    bad.loc[10, "item_id"] = "brand-new"
    bad.loc[2_100, "reward"] = "lots"
    path = _csv(bad.assign(state=frame["state"]), tmp_path / "bad2.csv")
    with pytest.raises(InvalidInputError, match=r"^row 2101, column reward: 'lots' is not a finite number"):
        import_logs(engine, path, chunk_rows=100, create_items=True, progress=False)
    assert _count(engine) == 0 and _items(engine) == N_ITEMS


def test_reimporting_the_same_file_is_harmless(engine, big_csv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, frame = big_csv
    first = import_logs_report(engine, path, chunk_rows=500, progress=False)
    assert (first.imported, first.skipped, first.state_dim) == (len(frame), 0, STATE_DIM)
    again = import_logs_report(engine, path, chunk_rows=500, progress=False)
    assert (again.imported, again.skipped) == (0, len(frame))
    assert _count(engine) == len(frame)
    # a file that repeats part of the stored rows and adds new sessions imports only the new rows
    more = generate_logs(720, STATE_DIM, N_ITEMS, seed=11, json_columns=True)
    grown = import_logs_report(engine, _csv(more, tmp_path / "more.csv"), chunk_rows=500, progress=False)
    assert (grown.imported, grown.skipped) == (len(more) - len(frame), len(frame))
    assert _count(engine) == len(more)
    with make_session_factory(engine)() as session:
        ids = session.scalars(select(LoggedInteraction.session_id).order_by(LoggedInteraction.id)).all()
    assert ids[: len(frame)] == frame["session_id"].tolist()  # stored in file order
    assert ids[len(frame) :] == more["session_id"].iloc[len(frame) :].tolist()


def test_a_row_contradicting_a_stored_one_is_an_error(engine, big_csv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, frame = big_csv
    import_logs(engine, path, chunk_rows=500, progress=False)
    changed = pd.concat(
        [
            frame,
            generate_logs(3, STATE_DIM, N_ITEMS, seed=99, json_columns=True).assign(
                session_id=lambda f: "new-" + f["session_id"]
            ),
        ],
        ignore_index=True,
    )
    changed.loc[1_500, "reward"] = float(changed.loc[1_500, "reward"]) + 1.0
    with pytest.raises(ConflictError) as err:
        import_logs(engine, _csv(changed, tmp_path / "changed.csv"), chunk_rows=500, progress=False)
    sid, step = changed.loc[1_500, "session_id"], changed.loc[1_500, "step"]
    assert err.value.message.startswith(
        f"row 1501, columns session_id/step: session {sid!r} step {step} is already stored with a different"
    )
    assert _count(engine) == len(frame)  # the new sessions were not imported either


def test_a_step_twice_in_the_file_is_an_error(engine, big_csv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, frame = big_csv
    twice = pd.concat([frame.iloc[:1_200], frame.iloc[[7]], frame.iloc[1_200:]], ignore_index=True)
    with pytest.raises(InvalidInputError) as err:
        import_logs(engine, _csv(twice, tmp_path / "twice.csv"), chunk_rows=300, progress=False)
    sid, step = frame.loc[7, "session_id"], frame.loc[7, "step"]
    assert err.value.message.startswith(
        f"row 1201, columns session_id/step: session {sid!r} step {step} is also row 8"
    )
    assert _count(engine) == 0


def test_the_state_width_is_learned_and_checked(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wide = generate_logs(5, STATE_DIM + 2, N_ITEMS, seed=1, json_columns=True)
    report = import_logs_report(engine, _csv(wide, tmp_path / "wide.csv"), progress=False)
    assert report.state_dim == STATE_DIM + 2 and report.imported == len(wide)
    with make_session_factory(engine)() as session:
        assert shape.stored_state_dim(session) == STATE_DIM + 2
        assert shape.stored_state_dim_source(session) == str(tmp_path / "wide.csv")
    narrow = _csv(generate_logs(5, STATE_DIM, N_ITEMS, seed=2, json_columns=True), tmp_path / "narrow.csv")
    with pytest.raises(StateWidthMismatchError) as err:
        import_logs(engine, narrow, progress=False)
    assert f"have {STATE_DIM + 2} features" in err.value.message
    assert f"narrow.csv has {STATE_DIM}" in err.value.message
    assert _count(engine) == len(wide)
    # a row of another width than row 1 names the row
    ragged = generate_logs(5, STATE_DIM + 2, N_ITEMS, seed=3, json_columns=True)
    ragged["session_id"] = "r-" + ragged["session_id"]
    ragged.loc[4, "state"] = json.dumps([0.5] * STATE_DIM)
    with pytest.raises(InvalidInputError) as err:
        import_logs(engine, _csv(ragged, tmp_path / "ragged.csv"), chunk_rows=2, progress=False)
    assert err.value.message == (
        f"row 5, column state: {STATE_DIM} numbers, expected {STATE_DIM + 2} (the width of row 1)"
    )
    assert _count(engine) == len(wide)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("state", "[0.1 0.2]", "row 3, column state: '[0.1 0.2]' is not a JSON array of numbers"),
        ("state", "", "row 3, column state: an empty cell is not a state"),
        ("state", "[1, NaN, 0, 0]", "row 3, column state: value 2 is nan: states must be finite"),
        ("done", "maybe", "row 3, column done: 'maybe' is not a boolean (use true/false)"),
        ("done", "", "row 3, column done: an empty cell is not a boolean (use true/false)"),
        ("step", "-1", "row 3, column step: '-1' is not a non-negative integer"),
        ("step", "1.5", "row 3, column step: '1.5' is not a non-negative integer"),
        ("reward", "", "row 3, column reward: an empty cell is not a finite number"),
        ("session_id", "", "row 3, column session_id: an empty cell"),
        ("item_id", "item-x", "row 3, column item_id: 'item-x' is not in the catalogue"),
        ("propensity", "high", "row 3, column propensity: 'high' is not a finite number"),
        (
            "allowed_items",
            "[item-1]",
            "row 3, column allowed_items: '[item-1]' is not a JSON array of item ids",
        ),
        ("allowed_items", '["item-404"]', "row 3, column allowed_items: 'item-404' is not in the catalogue"),
        ("timestamp", "yesterday", "row 3, column timestamp: 'yesterday' is not an ISO-8601 time"),
    ],
)
def test_errors_name_the_row_and_the_column(  # type: ignore[no-untyped-def]
    engine, tmp_path: Path, column: str, value: str, message: str
) -> None:
    frame = generate_logs(4, STATE_DIM, N_ITEMS, seed=5, json_columns=True).astype({column: object})
    frame.loc[2, column] = value
    with pytest.raises(InvalidInputError) as err:
        import_logs(engine, _csv(frame, tmp_path / "logs.csv"), STATE_DIM, progress=False)
    assert err.value.message.startswith(message), err.value.message
    assert err.value.field == column
    assert _count(engine) == 0


def test_done_accepts_the_usual_spellings(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    frame = generate_logs(4, STATE_DIM, N_ITEMS, seed=6, json_columns=True)
    spellings = ["TRUE", "false", "yes", "No", "1", "0", "t", "F"]
    frame["done"] = [spellings[i % len(spellings)] for i in range(len(frame))]
    import_logs(engine, _csv(frame, tmp_path / "logs.csv"), progress=False)
    with make_session_factory(engine)() as session:
        done = session.scalars(select(LoggedInteraction.done).order_by(LoggedInteraction.id)).all()
    assert done == [
        spellings[i % len(spellings)].lower() in {"true", "yes", "1", "t"} for i in range(len(frame))
    ]


def test_a_missing_file_and_missing_columns(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=r"^no such file: .*nope\.csv$"):
        import_logs(engine, tmp_path / "nope.csv", progress=False)
    frame = generate_logs(2, STATE_DIM, N_ITEMS, seed=7, json_columns=True).drop(columns=["done", "reward"])
    with pytest.raises(InvalidInputError, match=r"^missing columns reward, done \(a logs file has"):
        import_logs(engine, _csv(frame, tmp_path / "logs.csv"), progress=False)


def test_parquet_reimport_and_bad_row(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    frame = generate_logs(300, STATE_DIM, N_ITEMS, seed=8)
    frame["state"] = [np.asarray(s, dtype=np.float32) for s in frame["state"]]
    path = tmp_path / "logs.parquet"
    frame.to_parquet(path)
    assert import_logs(engine, path, chunk_rows=64, progress=False) == len(frame)
    report = import_logs_report(engine, path, chunk_rows=64, progress=False)
    assert (report.imported, report.skipped) == (0, len(frame))
    bad = frame.copy()
    bad["session_id"] = "b-" + bad["session_id"]
    bad.at[len(bad) - 3, "state"] = np.asarray([0.0, np.inf, 0.0, 0.0], dtype=np.float32)
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(InvalidInputError, match=rf"^row {len(bad) - 2}, column state: value 2 is inf"):
        import_logs(engine, tmp_path / "bad.parquet", chunk_rows=64, progress=False)
    assert _count(engine) == len(frame)


def test_items_active_must_be_a_boolean(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    items = make_items(N_ITEMS + 2)
    items["active"] = items["active"].astype(object)
    items.loc[N_ITEMS, "active"] = "maybe"
    path = tmp_path / "items.csv"
    items.to_csv(path, index=False)
    with session_scope(make_session_factory(engine)) as session, pytest.raises(InvalidInputError) as err:
        import_items(session, path)
    assert err.value.message == f"row {N_ITEMS + 1}, column active: 'maybe' is not a boolean (use true/false)"
    assert err.value.field == "active"
    items.loc[N_ITEMS, "active"] = "no"
    items.loc[0, "active"] = "False"
    items.to_csv(path, index=False)
    with session_scope(make_session_factory(engine)) as session:
        assert import_items(session, path) == 2
    with make_session_factory(engine)() as session:
        assert load_catalogue(session).active.tolist() == [False] + [True] * (N_ITEMS - 1) + [False, True]
    with session_scope(make_session_factory(engine)) as session, pytest.raises(InvalidInputError) as err:
        import_items(session, tmp_path / "nope.csv")
    assert err.value.message.startswith("no such file: ")


def test_the_import_bar_does_not_flood_a_log_file(  # type: ignore[no-untyped-def]
    engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = generate_logs(60, STATE_DIM, N_ITEMS, seed=9, json_columns=True)
    path = _csv(frame, tmp_path / "logs.csv")
    import_logs(engine, path, chunk_rows=5, progress=True)  # dozens of updates; stderr is not a terminal
    err = capsys.readouterr().err
    refreshes = [line for line in err.replace("\r", "\n").split("\n") if line.strip()]
    assert len(refreshes) <= 3, refreshes
    assert f"import: {len(frame)}rows" in refreshes[-1]
