"""The dueling Q-network ([Dueling] Eq. 9) over feature vectors.

A shared MLP trunk (ReLU), then a value stream V(s) and an advantage stream A(s, a), combined as
Q(s, a) = V(s) + A(s, a) − mean_a' A(s, a'). The paper's network is the convolutional Atari one; with
feature-vector states the trunk is an MLP and each stream is one linear layer (docs/algorithm.md).
The two linear streams are stored as one ``head`` layer whose first output is V and the rest A: the
same function and parameters as two separate layers, with one matrix product instead of two.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DuelingQNetwork(nn.Module):
    """Q(s, ·) for a batch of feature vectors."""

    def __init__(self, state_dim: int, n_actions: int, hidden_sizes: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = state_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1 + n_actions)
        """Row 0: the value stream V(s); rows 1..n_actions: the advantage stream A(s, ·)."""

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Q-values, shape (B, n_actions)."""
        out = self.head(self.trunk(states))
        value, advantage = out[:, :1], out[:, 1:]
        return value + advantage - advantage.mean(dim=1, keepdim=True)
