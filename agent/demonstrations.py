"""Validation of demonstration data and its layout into replay slots (see :mod:`agent.nstep`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from agent.replay import Demonstrations
from agent.validation import as_stored_states, reward_problem, state_problem, valid_rewards, valid_states


class Episode(NamedTuple):
    """One demonstration episode: T steps, each a state, the demonstrator's action and its reward."""

    states: np.ndarray
    """float (T, state_dim)."""
    actions: np.ndarray
    """int (T,)."""
    rewards: np.ndarray
    """float (T,)."""
    terminated: bool
    """The episode ended in a terminal state after its last step (no bootstrap there)."""
    final_state: np.ndarray | None = None
    """For an episode that did not terminate, the observation after its last step; without it the last
    step cannot be bootstrapped and only its state is kept."""
    masks: np.ndarray | None = None
    """Allowed actions at each state, bool (T, n_actions)."""
    final_mask: np.ndarray | None = None
    """Allowed actions at ``final_state``."""


class Layout(NamedTuple):
    """Demonstration rows laid out as replay slots, and how many rows were rejected."""

    demonstrations: Demonstrations
    rejected: int
    """Rows left out for an invalid state or reward (``skip_invalid``); 0 otherwise."""


def layout_arrays(
    states: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    dones: np.ndarray,
    episode_ids: np.ndarray | None,
    masks: np.ndarray | None,
    state_dim: int,
    n_actions: int,
    max_abs_state: float | None = None,
    max_abs_reward: float | None = None,
    skip_invalid: bool = False,
) -> Layout:
    """Check rows of demonstration data and lay them out as replay slots, without copying states.

    Rows of one episode must be contiguous and in step order; the next state of a row is the state of the
    following row of the same episode. Without ``episode_ids``, episodes are split after each ``done``.
    An episode whose last row is not ``done`` was cut short: its last row's state stays as the episode's
    final observation (a bootstrap state for the rows before it), and that row is not itself a transition.

    A row is invalid when its state or its reward is not finite as a float32 or beyond the bounds
    (:mod:`agent.validation`). Without ``skip_invalid`` the first one raises ``ValueError`` (row and
    field named). With it, an invalid row cuts its episode, as if the log had stopped there: the rows
    before it end in a state-only slot, so no n-step window crosses it, and the rows after it start a new
    piece. A row whose reward alone is invalid keeps its state as that final slot (the row before it still
    has its next state); a row whose state is invalid is left out, and the row before it, which has then no
    usable next state, becomes the final state-only slot in its place.
    """
    states = as_stored_states(states)
    n = states.shape[0]
    if states.ndim != 2 or states.shape[1] != state_dim:
        raise ValueError(f"states must have shape (N, {state_dim}), got {states.shape}")
    actions = _column(actions, n, "actions").astype(np.int64)
    raw_rewards = _column(rewards, n, "rewards")
    dones = _column(dones, n, "dones").astype(bool)
    if n and (actions.min() < 0 or actions.max() >= n_actions):
        raise ValueError(f"actions must be in [0, {n_actions})")
    state_ok = valid_states(states, max_abs_state)
    reward_ok = valid_rewards(raw_rewards, max_abs_reward)
    valid = state_ok & reward_ok
    all_valid = bool(valid.all())
    if not all_valid and not skip_invalid:
        row = int(np.flatnonzero(~valid)[0])
        problem = state_problem(states[row], "state", max_abs_state) or reward_problem(
            raw_rewards[row], "reward", max_abs_reward
        )
        raise ValueError(f"demonstration row {row}: {problem}")
    with np.errstate(over="ignore", invalid="ignore"):
        rewards = raw_rewards.astype(np.float32)

    if episode_ids is None:
        last = dones.copy()
    else:
        ids = _column(episode_ids, n, "episode_ids")
        boundary = ids[1:] != ids[:-1]
        if len(np.unique(ids)) != int(boundary.sum()) + (1 if n else 0):
            raise ValueError("rows of each episode must be contiguous (sort by episode id, then step)")
        last = np.append(boundary, True)
        if (dones & ~last).any():
            raise ValueError("done is set on a row that is not the last row of its episode")
    if n:
        last[-1] = True

    keep = None
    if not all_valid:
        # An invalid row ends its piece as a state-only slot (not done); one with an invalid state is
        # dropped and the row before it ends the piece instead. A row before one that is already last
        # ends its own episode: setting it again changes nothing.
        invalid = ~valid
        last |= invalid
        dones &= valid
        rewards[invalid] = 0.0  # a window multiplies the rewards past its end by 0: inf·0 would be NaN
        before_bad_state = np.flatnonzero(~state_ok) - 1
        last[before_bad_state[before_bad_state >= 0]] = True
        keep = state_ok

    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (n, n_actions):
            raise ValueError(f"masks must have shape (N, {n_actions}), got {masks.shape}")
        if not masks.any(axis=1).all():
            raise ValueError("every mask must allow at least one action")
    is_transition = ~(last & ~dones)
    if masks is not None and not masks[np.arange(n), actions][is_transition].all():
        raise ValueError("a demonstrated action is not allowed by its own mask")
    if keep is not None:
        states, actions, rewards, dones, is_transition = (
            a[keep] for a in (states, actions, rewards, dones, is_transition)
        )
        masks = None if masks is None else masks[keep]
    rejected = 0 if all_valid else int((~valid).sum())
    return Layout(Demonstrations(states, actions, rewards, dones, is_transition, masks), rejected)


def layout_episodes(
    episodes: Iterable[Episode],
    state_dim: int,
    n_actions: int,
    max_abs_state: float | None = None,
    max_abs_reward: float | None = None,
) -> Demonstrations:
    """Lay out whole episodes; an episode's ``final_state`` becomes its final state-only slot. An invalid
    state or reward raises ``ValueError`` (:func:`layout_arrays`)."""
    states, actions, rewards, dones, ids, masks = [], [], [], [], [], []
    any_mask = False
    for number, episode in enumerate(episodes):
        ep_states = as_stored_states(episode.states)
        steps = ep_states.shape[0]
        ep_done = np.zeros(steps, dtype=bool)
        ep_done[-1:] = episode.terminated
        ep_actions = np.asarray(episode.actions)
        ep_rewards = np.asarray(episode.rewards, dtype=np.float64)
        ep_masks = None if episode.masks is None else np.asarray(episode.masks, dtype=bool)
        if episode.final_state is not None and not episode.terminated:
            final = as_stored_states(episode.final_state).reshape(1, -1)
            ep_states = np.concatenate([ep_states, final])
            ep_actions = np.append(ep_actions, 0)
            ep_rewards = np.append(ep_rewards, 0.0)
            ep_done = np.append(ep_done, False)
            if ep_masks is not None:
                final_mask = (
                    np.ones((1, n_actions), bool) if episode.final_mask is None else episode.final_mask
                )
                ep_masks = np.concatenate([ep_masks, np.asarray(final_mask, bool).reshape(1, -1)])
        any_mask |= ep_masks is not None
        states.append(ep_states)
        actions.append(ep_actions)
        rewards.append(ep_rewards)
        dones.append(ep_done)
        ids.append(np.full(ep_states.shape[0], number))
        masks.append(ep_masks)
    if not states:
        raise ValueError("no episodes given")
    all_masks = None
    if any_mask:
        all_masks = np.concatenate(
            [
                np.ones((s.shape[0], n_actions), bool) if m is None else m
                for s, m in zip(states, masks, strict=True)
            ]
        )
    return layout_arrays(
        np.concatenate(states),
        np.concatenate(actions),
        np.concatenate(rewards),
        np.concatenate(dones),
        np.concatenate(ids),
        all_masks,
        state_dim,
        n_actions,
        max_abs_state,
        max_abs_reward,
    ).demonstrations


def _column(values: np.ndarray, n: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
    return array
