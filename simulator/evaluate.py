"""Rolling out policies and measuring session returns.

``python -m simulator.evaluate --sessions 500 --seed 0`` prints the mean session return of the
expert, random and oracle policies (the numbers quoted in ``docs/simulator.md``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from simulator.config import SimulatorConfig
from simulator.env import RecommendationEnv
from simulator.policies import POLICY_NAMES, Policy, make_policy

PolicyLike = str | Policy | Callable[[RecommendationEnv], Policy]


@dataclass
class Episode:
    """One session: observations before each step, actions, propensities, rewards and masks."""

    states: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    propensities: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    end_reason: str = ""

    @property
    def session_return(self) -> float:
        """Sum of rewards (undiscounted): the engagement of the session."""
        return float(sum(self.rewards))

    def __len__(self) -> int:
        return len(self.actions)


def session_seeds(seed: int, n_sessions: int) -> list[int]:
    """Per-session env seeds derived from one master seed (the same for every policy)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n_sessions, dtype=np.uint32)]


def resolve_policy(policy: PolicyLike, env: RecommendationEnv) -> Policy:
    """A :class:`Policy` from a name, an instance, or a factory ``env -> Policy``."""
    if isinstance(policy, str):
        return make_policy(policy, env)
    if isinstance(policy, Policy):
        return policy
    return policy(env)


def rollout(env: RecommendationEnv, policy: Policy, env_seed: int, rng: np.random.Generator) -> Episode:
    """Run one session of ``policy`` in ``env`` from ``reset(seed=env_seed)``."""
    obs, info = env.reset(seed=env_seed)
    episode = Episode()
    while True:
        mask = info["action_mask"]
        action, propensity = policy.act(obs, mask, rng)
        episode.states.append(obs)
        episode.masks.append(mask)
        episode.actions.append(action)
        episode.propensities.append(propensity)
        obs, reward, terminated, truncated, info = env.step(action)
        episode.rewards.append(float(reward))
        if terminated or truncated:
            episode.terminated, episode.truncated = bool(terminated), bool(truncated)
            episode.end_reason = info.get("end_reason", "")
            return episode


def run_sessions(
    policy: PolicyLike, n_sessions: int, seed: int = 0, config: SimulatorConfig | None = None
) -> list[Episode]:
    """``n_sessions`` sessions of ``policy``; user ``k`` is drawn from ``session_seeds(seed, n)[k]`` so
    different policies face the same users. The policy's own randomness comes from ``seed`` too."""
    env = RecommendationEnv(config)
    pol = resolve_policy(policy, env)
    rng = np.random.default_rng([seed, 1])
    return [rollout(env, pol, s, rng) for s in session_seeds(seed, n_sessions)]


def summarize(episodes: list[Episode]) -> dict[str, float]:
    """Mean session return with a 95% normal CI half-width, mean length, and end-reason shares."""
    returns = np.array([e.session_return for e in episodes])
    lengths = np.array([len(e) for e in episodes])
    n = len(episodes)
    reasons = [e.end_reason for e in episodes]
    return {
        "sessions": n,
        "mean_return": float(returns.mean()),
        "ci95": float(1.96 * returns.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "mean_length": float(lengths.mean()),
        "click_rate": float(returns.sum() / max(lengths.sum(), 1)),
        "share_budget": reasons.count("budget") / n,
        "share_left": reasons.count("left") / n,
        "share_truncated": reasons.count("max_length") / n,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: print a table of session returns for the reference policies."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-items", type=int, default=None, help="catalogue size (default: config)")
    parser.add_argument("--policies", nargs="+", default=list(POLICY_NAMES), choices=POLICY_NAMES)
    args = parser.parse_args(argv)
    config = SimulatorConfig() if args.n_items is None else SimulatorConfig(n_items=args.n_items)
    print(
        f"{'policy':8s} {'return':>8s} {'±95%':>6s} {'length':>7s} {'click':>6s} "
        f"{'budget':>7s} {'left':>6s} {'trunc':>6s}"
    )
    for name in args.policies:
        s = summarize(run_sessions(name, args.sessions, args.seed, config))
        print(
            f"{name:8s} {s['mean_return']:8.2f} {s['ci95']:6.2f} {s['mean_length']:7.1f} "
            f"{s['click_rate']:6.3f} {s['share_budget']:7.2f} {s['share_left']:6.2f} "
            f"{s['share_truncated']:6.2f}"
        )


if __name__ == "__main__":
    main()
