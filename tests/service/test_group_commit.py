"""The group-commit machinery: batches gathered on the event loop, the writer thread's hand-over and
shutdown, and the SQLite WAL checkpoints the writers take after answering their batches."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, func, select

from service.api.app import create_app
from service.api.schemas import ActResponse
from service.errors import InvalidInputError, UnavailableError
from service.serving.choice import Choice, decision_row, new_event_id
from service.serving.decision_log import DecisionWriter
from service.settings import Settings
from service.store.db import make_engine
from service.store.group_commit import GroupCommitWriter
from service.store.models import Decision
from service.store.wal_checkpoints import WalCheckpoints
from tests.service.conftest import STATE


class Recorder(GroupCommitWriter[int, int]):
    """Commits nothing: records each batch and answers every item with itself."""

    name = "recorder"

    def __init__(self, max_batch: int = 256) -> None:
        super().__init__(create_engine("sqlite://"), max_batch)
        self.seen: list[list[int]] = []

    def commit_batch(self, items: list[int]) -> list[int | Exception]:
        self.seen.append(list(items))
        return list(items)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    writer = Recorder()
    writer.start()
    yield writer
    writer.stop()


def test_requests_of_one_loop_pass_share_one_batch(recorder: Recorder) -> None:
    async def main() -> list[int]:
        return await asyncio.gather(*(recorder.submit(i) for i in range(50)))

    assert asyncio.run(main()) == list(range(50))
    assert recorder.seen == [list(range(50))]  # one hand-over, one commit, in queue order


def test_batches_keep_queue_order_and_max_batch() -> None:
    writer = Recorder(max_batch=16)
    writer.start()
    try:

        async def main() -> list[int]:
            return await asyncio.gather(*(writer.submit(i) for i in range(50)))

        assert asyncio.run(main()) == list(range(50))
    finally:
        writer.stop()
    assert [len(batch) for batch in writer.seen] == [16, 16, 16, 2]
    assert [item for batch in writer.seen for item in batch] == list(range(50))


def test_a_busy_loop_still_hands_the_batch_over(recorder: Recorder) -> None:
    """Callbacks always ready (a task spinning on sleep(0)) must not hold a batch back for longer than
    ``max_gather_s``."""

    async def main() -> float:
        spinning = True

        async def spin() -> None:
            while spinning:
                await asyncio.sleep(0)

        spinner = asyncio.create_task(spin())
        await asyncio.sleep(0)
        began = time.monotonic()
        assert await recorder.submit(7) == 7
        waited = time.monotonic() - began
        spinning = False
        await spinner
        return waited

    assert asyncio.run(main()) < 1.0
    assert recorder.seen == [[7]]


def test_stop_commits_what_is_still_gathered() -> None:
    """stop() on the loop's own thread (the lifespan's shutdown) before the idle check ran."""
    writer = Recorder()
    writer.start()

    async def main() -> list[int | BaseException]:
        tasks = [asyncio.create_task(writer.submit(i)) for i in range(5)]
        await asyncio.sleep(0)  # the tasks have gathered their items; the hand-over is still to come
        assert sum(len(batch) for batch in writer._gathering.values()) == 5
        writer.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(UnavailableError):
            await writer.submit(99)
        return results

    assert asyncio.run(main()) == list(range(5))
    assert writer.seen == [list(range(5))]


def test_two_writers_on_one_loop_both_hand_over() -> None:
    first, second = Recorder(), Recorder()
    first.start()
    second.start()
    try:

        async def main() -> tuple[list[int], list[int]]:
            a = asyncio.gather(*(first.submit(i) for i in range(10)))
            b = asyncio.gather(*(second.submit(i) for i in range(10, 20)))
            return await a, await b

        assert asyncio.run(main()) == (list(range(10)), list(range(10, 20)))
    finally:
        first.stop()
        second.stop()
    assert first.seen == [list(range(10))] and second.seen == [list(range(10, 20))]


def test_writers_serve_several_event_loops_at_once(recorder: Recorder) -> None:
    results: dict[int, list[int]] = {}

    def run(offset: int) -> None:
        async def main() -> list[int]:
            return await asyncio.gather(*(recorder.submit(offset + i) for i in range(20)))

        results[offset] = asyncio.run(main())

    threads = [threading.Thread(target=run, args=(offset,)) for offset in (0, 100, 200, 300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {offset: list(range(offset, offset + 20)) for offset in (0, 100, 200, 300)}


def test_event_ids_are_uuid4_hex() -> None:
    ids = {new_event_id() for _ in range(2000)}
    assert len(ids) == 2000
    for event_id in list(ids)[:200]:
        parsed = uuid.UUID(hex=event_id)
        assert parsed.hex == event_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_act_body_is_the_response_model_json(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        for body in ({"state": STATE, "k": 3}, {"state": STATE, "session_id": "s", "explore": False}):
            response = client.post("/act", json=body)
            assert response.status_code == 200 and response.headers["content-type"] == "application/json"
            model = ActResponse.model_validate_json(response.content)
            assert response.content == model.model_dump_json().encode()
            assert len(model.ranking) == body.get("k", 1)


# --------------------------------------------------------------------------------------------------
# WAL checkpoints (SQLite).


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


class _Policy:
    model_version, revision = 1, 0


def _rows(n: int) -> list[dict]:
    choice = Choice("item-0", 0, [{"item_id": "item-0", "score": 0.5}], 1.0, False, None)
    return [decision_row(_Policy(), STATE, f"s{i % 7}", choice) for i in range(n)]  # type: ignore[arg-type]


def _wal_pages(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()[1]


def _autocheckpoint_of_every_pooled_connection(engine: Engine) -> set[int]:
    conns = [engine.connect() for _ in range(engine.pool.size())]
    try:
        return {conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() for conn in conns}
    finally:
        for conn in conns:
            conn.close()


def test_wal_checkpoints_run_beside_the_writer(engine: Engine) -> None:
    writer = DecisionWriter(engine)
    if engine.dialect.name != "sqlite":
        assert writer._checkpoints is None  # PostgreSQL: nothing to do
        return
    checkpoints = writer._checkpoints
    assert checkpoints is not None and checkpoints.rows_between == 64
    seen: list[int] = []
    held: list[int] = []
    real_hold = checkpoints.hold

    def hold(conn) -> None:  # type: ignore[no-untyped-def]
        real_hold(conn)
        held.append(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar())
        conn.rollback()

    checkpoints.hold = hold  # type: ignore[method-assign]
    writer.start()
    try:

        async def write(n: int) -> None:
            await asyncio.gather(*(writer.write(row) for row in _rows(n)))
            seen.append(n)

        for _ in range(12):
            asyncio.run(write(20))
        deadline = time.monotonic() + 10
        while checkpoints.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        writer.stop()
    assert checkpoints.checkpoints >= 1 and checkpoints.limit == 1000
    assert held and set(held) == {0}  # the writer's commits leave the checkpoints to the thread
    assert checkpoints._thread is None  # stopped with the writer
    # The writer's connection went back to the pool with SQLite's automatic checkpoints on again.
    assert _autocheckpoint_of_every_pooled_connection(engine) == {1000}
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Decision)) == 240


def test_the_checkpoint_interval_follows_the_pages_a_row_adds(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    writer = DecisionWriter(engine)
    checkpoints = WalCheckpoints(engine)
    checkpoints.limit = 1000
    for _ in range(3):
        rows = _rows(100)
        writer.commit_batch(rows)
        checkpoints.asked_rows = len(rows)
        checkpoints._checkpoint()
    assert checkpoints.checkpoints == 3 and checkpoints.wal_pages > 0
    # 750 pages (3/4 of the automatic threshold) at the rows' measured pages per row.
    assert 16 <= checkpoints.rows_between <= 4096
    per_row = 750 / checkpoints.rows_between
    assert 0 < per_row < 20


def test_a_wal_that_does_not_start_over_is_checkpointed_by_the_writer(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    checkpoints = WalCheckpoints(engine)
    checkpoints.limit = 1  # any WAL over 4 pages asks for the writer's own checkpoint
    writer = DecisionWriter(engine)
    writer.commit_batch(_rows(60))
    checkpoints._checkpoint()
    assert checkpoints._inline and checkpoints.wal_pages > 4
    ran: list[bool] = []
    real = checkpoints._checkpoint
    checkpoints._checkpoint = lambda inline=False: ran.append(inline) or real(inline)  # type: ignore[method-assign]
    checkpoints.after_commit(1)  # on the writer thread, between two batches
    assert ran == [True] and not checkpoints._inline


def test_failing_or_disabled_checkpoints_leave_the_writer_alone(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    away = WalCheckpoints(create_engine("sqlite:////nonexistent-dir/x.db"))
    away._checkpoint()  # cannot connect: logged, the next one tries again
    assert away.enabled and away.checkpoints == 0
    memory = WalCheckpoints(create_engine("sqlite://"))
    memory._checkpoint()
    assert not memory.enabled  # no WAL: nothing to checkpoint

    from sqlalchemy import event

    engine.dispose()

    def no_autocheckpoint(conn, _record) -> None:  # type: ignore[no-untyped-def]
        conn.execute("PRAGMA wal_autocheckpoint=0")

    event.listen(engine, "connect", no_autocheckpoint)
    off = WalCheckpoints(engine)
    with engine.connect() as conn:
        off.hold(conn)
        assert not off.enabled  # automatic checkpoints off by configuration: these too
        off.unhold(conn)
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0


# --------------------------------------------------------------------------------------------------
# Session steps: remembered per session, checked against the stored row count.


def _stored_steps(engine: Engine) -> dict[str, list[int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Decision.session_id, Decision.step).order_by(Decision.step))
        steps: dict[str, list[int]] = {}
        for session_id, step in rows:
            steps.setdefault(session_id, []).append(step)
        return steps


def test_remembered_steps_follow_other_writers(engine: Engine) -> None:
    """Two writers (two replicas) on the same sessions: each one's remembered steps go stale when the
    other writes, and the row count tells it to read them again."""
    a, b = DecisionWriter(engine), DecisionWriter(engine)
    for round_ in range(6):
        for writer in (a, b) if round_ % 2 else (a, a, b):
            rows = _rows(10)  # sessions s0..s6, some twice in a batch
            writer.commit_batch(rows)
    steps = _stored_steps(engine)
    assert set(steps) == {f"s{i}" for i in range(7)}
    for session_steps in steps.values():
        assert session_steps == list(range(len(session_steps)))
    assert a._rows.known and b._rows.known  # both remember their sessions
    for session_id, (count, last) in a._rows.known.items():
        stored = steps[session_id]
        assert count <= len(stored) and last <= stored[-1]


def test_remembered_steps_are_used_and_bounded(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.serving.decision_log as decision_log

    writer = DecisionWriter(engine)
    writer.commit_batch(_rows(14))
    reads: list[str] = []
    real = writer._rows.steps_sql

    def steps_sql(sessions: list[str]) -> tuple[str, tuple]:
        reads.append("max")
        return real(sessions)

    monkeypatch.setattr(writer._rows, "steps_sql", steps_sql)
    writer.commit_batch(_rows(14))
    assert reads == []  # every session remembered with its row count: no max(step) read
    assert _stored_steps(engine)["s0"] == [0, 1, 2, 3]
    monkeypatch.setattr(decision_log, "KNOWN_SESSIONS", 3)
    writer.commit_batch(_rows(7))
    assert list(writer._rows.known) == ["s4", "s5", "s6"]  # the most recently written


class _Touching(GroupCommitWriter[int, int]):
    """Runs one statement per batch in the writer's transaction; the first batch waits for a gate."""

    name = "touching"

    def __init__(self, engine: Engine, gate: threading.Event) -> None:
        super().__init__(engine, max_batch=1)
        self.gate = gate

    def commit_batch(self, items: list[int]) -> list[int | Exception]:
        self.gate.wait(30)
        with self.transaction() as conn:
            conn.exec_driver_sql("SELECT 1")
        return list(items)


def test_a_busy_writer_keeps_its_connection_and_an_idle_one_gives_it_back(engine: Engine) -> None:
    from sqlalchemy import event

    checkouts: list[int] = []
    event.listen(engine, "checkout", lambda *args: checkouts.append(1))
    gate = threading.Event()
    writer = _Touching(engine, gate)
    writer.start()
    try:

        async def main() -> list[int]:
            tasks = [asyncio.create_task(writer.submit(i)) for i in range(5)]
            await asyncio.sleep(0.05)  # all five queued behind the gated first batch
            gate.set()
            return await asyncio.gather(*tasks)

        assert asyncio.run(main()) == list(range(5))
        assert writer.batches == 5 and len(checkouts) == 1  # one checkout for the back-to-back batches
        wait_until = time.monotonic() + 5
        while writer._conn is not None and time.monotonic() < wait_until:
            time.sleep(0.01)
        assert writer._conn is None  # idle: back in the pool
        assert asyncio.run(writer.submit(9)) == 9 and len(checkouts) == 2
    finally:
        writer.stop()
    assert writer._conn is None


def test_insert_errors_are_sqlalchemy_errors_and_roll_back(engine: Engine) -> None:
    """On PostgreSQL the rows go in with COPY on the driver connection: its errors must still be
    SQLAlchemy's (the API maps those), and the failed batch must leave nothing behind."""
    from sqlalchemy.exc import IntegrityError

    writer = DecisionWriter(engine)
    rows = _rows(3)
    writer.commit_batch(rows[:1])
    with pytest.raises(IntegrityError):
        writer.commit_batch(rows[1:] + rows[:1])  # the last one's event id is stored already
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Decision)) == 1
    writer.commit_batch(rows[1:])  # the writer goes on
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Decision)) == 3


@pytest.mark.parametrize(
    "poison",
    [
        pytest.param({"model_version": 2**70}, id="integer-out-of-range"),
        pytest.param({"session_id": "nul\x00byte"}, id="nul-byte"),
        pytest.param({"ranking": [{"item_id": "item-0", "score": float("nan")}]}, id="nan-in-json"),
    ],
)
def test_a_bad_row_fails_only_its_own_request(engine: Engine, poison: dict) -> None:
    """A full batch (256) with one row the database refuses in the middle: that request alone gets a
    422, the 255 others are committed and answered."""
    if engine.dialect.name == "sqlite" and "model_version" not in poison:
        pytest.skip("SQLite stores NUL bytes and NaN in JSON text: only PostgreSQL refuses them")
    writer = DecisionWriter(engine, max_batch=256)
    rows = _rows(256)
    rows[128].update(poison)
    writer.start()
    try:

        async def main() -> list[object]:
            return await asyncio.gather(*(writer.submit(row) for row in rows), return_exceptions=True)

        outcomes = asyncio.run(main())
    finally:
        writer.stop()
    failed = [i for i, outcome in enumerate(outcomes) if outcome is not None]
    assert failed == [128]
    assert isinstance(outcomes[128], InvalidInputError)
    assert outcomes[128].message.startswith("the database cannot store a value of this request")
    with engine.connect() as conn:
        stored = set(conn.scalars(select(Decision.event_id)))
    assert stored == {row["event_id"] for i, row in enumerate(rows) if i != 128}
    assert writer.rows == 255
