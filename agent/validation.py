"""Which transitions may enter the replay: finite values, within the configured bounds.

Not in the paper. A service that takes states and rewards from clients must keep a value that is finite
but absurd (a state of 3·10^38, a reward of 10^308) out of the replay: one such row makes Q, the TD
errors and the gradient non-finite, and because demonstrations and stored live transitions are loaded
again after a restart, it would poison every later learner too. The checks here are on the values as the
replay stores them (float32): a reward of 10^308 is finite as a Python float but infinite once stored.

- :func:`validate_transitions`: a mask of the valid rows of a batch, for callers that quarantine the
  others (a service loading stored transitions).
- :func:`transition_problem`: why one transition is invalid (a message naming the field), or None; what
  :meth:`agent.DQfDAgent.observe` raises.

The bounds are :attr:`agent.DQfDConfig.max_abs_state` and :attr:`agent.DQfDConfig.max_abs_reward`
(None: any value that is finite as a float32). See docs/algorithm.md, "Defence against poisoned data".
"""

from __future__ import annotations

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest finite float32 (about 3.4·10^38): larger magnitudes become ±∞ when stored."""


def as_stored_states(states: np.ndarray) -> np.ndarray:
    """States as the replay stores them (float32); values beyond float32's range become ±∞ (no warning)."""
    with np.errstate(over="ignore"):
        return np.asarray(states, dtype=np.float32)


def valid_states(states: np.ndarray, max_abs_state: float | None = None) -> np.ndarray:
    """Per row of float32 states (N, d): every feature finite and, with a bound, |x| ≤ ``max_abs_state``."""
    if max_abs_state is None:
        return np.isfinite(states).all(axis=1)
    return (np.abs(states) <= max_abs_state).all(axis=1)  # NaN and ±∞ compare False


def valid_rewards(rewards: np.ndarray, max_abs_reward: float | None = None) -> np.ndarray:
    """Per reward: finite as a float32 and, with a bound, |r| ≤ ``max_abs_reward``."""
    limit = FLOAT32_MAX if max_abs_reward is None else min(float(max_abs_reward), FLOAT32_MAX)
    return np.abs(np.asarray(rewards, dtype=np.float64)) <= limit  # NaN compares False


def validate_transitions(
    states: np.ndarray,
    rewards: np.ndarray,
    next_states: np.ndarray | None = None,
    *,
    max_abs_state: float | None = None,
    max_abs_reward: float | None = None,
) -> np.ndarray:
    """Mask of the valid rows: bool (N,), True where the state, the reward and (when given) the next
    state are finite as float32 and within the bounds (None: no bound beyond float32's range).

    Args:
        states: (N, d).
        rewards: (N,).
        next_states: (N, d), for explicit transitions; demonstration rows take their next state from the
            following row, which this mask covers as that row's state.
    """
    states = as_stored_states(states)
    if states.ndim != 2:
        raise ValueError(f"states must have shape (N, d), got {states.shape}")
    rewards = np.asarray(rewards)
    if rewards.shape != (states.shape[0],):
        raise ValueError(f"rewards must have shape ({states.shape[0]},), got {rewards.shape}")
    valid = valid_states(states, max_abs_state) & valid_rewards(rewards, max_abs_reward)
    if next_states is not None:
        next_states = as_stored_states(next_states)
        if next_states.shape != states.shape:
            raise ValueError(f"next_states must have shape {states.shape}, got {next_states.shape}")
        valid &= valid_states(next_states, max_abs_state)
    return valid


def state_problem(state: np.ndarray, name: str, max_abs_state: float | None = None) -> str | None:
    """Why one float32 state is invalid, as ``"<name>: ..."``, or None when it is valid."""
    state = as_stored_states(state).reshape(-1)
    finite = np.isfinite(state)
    if not finite.all():
        feature = int(np.flatnonzero(~finite)[0])
        return f"{name}: feature {feature} is {state[feature]} as float32 (states must be finite)"
    if max_abs_state is not None:
        beyond = np.abs(state) > max_abs_state
        if beyond.any():
            feature = int(np.flatnonzero(beyond)[0])
            return (
                f"{name}: feature {feature} is {state[feature]:g}, beyond max_abs_state = {max_abs_state:g}"
            )
    return None


def reward_problem(reward: float, name: str = "reward", max_abs_reward: float | None = None) -> str | None:
    """Why one reward is invalid, as ``"<name>: ..."``, or None when it is valid."""
    value = float(reward)
    if not abs(value) <= FLOAT32_MAX:
        return (
            f"{name}: {value:g} is not finite as float32 (rewards must be finite, |r| <= {FLOAT32_MAX:.4g})"
        )
    if max_abs_reward is not None and abs(value) > max_abs_reward:
        return f"{name}: {value:g} is beyond max_abs_reward = {max_abs_reward:g}"
    return None


def transition_problem(
    state: np.ndarray,
    reward: float,
    next_state: np.ndarray | None = None,
    *,
    max_abs_state: float | None = None,
    max_abs_reward: float | None = None,
) -> str | None:
    """Why one transition may not enter the replay (a message that starts with the field: ``state``,
    ``reward`` or ``next_state``), or None when it may."""
    return (
        state_problem(state, "state", max_abs_state)
        or reward_problem(reward, "reward", max_abs_reward)
        or (None if next_state is None else state_problem(next_state, "next_state", max_abs_state))
    )
