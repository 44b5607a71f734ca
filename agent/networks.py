"""The dueling Q-network ([Dueling] Eq. 9) over feature vectors, with its backward pass written out.

A shared MLP trunk (ReLU), then a value stream V(s) and an advantage stream A(s, a), combined as
Q(s, a) = V(s) + A(s, a) − mean_a' A(s, a'). The paper's network is the convolutional Atari one; with
feature-vector states the trunk is an MLP and each stream is one linear layer (docs/algorithm.md).
The two linear streams are stored as one ``head`` layer whose first output is V and the rest A: the
same function and parameters as two separate layers, with one matrix product instead of two.

The agent's update does not build an autograd graph: :meth:`DuelingQNetwork.forward_keeping_activations`
runs the forward pass once over the sampled states and both bootstrap states, and
:meth:`DuelingQNetwork.backward_q` backpropagates dJ/dQ of the sampled rows by hand (the chain rule
through three matrix products). The result equals autograd's (tests/agent/test_dqfd.py), at about two
thirds of the cost for networks this small, where per-operation overhead outweighs arithmetic.
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
        return _dueling(self.head(self.trunk(states)))

    @property
    def linear_layers(self) -> list[nn.Linear]:
        """The trunk's linear layers, then the head, in forward order."""
        return [m for m in self.trunk if isinstance(m, nn.Linear)] + [self.head]

    def forward_keeping_activations(self, states: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Q-values and the input of every linear layer (for :meth:`backward_q`); call under no_grad.

        The same operations as :meth:`forward` (``F.linear`` is ``addmm`` on 2-D inputs), so the values
        are identical.
        """
        layers = self.linear_layers
        inputs = [states]
        hidden = states
        for layer in layers[:-1]:
            hidden = torch.addmm(layer.bias, hidden, layer.weight.t()).clamp_min_(0.0)  # ReLU
            inputs.append(hidden)
        head = layers[-1]
        return _dueling(torch.addmm(head.bias, hidden, head.weight.t())), inputs

    def backward_q(self, inputs: list[torch.Tensor], grad_q: torch.Tensor) -> None:
        """Set every parameter's ``.grad`` to dJ/dθ, given dJ/dQ for the first ``len(grad_q)`` rows.

        Args:
            inputs: the layer inputs from :meth:`forward_keeping_activations` (rows past ``len(grad_q)``,
                e.g. bootstrap states, take no part).
            grad_q: dJ/dQ(s, ·), shape (B, n_actions).
        """
        rows = grad_q.shape[0]
        # Dueling combination: Q_a = V + A_a − mean(A)  ⇒  dJ/dV = Σ_a g_a,  dJ/dA_a = g_a − mean(g).
        grad = torch.cat([grad_q.sum(dim=1, keepdim=True), grad_q - grad_q.mean(dim=1, keepdim=True)], dim=1)
        layers = self.linear_layers
        for depth in range(len(layers) - 1, -1, -1):
            layer, layer_input = layers[depth], inputs[depth][:rows]
            layer.weight.grad = grad.t().mm(layer_input)  # y = x Wᵀ + b  ⇒  dJ/dW = gᵀ x,  dJ/db = Σ g
            layer.bias.grad = grad.sum(dim=0)
            if depth > 0:
                # dJ/dx = g W, through the ReLU that produced x: zero where it was clipped (x = 0).
                grad = grad.mm(layer.weight).mul_(layer_input > 0)


def _dueling(out: torch.Tensor) -> torch.Tensor:
    value, advantage = out[:, :1], out[:, 1:]
    return value + advantage - advantage.mean(dim=1, keepdim=True)
