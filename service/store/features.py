"""Compact storage of state features and masks: float32 bytes, and masks as sorted index lists (allowed or
excluded items, whichever is shorter), decoded straight into NumPy."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

FEATURE_DTYPE = np.dtype("<f4")


def encode_state(state: Sequence[float] | np.ndarray) -> bytes:
    """Little-endian float32 bytes of one state vector."""
    return np.asarray(state, dtype=FEATURE_DTYPE).tobytes()


def decode_state(blob: bytes) -> np.ndarray:
    """One state vector from its bytes (float32)."""
    return np.frombuffer(blob, dtype=FEATURE_DTYPE).astype(np.float32)


def decode_states(blobs: Sequence[bytes | memoryview], state_dim: int) -> np.ndarray:
    """A (N, state_dim) float32 array from N state blobs, in one copy."""
    if not blobs:
        return np.zeros((0, state_dim), dtype=np.float32)
    joined = b"".join(blobs)
    if len(joined) != len(blobs) * state_dim * FEATURE_DTYPE.itemsize:
        raise ValueError(f"stored states do not all have {state_dim} features")
    # A read-only view of the joined bytes: callers copy it once into their own array.
    return (
        np.frombuffer(joined, dtype=FEATURE_DTYPE)
        .reshape(len(blobs), state_dim)
        .astype(np.float32, copy=False)
    )


MASK_ALLOWED = 1
"""Format tag of a stored mask that lists the allowed items."""
MASK_EXCLUDED = 2
"""Format tag of a stored mask that lists the excluded items of ``[0, n)``."""
MASK_HEADER = struct.Struct("<BI")
"""A stored mask's header: its format tag (uint8) and ``n``, the catalogue size the decision saw (uint32)."""
MASK_INDEX_DTYPE = np.dtype("<i4")


class StoredMask(NamedTuple):
    """A decoded mask in its compact form: the items allowed among the first ``n`` of the catalogue (the
    ones the decision saw) are ``indices`` (``excluded`` false) or every item of ``[0, n)`` but
    ``indices`` (``excluded`` true). ``indices`` are sorted int64."""

    n: int
    indices: np.ndarray
    excluded: bool

    def dense(self, n_actions: int) -> np.ndarray:
        """The dense bool mask over ``n_actions`` items: items from ``n`` on were not in the catalogue
        the decision saw, so they are not allowed; a mask longer than ``n_actions`` is cut."""
        mask = np.zeros(n_actions, dtype=bool)
        if self.excluded:
            mask[: min(self.n, n_actions)] = True
            mask[self.indices[self.indices < n_actions]] = False
        else:
            mask[self.indices[self.indices < n_actions]] = True
        return mask


def encode_mask(mask: np.ndarray | None) -> bytes | None:
    """A boolean action mask as a compact blob (None stays None = every active action allowed).

    The blob is :data:`MASK_HEADER` (format tag, ``n = len(mask)``) then the allowed or the excluded
    indices, whichever list is shorter (a tie: the excluded), as sorted little-endian int32 (issue 15: a
    dense mask over 100,000 items costs 12.5 kB, "all active but 3" costs 17 bytes this way).
    """
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    n = int(mask.shape[0])
    n_allowed = int(np.count_nonzero(mask))
    if n_allowed < n - n_allowed:  # a tie lists the exclusions, as agent.item_replay.allowed_from_mask
        tag, indices = MASK_ALLOWED, np.flatnonzero(mask)
    else:
        tag, indices = MASK_EXCLUDED, np.flatnonzero(~mask)
    return MASK_HEADER.pack(tag, n) + indices.astype(MASK_INDEX_DTYPE).tobytes()


def decode_allowed(blob: bytes | None) -> StoredMask | None:
    """The compact form of a blob stored by :func:`encode_mask` (None stays None)."""
    if blob is None:
        return None
    blob = bytes(blob)
    if len(blob) < MASK_HEADER.size or (len(blob) - MASK_HEADER.size) % MASK_INDEX_DTYPE.itemsize:
        raise ValueError(f"a stored mask of {len(blob)} bytes is not in the compact format")
    tag, n = MASK_HEADER.unpack_from(blob)
    if tag not in (MASK_ALLOWED, MASK_EXCLUDED):
        raise ValueError(f"unknown stored mask format {tag}")
    indices = np.frombuffer(blob, dtype=MASK_INDEX_DTYPE, offset=MASK_HEADER.size).astype(np.int64)
    if indices.size and (indices[0] < 0 or indices[-1] >= n or np.any(np.diff(indices) <= 0)):
        raise ValueError(f"a stored mask's indices are not sorted, unique and below its {n} items")
    return StoredMask(int(n), indices, tag == MASK_EXCLUDED)


def decode_mask(blob: bytes | None, n_actions: int) -> np.ndarray | None:
    """The dense boolean mask over ``n_actions`` items of a blob stored by :func:`encode_mask` (see
    :meth:`StoredMask.dense`)."""
    stored = decode_allowed(blob)
    return None if stored is None else stored.dense(n_actions)
