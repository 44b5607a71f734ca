"""Validation of demonstration data and its layout into replay slots (see :mod:`agent.nstep`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from agent.replay import Demonstrations


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


def layout_arrays(
    states: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    dones: np.ndarray,
    episode_ids: np.ndarray | None,
    masks: np.ndarray | None,
    state_dim: int,
    n_actions: int,
) -> Demonstrations:
    """Check rows of demonstration data and lay them out as replay slots, without copying states.

    Rows of one episode must be contiguous and in step order; the next state of a row is the state of the
    following row of the same episode. Without ``episode_ids``, episodes are split after each ``done``.
    An episode whose last row is not ``done`` was cut short: its last row's state stays as the episode's
    final observation (a bootstrap state for the rows before it), and that row is not itself a transition.
    """
    states = np.asarray(states, dtype=np.float32)
    n = states.shape[0]
    if states.ndim != 2 or states.shape[1] != state_dim:
        raise ValueError(f"states must have shape (N, {state_dim}), got {states.shape}")
    actions = _column(actions, n, "actions").astype(np.int64)
    rewards = _column(rewards, n, "rewards").astype(np.float32)
    dones = _column(dones, n, "dones").astype(bool)
    if not np.isfinite(states).all():
        raise ValueError("states contain NaN or infinite values")
    if not np.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or infinite values")
    if n and (actions.min() < 0 or actions.max() >= n_actions):
        raise ValueError(f"actions must be in [0, {n_actions})")

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

    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (n, n_actions):
            raise ValueError(f"masks must have shape (N, {n_actions}), got {masks.shape}")
        if not masks.any(axis=1).all():
            raise ValueError("every mask must allow at least one action")
    is_transition = ~(last & ~dones)
    if masks is not None and not masks[np.arange(n), actions][is_transition].all():
        raise ValueError("a demonstrated action is not allowed by its own mask")
    return Demonstrations(states, actions, rewards, dones, is_transition, masks)


def layout_episodes(episodes: Iterable[Episode], state_dim: int, n_actions: int) -> Demonstrations:
    """Lay out whole episodes; an episode's ``final_state`` becomes its final state-only slot."""
    states, actions, rewards, dones, ids, masks = [], [], [], [], [], []
    any_mask = False
    for number, episode in enumerate(episodes):
        ep_states = np.asarray(episode.states, dtype=np.float32)
        steps = ep_states.shape[0]
        ep_done = np.zeros(steps, dtype=bool)
        ep_done[-1:] = episode.terminated
        ep_actions = np.asarray(episode.actions)
        ep_rewards = np.asarray(episode.rewards, dtype=np.float32)
        ep_masks = None if episode.masks is None else np.asarray(episode.masks, dtype=bool)
        if episode.final_state is not None and not episode.terminated:
            final = np.asarray(episode.final_state, dtype=np.float32).reshape(1, -1)
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
    )


def _column(values: np.ndarray, n: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
    return array
