"""Migration 0007 rewrites the packbits masks of decisions and live transitions into the compact format
(service.store.features.encode_mask), page by page, and its downgrade gives back the same bytes."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from alembic import command
from sqlalchemy import insert, select

from service.store import migrate
from service.store.db import make_engine
from service.store.features import MASK_ALLOWED, MASK_EXCLUDED, decode_allowed, decode_mask, encode_state
from service.store.models import Decision, LiveTransition, utcnow
from tests.service.conftest import decision_row

BATCH_ROWS = 1000  # migrations/versions/0007_compact_masks.py: more rows than one page are inserted


def _old_masks() -> list[np.ndarray | None]:
    """Hand-made masks, then enough random ones (seeded) to span three pages of the migration."""
    big = np.ones(100_000, dtype=bool)
    big[[7, 50_000, 99_999]] = False
    hand = [
        None,
        np.array([True, True, False, True, True]),
        big,
        np.eye(1, 9, 3, dtype=bool)[0],
        np.zeros(0, bool),
    ]
    rng = np.random.default_rng(0)
    drawn = [rng.random(int(rng.integers(1, 40))) < rng.random() for _ in range(2 * BATCH_ROWS + 100)]
    return hand + drawn


def _packbits(mask: np.ndarray | None) -> bytes | None:
    """The blob the service stored before 0007."""
    return None if mask is None else np.packbits(mask).tobytes()


@pytest.fixture
def at_0006(database_url: str) -> Iterator[str]:
    """The test database taken back to revision 0006 (and brought to head again afterwards)."""
    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0006")
    try:
        yield database_url
    finally:
        command.upgrade(config, "head")


def _read(url: str) -> tuple[list[bytes | None], list[tuple[bytes | None, bytes | None]]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            decisions = (
                conn.execute(select(Decision.allowed_mask).order_by(Decision.event_id)).scalars().all()
            )
            live = conn.execute(
                select(LiveTransition.mask, LiveTransition.next_mask).order_by(LiveTransition.event_id)
            ).all()
    finally:
        engine.dispose()
    as_bytes = [None if b is None else bytes(b) for b in decisions]
    return as_bytes, [tuple(None if b is None else bytes(b) for b in pair) for pair in live]  # type: ignore[misc]


def test_old_masks_become_compact_and_come_back(at_0006: str) -> None:
    url = at_0006
    masks = _old_masks()
    events = sorted(uuid.uuid4().hex for _ in masks)
    old = [_packbits(m) for m in masks]
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(Decision),
                [
                    decision_row(event, state=[0.0] * 4, built=True, allowed_mask=blob)
                    for event, blob in zip(events, old, strict=True)
                ],
            )
            # a transition per decision: its mask, and the next decision's as its next mask
            conn.execute(
                insert(LiveTransition),
                [
                    {
                        "event_id": event,
                        "state": encode_state([0.0] * 4),
                        "action_index": 0,
                        "reward": 0.0,
                        "done": False,
                        "truncated": False,
                        "mask": old[i],
                        "next_mask": old[(i + 1) % len(old)],
                        "default_reward_used": False,
                        "created_at": utcnow(),
                    }
                    for i, event in enumerate(events)
                ],
            )
    finally:
        engine.dispose()

    command.upgrade(migrate.alembic_config(url), "0007")
    decisions, live = _read(url)
    assert live == [(decisions[i], decisions[(i + 1) % len(decisions)]) for i in range(len(decisions))]
    for mask, blob, new in zip(masks, old, decisions, strict=True):
        if mask is None:
            assert new is None
            continue
        n = 8 * len(blob)  # the catalogue size a packbits blob can tell
        padded = np.zeros(n, dtype=bool)
        padded[: mask.shape[0]] = mask
        stored = decode_allowed(new)
        assert stored is not None and stored.n == n
        assert np.array_equal(decode_mask(new, n), padded)
        assert np.array_equal(decode_mask(new, n + 3), np.concatenate([padded, np.zeros(3, bool)]))
        assert len(new) == 5 + 4 * min(int(padded.sum()), n - int(padded.sum()))
    # hand-made: "all active but item 2" of 5 items (padded to 8), 100,000 items with 3 inactive, one of 9
    assert decisions[1] == struct.pack("<BI4i", MASK_EXCLUDED, 8, 2, 5, 6, 7)
    assert decisions[2] == struct.pack("<BI3i", MASK_EXCLUDED, 100_000, 7, 50_000, 99_999)
    assert decisions[3] == struct.pack("<BIi", MASK_ALLOWED, 16, 3)
    assert decisions[4] == struct.pack("<BI", MASK_EXCLUDED, 0)

    command.downgrade(migrate.alembic_config(url), "0006")
    assert _read(url) == ([*old], [(old[i], old[(i + 1) % len(old)]) for i in range(len(old))])
