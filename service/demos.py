"""Loads logged interactions from the database into NumPy arrays for the demonstration buffer."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, func, select

from service.catalogue import Catalogue
from service.features import decode_states
from service.models import LoggedInteraction


@dataclass
class Demonstrations:
    """Demonstration arrays in episode order: rows of one episode contiguous and sorted by step."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    episode_ids: np.ndarray
    masks: np.ndarray | None

    def __len__(self) -> int:
        return len(self.actions)


def count_demonstrations(engine: Engine) -> int:
    """Number of logged interactions stored."""
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(LoggedInteraction)) or 0)


def load_demonstrations(
    engine: Engine, catalogue: Catalogue, state_dim: int, chunk_rows: int = 50_000
) -> Demonstrations:
    """All logged interactions, streamed in chunks straight into preallocated arrays.

    Memory stays near the raw array bytes: states arrive as float32 blobs and are copied once into
    the (N, state_dim) array. ``masks`` is built only when some row carries ``allowed_items``.
    """
    n = count_demonstrations(engine)
    states = np.empty((n, state_dim), dtype=np.float32)
    actions = np.empty(n, dtype=np.int64)
    rewards = np.empty(n, dtype=np.float32)
    dones = np.empty(n, dtype=bool)
    episode_ids = np.empty(n, dtype=np.int64)
    masks: np.ndarray | None = None
    index = catalogue.index
    row = 0
    episode = -1
    last_session: object = None
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
        while row < n:
            chunk = cursor.fetchmany(min(chunk_rows, n - row))
            if not chunk:
                break
            m = len(chunk)
            session_ids, blobs, item_ids, reward_values, done_values, allowed = zip(*chunk, strict=True)
            states[row : row + m] = decode_states([bytes(b) for b in blobs], state_dim)
            actions[row : row + m] = [index[item] for item in item_ids]
            rewards[row : row + m] = reward_values
            dones[row : row + m] = done_values
            # Rows arrive sorted by session: a new episode starts wherever the session id changes.
            sessions = np.array(session_ids, dtype=object)
            starts = np.empty(m, dtype=bool)
            starts[0] = sessions[0] != last_session
            starts[1:] = sessions[1:] != sessions[:-1]
            episode_ids[row : row + m] = episode + np.cumsum(starts)
            episode += int(starts.sum())
            last_session = sessions[-1]
            for offset, items in enumerate(allowed):
                if isinstance(items, str | bytes):  # SQLite hands JSON back as text
                    items = json.loads(items)
                if items is None:  # SQL NULL or JSON null: every item allowed
                    continue
                if masks is None:
                    masks = np.ones((n, catalogue.n_actions), dtype=bool)
                masks[row + offset] = False
                masks[row + offset, [index[item] for item in items]] = True
            row += m
        cursor.close()
        raw.commit()
    finally:
        raw.close()
    return Demonstrations(
        states[:row],
        actions[:row],
        rewards[:row],
        dones[:row],
        episode_ids[:row],
        masks[:row] if masks is not None else None,
    )
