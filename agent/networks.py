"""The dueling Q-network ([Dueling] Eq. 9) over feature vectors, with its backward pass written out.

A shared MLP trunk (ReLU), then a value stream V(s) and an advantage stream A(s, a), combined as
Q(s, a) = V(s) + A(s, a) − mean_a' A(s, a'). The paper's network is the convolutional Atari one; with
feature-vector states the trunk is an MLP and each stream is one linear layer (docs/algorithm.md).
The two linear streams are stored as one ``head`` layer whose first output is V and the rest A: the
same function and parameters as two separate layers, with one matrix product instead of two.

The combination costs O(n) per state for n actions: V plus each advantage minus their mean, never a
dense (n+1)×n combination matrix (that was O(n²) memory and time: 400 MB per network at 10,000 items;
benchmarks/results/fixed_head_scaling.md).

The agent's update does not build an autograd graph: :meth:`DuelingQNetwork.forward_keeping_activations`
runs the forward pass once over the sampled states and both bootstrap states, and
:meth:`DuelingQNetwork.backward_q` backpropagates dJ/dQ of the sampled rows by hand (the chain rule
through three matrix products). The result equals autograd's (tests/agent/test_dqfd.py), at about two
thirds of the cost for networks this small, where per-operation overhead outweighs arithmetic.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
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
        self.linear_layers: list[nn.Linear] = [m for m in self.trunk if isinstance(m, nn.Linear)]
        self.linear_layers.append(self.head)
        """The trunk's linear layers, then the head, in forward order."""

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Q-values, shape (B, n_actions).

        The layers are applied with ``F.linear`` and ``torch.relu`` (what ``nn.Linear`` and ``nn.ReLU``
        call) to skip the module-call overhead, a sizeable share of a small network's forward pass.
        """
        hidden = states
        for layer in self.linear_layers[:-1]:
            hidden = torch.relu(F.linear(hidden, layer.weight, layer.bias))
        return dueling_combine(F.linear(hidden, self.head.weight, self.head.bias))

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
        return dueling_combine(torch.addmm(head.bias, hidden, head.weight.t())), inputs

    def backward_q(self, inputs: list[torch.Tensor], grad_q: torch.Tensor) -> None:
        """Set every parameter's ``.grad`` to dJ/dθ, given dJ/dQ for the first ``len(grad_q)`` rows.

        Args:
            inputs: the layer inputs from :meth:`forward_keeping_activations` (rows past ``len(grad_q)``,
                e.g. bootstrap states, take no part).
            grad_q: dJ/dQ(s, ·), shape (B, n_actions).
        """
        rows = grad_q.shape[0]
        grad = dueling_combine_backward(grad_q)
        layers = self.linear_layers
        for depth in range(len(layers) - 1, -1, -1):
            layer, layer_input = layers[depth], inputs[depth][:rows]
            # y = x Wᵀ + b  ⇒  dJ/dW = gᵀ x,  dJ/db = Σ g; written into existing gradients in place (they
            # may be views of one flat gradient, see flatten_parameters).
            if layer.weight.grad is None or layer.bias.grad is None:
                layer.weight.grad, layer.bias.grad = grad.t().mm(layer_input), grad.sum(dim=0)
            else:
                torch.mm(grad.t(), layer_input, out=layer.weight.grad)
                torch.sum(grad, dim=0, out=layer.bias.grad)
            if depth > 0:
                # dJ/dx = g W, through the ReLU that produced x: zero where it was clipped (x = 0).
                # threshold_backward is ReLU's own backward kernel: one op, no boolean mask to convert.
                grad = torch.ops.aten.threshold_backward(grad.mm(layer.weight), layer_input, 0.0)


def dueling_combine(head: torch.Tensor) -> torch.Tensor:
    """Q = V + A − mean_a A ([Dueling] Eq. 9) from the head's output [V, A], shape (B, 1 + n) → (B, n).

    O(n) per row. Written as A − (mean A − V): one mean and two subtractions, the same operations in
    :meth:`DuelingQNetwork.forward` and :meth:`DuelingQNetwork.forward_keeping_activations`, so the two
    give identical values.
    """
    advantage = head[:, 1:]
    return advantage - advantage.mean(dim=1, keepdim=True).sub_(head[:, :1])


def dueling_combine_backward(grad_q: torch.Tensor) -> torch.Tensor:
    """dJ/d[V, A] from dJ/dQ = g, shape (B, n) → (B, 1 + n): dJ/dV = Σ_a g_a and
    dJ/dA_a = g_a − mean(g) (Q_a depends on V with coefficient 1 and on A_b with 1[a = b] − 1/n)."""
    return torch.cat([grad_q.sum(dim=1, keepdim=True), grad_q - grad_q.mean(dim=1, keepdim=True)], dim=1)


def check_q_network(network: nn.Module, state_dim: int, n_actions: int) -> None:
    """Raise ``ValueError`` unless ``network`` can be the agent's Q-network: a ``torch.nn.Module`` with
    float32 parameters (one flat tensor holds them all, :func:`flatten_parameters`) that maps float32
    states (B, state_dim) to float32 Q-values (B, n_actions). The output is probed on a deep copy, so
    that the probe changes no state of the module itself (e.g. batch-norm statistics)."""
    if not isinstance(network, nn.Module):
        raise ValueError(f"network must be a torch.nn.Module, got {type(network).__name__}")
    params = list(network.parameters())
    if not params:
        raise ValueError("network has no parameters to train")
    dtypes = {p.dtype for p in params}
    if dtypes != {torch.float32}:
        raise ValueError(f"network parameters must all be float32, got {sorted(map(str, dtypes))}")
    probe = copy.deepcopy(network)
    with torch.no_grad():
        q = probe(torch.zeros(2, state_dim, device=params[0].device))
    if not isinstance(q, torch.Tensor) or tuple(q.shape) != (2, n_actions) or q.dtype != torch.float32:
        shape = f"{tuple(q.shape)} {q.dtype}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(
            f"network must map states (B, {state_dim}) to float32 Q-values (B, {n_actions}); got {shape}"
        )


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Put every parameter of ``module`` into one contiguous tensor and return it as a Parameter.

    Each parameter becomes a view of the returned tensor (same values, same state dict), and its
    ``.grad`` a view of the returned tensor's ``.grad``. Optimising the one flat tensor then updates the
    module's parameters, and the L2 term, the gradient norm and Adam each take one operation over all
    weights instead of one per tensor: at batch 32 on a CPU, a measurable share of an update.
    """
    params = list(module.parameters())
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        size = p.numel()
        p.data = flat.data[offset : offset + size].view_as(p)
        p.grad = flat.grad[offset : offset + size].view_as(p)
        offset += size
    return flat
