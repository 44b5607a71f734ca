"""Hyperparameters of DQfD, one dataclass with the paper's defaults.

References used in the field docstrings:

- [DQfD] Hester et al., "Deep Q-learning from Demonstrations", AAAI 2018, arXiv 1704.03732v4
  (main text, and the supplementary "Experimental Setup" list).
- [PER] Schaul et al., "Prioritized Experience Replay", ICLR 2016, arXiv 1511.05952.
- [DQN] Mnih et al., "Human-level control through deep reinforcement learning", Nature 2015.
- [Dueling] Wang et al., "Dueling Network Architectures for Deep RL", ICML 2016.

Values the paper does not give are marked "choice" and explained in docs/algorithm.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class DQfDConfig:
    """All hyperparameters of a :class:`agent.DQfDAgent`."""

    # ---- loss J(Q) = J_DQ + λ1·J_n + λ2·J_E + λ3·J_L2 ------------------------------------------------
    gamma: float = 0.99
    """Discount factor γ. [DQfD] supplementary list, γ = 0.99."""

    n_step: int = 10
    """Steps n of the forward-view n-step return in J_n. [DQfD] Sec. 3 and supplementary, n = 10."""

    lambda_n: float = 1.0
    """λ1, weight of the n-step TD loss J_n. [DQfD] supplementary list, λ1 = 1.0."""

    lambda_margin: float = 1.0
    """λ2, weight of the supervised large-margin loss J_E. [DQfD] supplementary list, λ2 = 1.0."""

    lambda_l2: float = 1e-5
    """λ3, weight of the L2 penalty Σθ² on the online network. [DQfD] supplementary list, λ3 = 10^-5."""

    margin: float = 0.8
    """Expert margin l(a_E, a) for a ≠ a_E (0 for a = a_E). [DQfD] supplementary list, 0.8."""

    q_filter: bool = False
    """Q-filter on J_E in the online phase: the margin loss of a demonstration sample counts only while
    Q(s, a_E) ≥ max over allowed a of Q(s, a), both from the online network, the test outside the
    gradient. Not in [DQfD] (False keeps the paper's J_E on every demonstration): Nair et al. 2018,
    "Overcoming exploration in reinforcement learning with demonstrations", arXiv 1709.10089, Sec. 4
    (behaviour cloning only where Q(s, a_E) > Q(s, π(s)); with the greedy policy of DQfD, π(s) is the
    argmax, and a tie is not "below"). Pretraining updates (``demo_only``) keep J_E unfiltered: with no
    agent data, the other actions' values are untrained extrapolation. See docs/algorithm.md."""

    margin_decay_demo_ratio: float | None = None
    """Decay of λ2 as the agent's own data grows, in online updates: λ2 · N / (N + n_agent), with
    N = this ratio × the demonstration transitions in the replay and n_agent the agent transitions
    observed so far (:attr:`DQfDAgent.n_observed`). None keeps λ2 fixed, as [DQfD]. Not in the paper:
    at ratio 1 the weight is the demonstrations' share of all transitions seen, halving when the agent
    has gathered as many transitions as were demonstrated. See docs/algorithm.md."""

    td_loss: str = "huber"
    """Per-sample TD loss, "huber" (δ = 1) or "squared". Choice: [DQN] clips the TD error to [-1, 1],
    which is the Huber loss; the DQfD paper does not restate it. See docs/algorithm.md."""

    # ---- prioritized replay ---------------------------------------------------------------------------
    priority_alpha: float = 0.4
    """α in P(i) = p_i^α / Σ_k p_k^α. [DQfD] supplementary list, α = 0.4."""

    priority_beta_start: float = 0.6
    """Initial importance-sampling exponent β0, annealed linearly to 1. [DQfD] supplementary, β0 = 0.6."""

    priority_beta_end: float = 1.0
    """Final importance-sampling exponent. [PER] Sec. 3.4 anneals β to 1 at the end of learning."""

    priority_beta_anneal_updates: int = 1_000_000
    """Updates over which β goes from β0 to its end value. Choice: the paper does not give the
    schedule length; 10^6 covers the 750,000 pretraining updates and the start of online learning."""

    demo_priority_bonus: float = 1.0
    """ε_d, added to |δ| for demonstration transitions. [DQfD] supplementary list, ε_d = 1.0."""

    agent_priority_bonus: float = 0.001
    """ε_a, added to |δ| for agent transitions. [DQfD] supplementary list, ε_a = 0.001."""

    replay_capacity: int = 1_000_000
    """Capacity of the agent (self-generated) part of the replay; demonstrations are stored apart
    and never evicted. [DQfD] Sec. 3: replay buffer of "fixed size"; 10^6 as in [DQN]."""

    # ---- optimisation -------------------------------------------------------------------------------
    batch_size: int = 32
    """Transitions per mini-batch. Choice: 32 as in [DQN] and [PER]; the DQfD paper does not restate it."""

    learning_rate: float = 1e-4
    """Adam step size. Choice (the paper does not give it): see docs/algorithm.md."""

    adam_eps: float = 1e-8
    """Adam ε. Choice: PyTorch's default; see docs/algorithm.md."""

    max_grad_norm: float | None = 10.0
    """Clip the global gradient norm to this value; None disables. Choice: [Dueling] Sec. 4.2 clips
    gradients to norm 10, and PDD DQN is the paper's base learner."""

    target_update_period: int = 10_000
    """Updates between hard copies of the online network into the target network, in both phases.
    [DQfD] supplementary list, every 10,000 steps."""

    pretrain_steps: int = 750_000
    """Default number of pretraining updates for :meth:`DQfDAgent.pretrain`. [DQfD] Sec. 4,
    750,000 mini-batch updates."""

    # ---- network --------------------------------------------------------------------------------------
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the shared trunk of the dueling MLP. Choice: the paper's Atari network is
    convolutional; feature-vector states get an MLP (docs/algorithm.md)."""

    # ---- acting ---------------------------------------------------------------------------------------
    epsilon: float = 0.01
    """ε of ε-greedy acting. [DQfD] Sec. 4: ε = 0.01 for DQfD online (0 means fully greedy)."""

    reward_transform: bool = False
    """Apply sign(r)·log(1+|r|) to rewards in the targets. [DQfD] Sec. 4 (Atari); off by default."""

    device: str = "cpu"
    """Torch device of the networks."""

    # ---- defence against poisoned data (not in the paper; docs/algorithm.md) -----------------------------
    max_abs_state: float | None = None
    """Largest |feature| of a state the replay accepts: a demonstration row or an observed transition whose
    state or next state has a feature beyond it is rejected (:mod:`agent.validation`). None: any value
    that is finite as a float32. Choice, not in the paper: a service that takes states from clients sets
    it, since a finite but huge state (3·10^38) overflows the network and stays in the replay."""

    max_abs_reward: float | None = None
    """Largest |reward| the replay accepts, as :attr:`max_abs_state`. None: any reward that is finite as a
    float32 (10^308 is not). Choice, not in the paper; a service sets it."""

    diverged_after_skipped_updates: int = 100
    """:attr:`DQfDAgent.diverged` turns true after this many consecutive updates were skipped for a
    non-finite loss or gradient. Choice: each skip quarantines the rows that caused it, so a learner that
    still skips 100 updates in a row is stuck."""

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        checks: list[tuple[bool, str]] = [
            (0.0 <= self.gamma <= 1.0, "gamma must be in [0, 1]"),
            (self.n_step >= 1, "n_step must be >= 1"),
            (self.margin >= 0.0, "margin must be >= 0"),
            (
                self.margin_decay_demo_ratio is None or self.margin_decay_demo_ratio > 0.0,
                "margin_decay_demo_ratio must be > 0 or None",
            ),
            (self.td_loss in ("huber", "squared"), "td_loss must be 'huber' or 'squared'"),
            (self.priority_alpha >= 0.0, "priority_alpha must be >= 0"),
            (0.0 <= self.priority_beta_start <= 1.0, "priority_beta_start must be in [0, 1]"),
            (0.0 <= self.priority_beta_end <= 1.0, "priority_beta_end must be in [0, 1]"),
            (self.priority_beta_anneal_updates >= 1, "priority_beta_anneal_updates must be >= 1"),
            (self.demo_priority_bonus > 0.0, "demo_priority_bonus must be > 0"),
            (self.agent_priority_bonus > 0.0, "agent_priority_bonus must be > 0"),
            (self.replay_capacity >= 2, "replay_capacity must be >= 2"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.learning_rate > 0.0, "learning_rate must be > 0"),
            (self.target_update_period >= 1, "target_update_period must be >= 1"),
            (self.pretrain_steps >= 0, "pretrain_steps must be >= 0"),
            (len(self.hidden_sizes) >= 1 and min(self.hidden_sizes) >= 1, "hidden_sizes must be positive"),
            (0.0 <= self.epsilon <= 1.0, "epsilon must be in [0, 1]"),
            (self.max_abs_state is None or self.max_abs_state > 0.0, "max_abs_state must be > 0 or None"),
            (self.max_abs_reward is None or self.max_abs_reward > 0.0, "max_abs_reward must be > 0 or None"),
            (self.diverged_after_skipped_updates >= 1, "diverged_after_skipped_updates must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON- and ``torch.load(weights_only=True)``-safe)."""
        data = asdict(self)
        data["hidden_sizes"] = list(self.hidden_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DQfDConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError`` so typos never pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TypeError(f"unknown DQfDConfig fields: {sorted(unknown)}")
        return cls(**data)
