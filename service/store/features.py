"""Compact storage of state features and masks: float32 / bool bytes, decoded straight into NumPy."""

from __future__ import annotations

from collections.abc import Sequence

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


def encode_mask(mask: np.ndarray | None) -> bytes | None:
    """A boolean action mask as bytes (None stays None = every active action allowed)."""
    return None if mask is None else np.packbits(np.asarray(mask, dtype=bool)).tobytes()


def decode_mask(blob: bytes | None, n_actions: int) -> np.ndarray | None:
    """The boolean mask stored by :func:`encode_mask`."""
    if blob is None:
        return None
    return np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=n_actions).astype(bool)
