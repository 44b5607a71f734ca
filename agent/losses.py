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
    return margin_loss_and_argmax(q, expert_actions, margin, mask, is_demo)[0]


def margin_loss_and_argmax(
    q: torch.Tensor,
    expert_actions: torch.Tensor,
    margin: float = 0.8,
    mask: torch.Tensor | None = None,
    is_demo: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`margin_loss` and, per sample, the action a* that attains max_a [Q(s,a) + l(a_E,a)].

    J_E's gradient with respect to Q(s, ·) is +1 at a* and −1 at a_E (0 when a* = a_E): see
    :func:`q_gradient`. a* is the index ``max`` returns, the one autograd would route the gradient to.
    """
    expert = expert_actions.long().unsqueeze(1)
    margins = torch.full_like(q, float(margin)).scatter_(1, expert, 0.0)
    best_value, best_action = masked(q + margins, mask).max(dim=1)
    loss = best_value - q.gather(1, expert).squeeze(1)
    if is_demo is not None:
        loss = torch.where(is_demo, loss, torch.zeros_like(loss))
    return loss, best_action


def q_filter(q: torch.Tensor, expert_actions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample, whether the demonstrated action's value is not below the agent's own choice:
    Q(s, a_E) ≥ max over allowed a of Q(s, a), bool (B,).

    Nair et al. 2018 (arXiv 1709.10089, Sec. 4) apply their behaviour-cloning loss only where
    Q(s, a_E) > Q(s, π(s)); DQfD's policy is greedy in Q, so π(s) is the allowed argmax, and a tie counts
    as agreement (the demonstrated action is then one of the agent's own choices). No margin in the test:
    with it (a_E ahead by l) the filter would keep J_E only where J_E is already 0. The result is an
    indicator, outside the gradient (computed without autograd).

    Example from the tests: Q = [2, 1, 0] keeps a_E = 0 and drops a_E = 1.
    """
    with torch.no_grad():
        expert = q.gather(1, expert_actions.long().unsqueeze(1)).squeeze(1)
        return expert >= masked(q, mask).amax(dim=1)


def td_loss_derivative(errors: torch.Tensor, kind: str = "huber") -> torch.Tensor:
    """d td_loss / dQ(s, a) per sample, for TD errors δ = Q(s, a) − y: clip(δ, −1, 1) for Huber with
    δ = 1, δ itself for half the squared error (the derivatives of :func:`td_loss`)."""
    if kind == "huber":
        return errors.clamp(-1.0, 1.0)
    if kind == "squared":
        return errors
    raise ValueError(f"unknown TD loss {kind!r}")


def q_gradient(
    q: torch.Tensor,
    actions: torch.Tensor,
    margin_argmax: torch.Tensor,
    td_coefficient: torch.Tensor,
    margin_coefficient: torch.Tensor,
) -> torch.Tensor:
    """dJ/dQ(s, ·), shape (B, A), for J = Σ_i [c_i · (TD losses of Q(s_i, a_i)) + m_i · J_E,i].

    Args:
        q: Q(s, ·), for its shape and dtype.
        actions: a_i (the expert's action for demonstrations), int64 (B,).
        margin_argmax: a*_i from :func:`margin_loss_and_argmax`.
        td_coefficient: c_i = Σ_k (weight of TD loss k) · dℓ_k/dQ(s_i, a_i), (B,).
        margin_coefficient: m_i = weight of J_E for sample i (0 for non-demonstrations), (B,).

    Returns:
        c_i − m_i at a_i, plus m_i at a*_i, 0 elsewhere.
    """
    grad = torch.zeros_like(q)
    grad.scatter_add_(1, actions.long().unsqueeze(1), (td_coefficient - margin_coefficient).unsqueeze(1))
    grad.scatter_add_(1, margin_argmax.unsqueeze(1), margin_coefficient.unsqueeze(1))
    return grad


def l2_loss(parameters: Iterable[torch.nn.Parameter], coefficient: float) -> torch.Tensor:
    """λ3 · Σθ² over the given parameters (weights and biases alike)."""
    return coefficient * sum(p.pow(2).sum() for p in parameters)
