"""A NumPy copy of the dueling network's forward pass, for serving without torch on the request path.

For a small MLP at batch size 1, eager PyTorch spends most of its time in dispatch; the same matrix
products in NumPy are several times cheaper, and an instance is immutable, so a server can swap a new
one in with a single reference assignment while requests keep using the old one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
import torch


class NumpyQNetwork:
    """Immutable Q(s, ·) = V(s) + A(s, ·) − mean A(s, ·) evaluated with NumPy (float32)."""

    def __init__(self, state_dict: Mapping[str, Any]) -> None:
        """Copy the weights of a :class:`~agent.networks.DuelingQNetwork` state dict.

        Raises:
            ValueError: the state dict is not the built-in dueling network's (e.g. a user network's).
        """
        if "head.weight" not in state_dict or "head.bias" not in state_dict:
            raise ValueError(
                "not a DuelingQNetwork state dict: a NumPy copy exists for the built-in network only"
            )

        def array(name: str) -> np.ndarray:
            value = state_dict[name]
            value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            # Always a copy: ``Tensor.numpy()`` shares the live parameter's memory, which the optimizer
            # keeps updating in place; a served policy must not change under its readers.
            out = np.array(value, dtype=np.float32, order="C", copy=True)
            out.setflags(write=False)
            return out

        trunk = sorted(
            {int(k.split(".")[1]) for k in state_dict if k.startswith("trunk.") and k.endswith(".weight")}
        )
        # Stored transposed so that a forward pass is x @ W + b with no per-call transpose.
        self.layers = tuple((array(f"trunk.{i}.weight").T.copy(), array(f"trunk.{i}.bias")) for i in trunk)
        self.head_w = array("head.weight").T.copy()  # column 0: value stream, columns 1..: advantages
        self.head_b = array("head.bias")
        for w in (*(w for w, _ in self.layers), self.head_w):
            w.setflags(write=False)
        self.state_dim = int(self.layers[0][0].shape[0]) if self.layers else int(self.head_w.shape[0])
        self.n_actions = int(self.head_b.shape[0]) - 1

    @classmethod
    def from_checkpoint(cls, source: str | BinaryIO | Any) -> NumpyQNetwork:
        """The online network of a checkpoint written by :meth:`agent.DQfDAgent.save`."""
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
        if checkpoint.get("network") == "user":
            raise ValueError(
                "this checkpoint holds a user network: no NumPy copy; load it with DQfDAgent.load"
            )
        return cls(checkpoint["online"])

    def q_values(self, states: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Q-values (B, n_actions) for states (B, state_dim); disallowed actions (mask False) are −∞."""
        h = np.asarray(states, dtype=np.float32)
        if h.ndim == 1:
            h = h[None, :]
        for w, b in self.layers:
            h = h @ w
            h += b
            np.maximum(h, 0.0, out=h)
        out = h @ self.head_w
        out += self.head_b
        advantage = out[:, 1:]
        q = advantage - advantage.mean(axis=1, keepdims=True)
        q += out[:, :1]
        if masks is not None:
            q = np.where(np.asarray(masks, dtype=bool), q, np.float32(-np.inf))
        return q
