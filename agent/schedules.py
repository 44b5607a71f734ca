"""Schedules of the online phase that are not in the DQfD paper (docs/algorithm.md, "Beyond the paper")."""

from __future__ import annotations


def decayed_margin_weight(
    lambda_margin: float, n_demonstrations: int, n_agent: int, demo_ratio: float | None
) -> float:
    """λ2 · N / (N + n_agent) with N = ``demo_ratio`` · ``n_demonstrations``; λ2 itself when
    ``demo_ratio`` is None (the paper) or the agent has no data of its own yet.

    Hyperbolic rather than linear-to-zero: at ratio 1 the weight is the demonstrations' share of all the
    transitions seen, so the demonstrator's pull shrinks in proportion to the evidence against it and
    never needs an end point. With no demonstrations there is no J_E to weight (0 once the agent acts).

    Example from the tests: λ2 = 1, 1,000 demonstrations, ratio 1 and 3,000 agent transitions give 0.25.
    """
    if demo_ratio is None or n_agent <= 0:
        return float(lambda_margin)
    scale = demo_ratio * n_demonstrations
    if scale <= 0.0:
        return 0.0
    return float(lambda_margin) * scale / (scale + n_agent)
