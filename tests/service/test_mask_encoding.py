"""Stored allowed-action masks are compact (issue 15): a format tag, the catalogue size the decision saw and
the shorter of its allowed / excluded index lists; the learner decodes them to the same dense masks as
before, and the item agent to exact allowed sets."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from agent.set_losses import AllowedSet
from service.api.app import create_app
from service.feedback.transitions import build_ready_transitions, to_transition
from service.learning import item_agents
from service.settings import Settings
from service.store.db import make_engine, make_session_factory
from service.store.features import (
    MASK_ALLOWED,
    MASK_EXCLUDED,
    StoredMask,
    decode_allowed,
    decode_mask,
    encode_mask,
)
from service.store.models import Decision, LiveTransition
from tests.service.conftest import N_ITEMS, admin_headers

S0, S1 = [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]


def _blob(tag: int, n: int, indices: list[int]) -> bytes:
    """The expected bytes, written out by hand: uint8 tag, uint32 n, int32 indices, little-endian."""
    return struct.pack(f"<BI{len(indices)}i", tag, n, *indices)


def _mask(n: int, allowed: list[int]) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[allowed] = True
    return mask


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (_mask(1, [0]), _blob(MASK_EXCLUDED, 1, [])),  # a tie (1 vs 0 listed) lists the exclusions
        (_mask(1, []), _blob(MASK_ALLOWED, 1, [])),
        (_mask(8, list(range(8))), _blob(MASK_EXCLUDED, 8, [])),  # an empty exclusion list
        (_mask(8, [2, 5]), _blob(MASK_ALLOWED, 8, [2, 5])),
        (_mask(8, [0, 1, 2, 3]), _blob(MASK_EXCLUDED, 8, [4, 5, 6, 7])),  # 4 vs 4: the exclusions
        (_mask(9, [0, 1, 2, 3, 4, 5, 6, 8]), _blob(MASK_EXCLUDED, 9, [7])),
        (_mask(9, [8]), _blob(MASK_ALLOWED, 9, [8])),
        (_mask(0, []), _blob(MASK_EXCLUDED, 0, [])),
    ],
)
def test_hand_made_masks_encode_to_the_shorter_list_and_back(mask: np.ndarray, expected: bytes) -> None:
    blob = encode_mask(mask)
    assert blob == expected
    assert decode_mask(blob, mask.shape[0]).tolist() == mask.tolist()
    stored = decode_allowed(blob)
    assert stored is not None and stored.n == mask.shape[0]
    listed = np.flatnonzero(~mask if stored.excluded else mask)
    assert stored.indices.tolist() == listed.tolist()


def test_none_stays_none() -> None:
    assert encode_mask(None) is None
    assert decode_mask(None, 5) is None and decode_allowed(None) is None


def test_a_large_catalogue_with_a_few_inactive_items_costs_a_few_bytes() -> None:
    n = 100_000
    mask = np.ones(n, dtype=bool)
    mask[[7, 50_000, 99_999]] = False
    blob = encode_mask(mask)
    assert blob == _blob(MASK_EXCLUDED, n, [7, 50_000, 99_999])
    assert len(blob) == 17  # 1 + 4 + 3·4, against 12,500 bytes of packbits
    assert np.array_equal(decode_mask(blob, n), mask)
    few = _mask(n, [3, 99_998])  # a narrow candidate list
    assert encode_mask(few) == _blob(MASK_ALLOWED, n, [3, 99_998]) and len(encode_mask(few)) == 13
    assert np.array_equal(decode_mask(encode_mask(few), n), few)


@pytest.mark.parametrize("seed", range(20))
def test_random_masks_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    mask = rng.random(n) < rng.random()
    blob = encode_mask(mask)
    assert np.array_equal(decode_mask(blob, n), mask)
    listed = min(int(mask.sum()), n - int(mask.sum()))
    assert len(blob) == 5 + 4 * listed


@pytest.mark.parametrize("mask", [_mask(5, [1, 3]), _mask(5, [0, 1, 2, 4])])
def test_items_past_the_stored_catalogue_are_not_allowed(mask: np.ndarray) -> None:
    blob = encode_mask(mask)
    assert decode_mask(blob, 8).tolist() == mask.tolist() + [False] * 3  # items added since
    assert decode_mask(blob, 3).tolist() == mask[:3].tolist()  # a model that knows fewer items


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x01\x05\x00\x00", _blob(3, 5, []), _blob(MASK_ALLOWED, 5, [5]), _blob(MASK_ALLOWED, 5, [3, 1])],
)
def test_a_blob_not_in_the_format_is_refused(blob: bytes) -> None:
    with pytest.raises(ValueError):
        decode_allowed(blob)


@pytest.mark.parametrize(
    ("stored", "n_items", "expected"),
    [
        (StoredMask(5, np.array([2]), True), 8, AllowedSet(5, exclusions=frozenset({2}))),
        (StoredMask(5, np.array([1, 3]), False), 8, AllowedSet(5, candidates=(1, 3))),
        # a mask migrated from packbits records 8 items for a 5-item catalogue: sized to the table
        (StoredMask(8, np.array([0, 4]), False), 5, AllowedSet(5, candidates=(0, 4))),
        (StoredMask(8, np.array([1, 5, 6, 7]), True), 5, AllowedSet(5, exclusions=frozenset({1}))),
        (StoredMask(5, np.array([], dtype=np.int64), False), 5, AllowedSet(5, candidates=())),
    ],
)
def test_a_stored_mask_becomes_the_exact_allowed_set(
    stored: StoredMask, n_items: int, expected: AllowedSet
) -> None:
    allowed = item_agents.compact_allowed(stored, n_items)
    assert allowed == expected
    dense = stored.dense(n_items)
    assert [i in allowed for i in range(n_items)] == dense.tolist()


def test_act_stores_compact_masks_and_the_learner_sees_the_same_masks(trained: Settings) -> None:
    settings = trained.model_copy(update={"role": "api", "reward_window_s": 60.0})
    with TestClient(create_app(settings)) as client:
        off = client.post("/admin/items/item-2/active", params={"active": False}, headers=admin_headers())
        assert off.status_code == 200
        e0 = client.post("/act", json={"state": S0, "session_id": "s"}).json()["event_id"]
        e1 = client.post(
            "/act", json={"state": S1, "session_id": "s", "candidates": ["item-0", "item-3"]}
        ).json()["event_id"]
        assert client.post("/feedback", json={"event_id": e0, "reward": 1.0}).status_code == 200
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            blobs = {e: m for e, m in session.execute(select(Decision.event_id, Decision.allowed_mask))}
            assert blobs[e0] == _blob(MASK_EXCLUDED, N_ITEMS, [2])  # all active but item-2: 9 bytes
            assert blobs[e1] == _blob(MASK_ALLOWED, N_ITEMS, [0, 3])
            [row] = build_ready_transitions(
                session,
                reward_window_s=settings.reward_window_s,
                default_reward=settings.default_reward,
                aggregation=settings.aggregation,
            )
            assert row.event_id == e0
            stored = session.scalar(select(LiveTransition).where(LiveTransition.event_id == e0))
            assert (stored.mask, stored.next_mask) == (blobs[e0], blobs[e1])
            t = to_transition(stored, N_ITEMS + 2)  # the learner's catalogue grew by two items since
    finally:
        engine.dispose()
    # The dense masks the packbits format gave, padded with the items the decisions never saw.
    assert t.mask.tolist() == [True, True, False, True, True, False, False]
    assert t.next_mask.tolist() == [True, False, False, True, False, False, False]
    assert t.allowed is not None and t.allowed.n == N_ITEMS and t.allowed.excluded
    table = SimpleNamespace(items=range(N_ITEMS + 2))  # an item agent's table of 7 items
    assert item_agents.allowed_sets_of(table, t) == (
        AllowedSet(N_ITEMS, exclusions=frozenset({2})),
        AllowedSet(N_ITEMS, candidates=(0, 3)),
    )
