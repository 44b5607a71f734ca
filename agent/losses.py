"""The four losses of DQfD ([DQfD] Sec. 3, Eq. 2 and 3), each on its own and per sample.

J(Q) = J_DQ(Q) + λ1·J_n(Q) + λ2·J_E(Q) + λ3·J_L2(Q)

- J_DQ and J_n: double-DQN TD losses (van Hasselt et al. 2016): the online network picks the argmax at
  the bootstrap state, the target network evaluates it.
- J_E: the large-margin classification loss max_a [Q(s,a) + l(a_E,a)] − Q(s,a_E), linear (not squared),
  on demonstration transitions only.
- J_L2: λ3·Σθ² over the online network's weights and biases, a loss term (not decoupled weight decay).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def masked(q: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Q-values with disallowed actions set to −∞, so they never win a max or an argmax."""
    if mask is None:
        return q
    return q.masked_fill(~mask, float("-inf"))


def double_dqn_bootstrap(
    next_q_online: torch.Tensor, next_q_target: torch.Tensor, next_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Q_target(s', argmax_a Q_online(s', a)) per sample, the argmax taken over allowed actions only.

    Example from the tests: online [1, 3] and target [5, 2] give 2 (the online net picks action 1).
    """
    best = masked(next_q_online, next_mask).argmax(dim=1, keepdim=True)
    return next_q_target.gather(1, best).squeeze(1)


def td_targets(rewards: torch.Tensor, discounts: torch.Tensor, bootstrap: torch.Tensor) -> torch.Tensor:
    """y = R + γ^k · bootstrap, where ``discounts`` already holds γ^k (0 after a terminal transition).

    Where the discount is 0 the bootstrap is dropped entirely, so a meaningless bootstrap state (after a
    terminal transition) cannot leak in, not even as NaN·0.
    """
    return rewards + torch.where(discounts > 0, discounts * bootstrap, torch.zeros_like(bootstrap))


def td_loss(q_taken: torch.Tensor, targets: torch.Tensor, kind: str = "huber") -> torch.Tensor:
    """Per-sample TD loss: Huber with δ = 1 ([DQN] error clipping) or half the squared error."""
    if kind == "huber":
        return F.smooth_l1_loss(q_taken, targets, reduction="none", beta=1.0)
    if kind == "squared":
        return 0.5 * (q_taken - targets).pow(2)
    raise ValueError(f"unknown TD loss {kind!r}")


def margin_loss(
    q: torch.Tensor,
    expert_actions: torch.Tensor,
    margin: float = 0.8,
    mask: torch.Tensor | None = None,
    is_demo: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample J_E = max_a [Q(s,a) + l(a_E,a)] − Q(s,a_E), with l = margin for a ≠ a_E and 0 for a_E.

    Args:
        q: Q(s, ·), shape (B, A).
        expert_actions: a_E, int64 (B,).
        margin: l for a ≠ a_E ([DQfD] supplementary list: 0.8).
        mask: allowed actions at s, bool (B, A); a disallowed action never sets the max.
        is_demo: bool (B,); samples that are not demonstrations get exactly 0 loss and 0 gradient.

    Example from the tests: Q = [2, 1, 0] with a_E = 1 gives 2.8 − 1 = 1.8.
    """
    expert = expert_actions.long().unsqueeze(1)
    margins = torch.full_like(q, float(margin)).scatter(1, expert, 0.0)
    augmented = masked(q + margins, mask)
    loss = augmented.max(dim=1).values - q.gather(1, expert).squeeze(1)
    if is_demo is not None:
        loss = torch.where(is_demo, loss, torch.zeros_like(loss))
    return loss


def l2_loss(parameters: Iterable[torch.nn.Parameter], coefficient: float) -> torch.Tensor:
    """λ3 · Σθ² over the given parameters (weights and biases alike)."""
    return coefficient * sum(p.pow(2).sum() for p in parameters)
