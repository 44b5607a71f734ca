"""Loads logged interactions from the database into NumPy arrays for the demonstration buffer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from service.ingest.catalogue import Catalogue
from service.store.features import decode_states
from service.store.models import LoggedInteraction


@dataclass
class Demonstrations:
    """Demonstration arrays in episode order: rows of one episode contiguous and sorted by step."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    episode_ids: np.ndarray
    masks: np.ndarray | None
    allowed: list[tuple[int, ...] | None] | None = None
    """With ``compact`` loading, in place of ``masks``: each row's allowed item indices (None: every item).
    A dense mask over 100,000 items would cost 100 kB per row (service.learning.item_agents)."""

    def __len__(self) -> int:
        return len(self.actions)


def count_demonstrations(engine: Engine) -> int:
    """Number of logged interactions stored."""
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(LoggedInteraction)) or 0)


def _has_allowed_items(engine: Engine) -> bool:
    with engine.connect() as conn:
        found = conn.scalar(
            select(LoggedInteraction.id).where(LoggedInteraction.allowed_items.is_not(None)).limit(1)
        )
    return found is not None


def _fetch(
    engine: Engine,
    catalogue: Catalogue,
    state_dim: int,
    chunk_rows: int,
    with_masks: bool,
    compact: bool = False,
) -> Iterator[tuple[Any, ...]]:
    """Chunks of (states, actions, rewards, dones, new-session flags, masks or None) in episode order;
    with ``compact`` the last entry is a list of allowed index tuples (None: every item) instead."""
    index = catalogue.index
    last_session: object = None
    cut_next = False  # the previous chunk ended on a row of an item the agent does not know
    # The driver's own cursor: SQLAlchemy's per-row result processing cost several times the fetch
    # itself. On PostgreSQL a named (server-side) cursor streams the rows in chunks.
    raw = engine.raw_connection()
    try:
        postgres = engine.dialect.name == "postgresql"
        # binary=True: bytea and floats arrive without text decoding.
        cursor = raw.cursor(name="load_demonstrations", binary=True) if postgres else raw.cursor()
        if postgres:
            cursor.itersize = chunk_rows
        cursor.execute(
            "SELECT session_id, state, item_id, reward, done, allowed_items FROM logged_interactions"
            " ORDER BY session_id, step"
        )
        while True:
            chunk = cursor.fetchmany(chunk_rows)
            if not chunk:
                break
            m = len(chunk)
            session_ids, blobs, item_ids, reward_values, done_values, allowed = zip(*chunk, strict=True)
            del chunk
            states = decode_states(blobs, state_dim)  # bytes (or memoryviews) joined once
            del blobs
            actions = np.array([index.get(item, -1) for item in item_ids], dtype=np.int64)
            with np.errstate(over="ignore"):  # past float32: becomes ±inf, refused by the agent's guards
                rewards = np.array(reward_values, dtype=np.float32)
            dones = np.array(done_values, dtype=bool)
            # Rows arrive sorted by session: a new episode starts wherever the session id changes.
            sessions = np.array(session_ids, dtype=object)
            starts = np.empty(m, dtype=bool)
            starts[0] = sessions[0] != last_session
            starts[1:] = sessions[1:] != sessions[:-1]
            last_session = sessions[-1]
            starts[0] |= cut_next
            unknown = actions < 0  # only with a prefix view: items added after the agent was trained
            if unknown.any():
                # Such a row ends its episode as a state-only slot (not done, its action unused): the
                # row before it keeps its next state, and the rows after it start a new episode.
                actions[unknown] = 0
                dones = dones & ~unknown
                starts[1:] |= unknown[:-1]
            cut_next = bool(unknown[-1])
            masks = np.ones((m, catalogue.n_actions), dtype=bool) if with_masks and not compact else None
            sets: list[tuple[int, ...] | None] | None = [None] * m if with_masks and compact else None
            if masks is not None or sets is not None:
                for offset, items in enumerate(allowed):
                    if isinstance(items, str | bytes):  # SQLite hands JSON back as text
                        items = json.loads(items)
                    if items is None:  # SQL NULL or JSON null: every item allowed
                        continue
                    known = [index[item] for item in items if item in index]
                    if not known:  # none known: a state-only slot's row (above), every action allowed
                        continue
                    if sets is not None:
                        sets[offset] = tuple(known)
                    else:
                        masks[offset] = False
                        masks[offset, known] = True
            yield states, actions, rewards, dones, starts, masks if sets is None else sets
        cursor.close()
        raw.commit()
    finally:
        raw.close()


def load_demonstrations(
    engine: Engine, catalogue: Catalogue, state_dim: int, chunk_rows: int = 50_000
) -> Demonstrations:
    """All logged interactions, streamed in chunks straight into preallocated arrays.

    Memory stays near the raw array bytes: states arrive as float32 blobs and are copied once into
    the (N, state_dim) array. ``masks`` is built only when some row carries ``allowed_items``.
    """
    n = count_demonstrations(engine)
    with_masks = n > 0 and _has_allowed_items(engine)
    states = np.empty((n, state_dim), dtype=np.float32)
    actions = np.empty(n, dtype=np.int64)
    rewards = np.empty(n, dtype=np.float32)
    dones = np.empty(n, dtype=bool)
    episode_ids = np.empty(n, dtype=np.int64)
    masks = np.ones((n, catalogue.n_actions), dtype=bool) if with_masks else None
    row = 0
    episode = -1
    for s, a, r, d, starts, m in _fetch(engine, catalogue, state_dim, chunk_rows, with_masks):
        k = min(len(a), n - row)  # rows inserted after the count are left for the next load
        if k <= 0:
            break
        states[row : row + k] = s[:k]
        actions[row : row + k] = a[:k]
        rewards[row : row + k] = r[:k]
        dones[row : row + k] = d[:k]
        episode_ids[row : row + k] = episode + np.cumsum(starts[:k])
        episode += int(starts[:k].sum())
        if masks is not None and m is not None:
            masks[row : row + k] = m[:k]
        row += k
    return Demonstrations(
        states[:row],
        actions[:row],
        rewards[:row],
        dones[:row],
        episode_ids[:row],
        masks[:row] if masks is not None else None,
    )


def iter_demonstrations(
    engine: Engine, catalogue: Catalogue, state_dim: int, chunk_rows: int = 50_000, compact: bool = False
) -> Iterator[Demonstrations]:
    """The logged interactions as a stream of chunks of whole episodes (about ``chunk_rows`` rows each).

    For filling a replay chunk by chunk: peak memory is the replay plus one chunk, not a second full
    copy of every array. Episode ids are local to each chunk. ``compact``: the allowed items come as
    index tuples (``Demonstrations.allowed``), never as a dense (rows × items) mask.
    """
    with_masks = _has_allowed_items(engine)
    pending: list[tuple[Any, ...]] = []

    def join(column: tuple[Any, ...]) -> Any:
        if column[0] is None:
            return None
        return [x for part in column for x in part] if isinstance(column[0], list) else np.concatenate(column)

    def emit(parts: list[tuple[Any, ...]]) -> Demonstrations:
        s, a, r, d, starts, m = (join(column) for column in zip(*parts, strict=True))
        starts = starts.copy()
        starts[0] = True
        if isinstance(m, list):
            return Demonstrations(s, a, r, d, np.cumsum(starts) - 1, None, m)
        return Demonstrations(s, a, r, d, np.cumsum(starts) - 1, m)

    for part in _fetch(engine, catalogue, state_dim, chunk_rows, with_masks, compact):
        starts = part[4]
        boundaries = np.flatnonzero(starts)
        cut = int(boundaries[-1]) if len(boundaries) else 0  # the last episode may go on in the next chunk
        if cut > 0:
            pending.append(tuple(None if x is None else x[:cut] for x in part))
            yield emit(pending)
            pending = [tuple(None if x is None else x[cut:] for x in part)]
        else:
            pending.append(part)
    if pending:
        yield emit(pending)
