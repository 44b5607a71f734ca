"""The DQfD agent (Hester et al., "Deep Q-learning from Demonstrations", AAAI 2018, arXiv 1704.03732v4).

Algorithm 1 of the paper, in two phases:

1. Pretraining (:meth:`DQfDAgent.pretrain`): sample mini-batches from the demonstrations only, apply the
   combined loss J(Q), copy the online network into the target network every τ updates.
2. Online (:meth:`DQfDAgent.observe` then :meth:`DQfDAgent.train_step`): act ε-greedily, add the agent's own
   transitions to the FIFO part of the replay, and sample from demonstrations and agent data together,
   prioritized. The margin loss J_E applies to the demonstration samples of each batch only.

Beyond the paper, two options (off by default) let the agent's own data overrule a suboptimal
demonstrator in online updates: ``DQfDConfig.q_filter`` and ``DQfDConfig.margin_decay_demo_ratio``
(docs/algorithm.md, "Beyond the paper").
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import torch
from torch import nn

from agent.config import DQfDConfig
from agent.demonstrations import Episode, layout_arrays, layout_episodes
from agent.gradients import autograd_gradient, hand_written_gradient, q_gradient_of
from agent.inference import NumpyQNetwork
from agent.losses import masked
from agent.networks import DuelingQNetwork, check_q_network, flatten_parameters
from agent.numerics import flush_denormals, flush_subnormal_values
from agent.optim import adam_step, make_adam
from agent.replay import PrioritizedReplay
from agent.training_loop import SKIP_WARNING_INTERVAL_S as SKIP_WARNING_INTERVAL_S
from agent.training_loop import DQfDLearner, poisoned_rows, update_info, update_values
from agent.training_loop import PretrainCallback as PretrainCallback
from agent.types import Batch, LossInfo
from agent.validation import transition_problem, validate_transitions

CHECKPOINT_FORMAT = "dqfd-agent"
CHECKPOINT_VERSION = 2
"""2: Adam's state is that of the one flat parameter tensor; version 1 (one state per weight tensor, in
``online.parameters()`` order) still loads: its states are concatenated in that order."""

log = logging.getLogger(__name__)


class DQfDAgent(DQfDLearner):
    """Deep Q-learning from Demonstrations over feature-vector states and discrete actions (counters,
    schedules, pretraining loop and skipped-update bookkeeping: :class:`agent.training_loop.DQfDLearner`)."""

    _log = log
    _skip_name = "DQfD"

    def __init__(
        self,
        state_dim: int,
        n_actions: int,
        config: DQfDConfig | None = None,
        seed: int | None = None,
        network: nn.Module | None = None,
    ) -> None:
        """Create the networks, the optimizer and an empty replay.

        Args:
            state_dim: length of the state feature vector.
            n_actions: number of discrete actions.
            config: hyperparameters (the paper's defaults when omitted).
            seed: seeds network initialisation, sampling and exploration; None draws fresh entropy.
            network: the online Q-network, any ``torch.nn.Module`` mapping float32 states (B, state_dim)
                to Q-values (B, n_actions); None builds the built-in dueling MLP
                (:class:`~agent.networks.DuelingQNetwork`, ``config.hidden_sizes``). A passed module is
                taken over as it is (its own initialisation; ``seed`` does not re-initialise it): it is
                moved to ``config.device``, its parameters become views of one flat tensor
                (:func:`~agent.networks.flatten_parameters`), the target network is a deep copy, and it
                trains through autograd on the same loss, L2 term, clipping, Adam and skipping of
                non-finite updates (agent/gradients.py). The agent never switches it between train and
                eval mode. Its checkpoints load with ``DQfDAgent.load(source, network=...)``.
        """
        if state_dim < 1 or n_actions < 1:
            raise ValueError("state_dim and n_actions must be >= 1")
        self.config = config if config is not None else DQfDConfig()
        self.state_dim = int(state_dim)
        self.n_actions = int(n_actions)
        self.seed = seed
        self.device = torch.device(self.config.device)
        self.rng = np.random.default_rng(seed)
        # Drawn with or without a user network, so that a seed gives the same sampling either way.
        network_seed = int(self.rng.integers(2**31))
        self.user_network = network is not None
        """Whether the online network was passed in (checkpoints then need ``load(..., network=...)``)."""
        if network is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(network_seed)
                network = DuelingQNetwork(self.state_dim, self.n_actions, self.config.hidden_sizes)
        else:
            check_q_network(network, self.state_dim, self.n_actions)
        self.online: nn.Module = network
        self.online.to(self.device)
        # The hand-written backward pass is exact for this class only (a subclass may change forward).
        self._hand_written_backward = type(self.online) is DuelingQNetwork
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        # Every online weight is a view of one flat tensor, which is what Adam optimises (one L2 term, one
        # gradient norm and one fused Adam call per update; see networks.flatten_parameters).
        self._flat = flatten_parameters(self.online)
        self.optimizer = make_adam([self._flat], self.config.learning_rate, self.config.adam_eps)
        self.replay = PrioritizedReplay(
            self.state_dim,
            self.n_actions,
            capacity=self.config.replay_capacity,
            alpha=self.config.priority_alpha,
            demo_bonus=self.config.demo_priority_bonus,
            agent_bonus=self.config.agent_priority_bonus,
            rng=self.rng,
        )
        self._init_counters()

    # ------------------------------------------------------------------ data
    def add_demonstrations(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        dones: np.ndarray,
        episode_ids: np.ndarray | None = None,
        masks: np.ndarray | None = None,
        skip_invalid: bool = False,
    ) -> int:
        """Add demonstration rows to the permanent part of the replay; returns the transitions added.

        Rows of an episode are contiguous and in step order, and the next state of a row is the state of
        the following row of the same episode. Without ``episode_ids`` an episode ends after each
        ``done`` row. A last row without ``done`` (the log stops mid-session) keeps only its state, as the
        bootstrap state of the row before it. ``masks`` (N, n_actions) marks the allowed actions.

        A row whose state or reward is not finite as a float32, or is beyond ``config.max_abs_state`` /
        ``config.max_abs_reward``, raises ``ValueError`` naming the row and the field, and nothing is
        added. With ``skip_invalid=True`` such rows are left out instead and counted in
        :attr:`n_rejected_rows`; each one cuts its episode there, as a log that stopped (the rows before
        it end in a state-only slot: no n-step window crosses it). :meth:`validate_transitions` gives the
        mask of the rows that would be kept, for a caller that reports or quarantines the others.
        """
        cfg = self.config
        layout = layout_arrays(
            states,
            actions,
            rewards,
            dones,
            episode_ids,
            masks,
            self.state_dim,
            self.n_actions,
            cfg.max_abs_state,
            cfg.max_abs_reward,
            skip_invalid,
        )
        added = self.replay.add_demonstrations(layout.demonstrations)
        self.n_rejected_rows += layout.rejected
        return added

    def add_demonstration_episodes(self, episodes: list[Episode]) -> int:
        """Add whole :class:`~agent.demonstrations.Episode` objects; returns the transitions added. An
        invalid state or reward raises ``ValueError`` (as :meth:`add_demonstrations`)."""
        cfg = self.config
        demos = layout_episodes(
            episodes, self.state_dim, self.n_actions, cfg.max_abs_state, cfg.max_abs_reward
        )
        return self.replay.add_demonstrations(demos)

    def validate_transitions(
        self, states: np.ndarray, rewards: np.ndarray, next_states: np.ndarray | None = None
    ) -> np.ndarray:
        """Mask of the rows that may enter the replay, bool (N,): state, reward and (when given) next state
        finite as float32 and within ``config.max_abs_state`` / ``config.max_abs_reward``.

        For demonstration rows (``next_states`` omitted: the next state is the following row's state)
        the False rows are exactly those ``add_demonstrations(..., skip_invalid=True)`` rejects; for live
        transitions (``next_states`` given), those :meth:`observe` refuses.
        """
        states = np.asarray(states)
        if states.ndim != 2 or states.shape[1] != self.state_dim:
            raise ValueError(f"states must have shape (N, {self.state_dim}), got {states.shape}")
        cfg = self.config
        return validate_transitions(
            states,
            rewards,
            next_states,
            max_abs_state=cfg.max_abs_state,
            max_abs_reward=cfg.max_abs_reward,
        )

    def observe(
        self,
        state: np.ndarray,
        action: int,
        reward: float,
        next_state: np.ndarray,
        done: bool,
        mask: np.ndarray | None = None,
        next_mask: np.ndarray | None = None,
        truncated: bool = False,
    ) -> None:
        """Add one of the agent's own transitions to the FIFO part of the replay.

        Args:
            done: the episode terminated at ``next_state`` (no bootstrap from it).
            mask / next_mask: allowed actions at ``state`` / ``next_state``.
            truncated: the episode stops at ``next_state`` without terminating (a time limit): the next
                call starts a new episode, and ``next_state`` is still bootstrapped from.

        Raises:
            ValueError: a state, next state or reward that is not finite as a float32 or is beyond
                ``config.max_abs_state`` / ``config.max_abs_reward`` (the message starts with the field:
                ``state:``, ``reward:`` or ``next_state:``), a wrong shape, action or mask. Nothing is
                stored then, and the next call cannot continue the episode across the rejected one (it
                starts a new episode unless its state is the pending last state).
        """
        state = self._state(state, "state")
        next_state = self._state(next_state, "next_state")
        if not 0 <= int(action) < self.n_actions:
            raise ValueError(f"action must be in [0, {self.n_actions})")
        cfg = self.config
        problem = transition_problem(
            state, reward, next_state, max_abs_state=cfg.max_abs_state, max_abs_reward=cfg.max_abs_reward
        )
        if problem is not None:
            raise ValueError(problem)
        self.replay.add_agent_transition(
            state,
            int(action),
            float(reward),
            next_state,
            bool(done),
            self._mask(mask),
            self._mask(next_mask),
            bool(truncated),
        )
        self.n_observed += 1

    # ------------------------------------------------------------------ learning
    @property
    def hand_written_backward(self) -> bool:
        """Whether updates backpropagate by hand (:meth:`DuelingQNetwork.backward_q`, no autograd graph)
        rather than through autograd. True by default for the built-in network, where it is faster and
        equal to autograd (tests/agent/test_pluggable_networks.py); False for any other network. It may
        be set False to train the built-in network through autograd, and True only for a
        :class:`~agent.networks.DuelingQNetwork` (or a subclass whose backward_q matches its forward)."""
        return self._hand_written_backward

    @hand_written_backward.setter
    def hand_written_backward(self, value: bool) -> None:
        if value and not isinstance(self.online, DuelingQNetwork):
            raise ValueError(
                "the hand-written backward pass needs a DuelingQNetwork; this network trains through autograd"
            )
        self._hand_written_backward = bool(value)

    def sample(self, demo_only: bool = False) -> Batch:
        """Draw one prioritized mini-batch (demonstrations only during pretraining)."""
        cfg = self.config
        indices, weights = self.replay.sample_indices(cfg.batch_size, self.beta, demo_only)
        return self.replay.gather(indices, weights, cfg.n_step, cfg.gamma, cfg.reward_transform, self.device)

    def learn(self, batch: Batch, demo_only: bool = False) -> tuple[LossInfo, np.ndarray]:
        """One gradient step on J(Q) for a batch; returns the loss components and |δ| of the 1-step TD.

        J(Q) = J_DQ + λ1·J_n + λ2·J_E + λ3·J_L2 ([DQfD] Eq. 3), the TD and margin terms weighted per
        sample by the importance-sampling weights of prioritized replay. For the built-in network the
        gradient is the one autograd would give (tests/agent/test_dqfd.py checks it), written out: dJ/dQ
        per sample, then :meth:`DuelingQNetwork.backward_q` (see agent/networks.py for why); any other
        network trains through autograd (:attr:`hand_written_backward`, agent/gradients.py). It runs
        with subnormals flushed to zero on this thread (:attr:`flush_denormals`).

        An update whose loss or gradient norm is not finite is skipped: the weights, Adam's state, the
        target network and :attr:`n_updates` stay as they were, :attr:`n_skipped_updates` counts it, a
        warning is logged (at most one per ``SKIP_WARNING_INTERVAL_S``) and ``info.skipped`` is 1. The
        rows of the batch that made it non-finite get |δ| = NaN, which quarantines them in
        :meth:`PrioritizedReplay.update_priority`; the loss components are then those of the other rows.
        A finite gradient norm bounds every squared gradient entry, so Adam's moments and the weights
        stay finite: with this check the weights cannot become NaN or infinite.

        ``demo_only`` marks a pretraining update: J_E then applies unfiltered at the full λ2; otherwise
        ``config.q_filter`` and ``config.margin_decay_demo_ratio`` apply (beyond the paper; both off by
        default).
        """
        with flush_denormals(self.flush_denormals):
            return self._learn(batch, demo_only)

    def _online_weights(self) -> list[torch.Tensor]:
        return [self._flat.data]

    def _learn(self, batch: Batch, demo_only: bool) -> tuple[LossInfo, np.ndarray]:
        cfg = self.config
        margin_weight = self.margin_weight(demo_only)
        size = batch.states.shape[0]
        use_q_filter = cfg.q_filter and not demo_only
        # dJ/dθ of the data loss mean_i w_i·(J_DQ,i + λ1·J_n,i + λ2·J_E,i) into the flat gradient.
        if self._hand_written_backward:
            online = cast(DuelingQNetwork, self.online)
            terms = hand_written_gradient(online, self.target, batch, cfg, margin_weight, use_q_filter)
        else:
            terms = autograd_gradient(
                self.online, self.target, batch, cfg, margin_weight, use_q_filter, self._flat.grad
            )
        q, q_taken, target_1, target_n = terms.q, terms.q_taken, terms.target_1, terms.target_n
        j_dq, j_n, j_e, keep, per_sample = terms.j_dq, terms.j_n, terms.j_e, terms.keep, terms.per_sample
        with torch.no_grad():
            # J_L2 = λ3·Σθ² is part of the loss: its gradient 2·λ3·θ is added to every parameter's
            # gradient before clipping and Adam. This is coupled L2, not decoupled weight decay.
            flat, grad = self._flat, self._flat.grad
            j_l2 = cfg.lambda_l2 * flat.dot(flat)
            grad.add_(flat, alpha=2.0 * cfg.lambda_l2)
            # The norm is finite only if every entry and every squared entry is: the one check Adam needs.
            grad_norm = grad.norm()
            if cfg.max_grad_norm is not None:
                # As torch.nn.utils.clip_grad_norm_: scale the whole gradient to norm ≤ max_grad_norm.
                grad.mul_((cfg.max_grad_norm / (grad_norm + 1e-6)).clamp_(max=1.0))

            abs_td = (target_1 - q_taken).abs()
            # Every reported scalar, and the gradient norm, from one reduction and one conversion to Python.
            values = update_values(batch, per_sample, j_dq, j_n, j_e, q_taken, keep, j_l2, grad_norm)
        if not all(map(math.isfinite, values)):
            grad_q = q_gradient_of(terms, batch, cfg, margin_weight)
            rows = _poisoned_rows(q, q_taken, target_1, target_n, per_sample, grad_q, terms.inputs)
            reason = "gradient norm" if all(map(math.isfinite, values[:-1])) else "loss"
            return self._skip_update(
                reason,
                batch,
                rows,
                keep,
                q_taken,
                j_dq,
                j_n,
                j_e,
                per_sample,
                abs_td,
                margin_weight,
                l2_term=values[-2],  # λ3·Σθ², as reported
                j_l2=values[-2],
            )

        adam_step(self.optimizer)
        if self.flush_denormals and torch.get_num_threads() > 1 and self.device.type == "cpu":
            # Intra-op worker threads do not flush (agent/numerics.py): clear what they left in the state.
            state = self.optimizer.state[self._flat]
            flush_subnormal_values([self._flat.data, self._flat.grad, state["exp_avg"], state["exp_avg_sq"]])
        self._count_update()
        return update_info(values, size, values[-2], margin_weight), abs_td.cpu().numpy()

    # ------------------------------------------------------------------ acting
    def q_values(self, states: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Q(s, ·) for a batch of states, shape (B, n_actions); disallowed actions are −∞."""
        states_t = torch.as_tensor(np.asarray(states, dtype=np.float32), device=self.device)
        if states_t.ndim == 1:
            states_t = states_t.unsqueeze(0)
        masks_t = None
        if masks is not None:
            masks_t = torch.as_tensor(np.asarray(masks, dtype=bool), device=self.device).reshape(
                states_t.shape[0], self.n_actions
            )
        with torch.no_grad():
            return masked(self.online(states_t), masks_t).cpu().numpy()

    def act(self, state: np.ndarray, mask: np.ndarray | None = None, epsilon: float | None = None) -> int:
        """ε-greedy action among the allowed ones (``epsilon=0`` is greedy; default ``config.epsilon``)."""
        epsilon = self.config.epsilon if epsilon is None else float(epsilon)
        mask = self._mask(mask)
        if epsilon > 0.0 and self.rng.random() < epsilon:
            allowed = np.flatnonzero(mask) if mask is not None else np.arange(self.n_actions)
            return int(self.rng.choice(allowed))
        return int(np.argmax(self.q_values(self._state(state), mask)[0]))

    def numpy_policy(self) -> NumpyQNetwork:
        """An immutable NumPy copy of the online network, for serving.

        Raises:
            TypeError: the online network is a user network (only the built-in dueling MLP has a NumPy
                copy; :meth:`q_values` serves any network).
        """
        if type(self.online) is not DuelingQNetwork:
            raise TypeError("numpy_policy needs the built-in DuelingQNetwork; use q_values for this network")
        return NumpyQNetwork(self.online.state_dict())

    # ------------------------------------------------------------------ persistence
    def save(self, destination: str | Path | BinaryIO) -> None:
        """Write a self-describing checkpoint: config, sizes, both networks, optimizer and counters.

        It holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
        The replay is not included: demonstrations come back from their source, agent data is transient.
        """
        checkpoint: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "state_dim": self.state_dim,
            "n_actions": self.n_actions,
            "seed": self.seed,
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "counters": self._counters(),
        }
        if self.user_network:
            # Only the weights are saved, not the module's code: load(..., network=...) supplies it. The
            # key is absent for the built-in network, so those checkpoints stay as they were.
            checkpoint["network"] = "user"
        torch.save(checkpoint, destination)

    @classmethod
    def load(
        cls, source: str | Path | BinaryIO, device: str | None = None, network: nn.Module | None = None
    ) -> DQfDAgent:
        """Rebuild an agent from :meth:`save`'s checkpoint (with an empty replay).

        Args:
            device: overrides ``config.device``.
            network: for a checkpoint of an agent built with a user network, a module of the same
                architecture (its weights are replaced by the checkpoint's; its state dict must match).
                Not needed for the built-in network.

        Raises:
            ValueError: not a DQfD checkpoint, an unknown version, or a user network's checkpoint without
                ``network``.
        """
        return cls.from_checkpoint(torch.load(source, map_location="cpu", weights_only=True), device, network)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Any, device: str | None = None, network: nn.Module | None = None
    ) -> DQfDAgent:
        """:meth:`load` on a checkpoint already read with ``torch.load(weights_only=True)``, for callers
        that read it once and dispatch on its ``format`` (the service's model loader). Same arguments and
        errors as :meth:`load`."""
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a DQfD agent checkpoint")
        version = checkpoint.get("version")
        if version not in (1, CHECKPOINT_VERSION):
            raise ValueError(f"unsupported checkpoint version {version}")
        if checkpoint.get("network") == "user" and network is None:
            raise ValueError(
                "this checkpoint holds a user network's weights: pass network= a module of the same "
                "architecture to DQfDAgent.load"
            )
        config = DQfDConfig.from_dict(checkpoint["config"])
        if device is not None:
            config.device = device
        agent = cls(
            checkpoint["state_dim"], checkpoint["n_actions"], config, seed=checkpoint["seed"], network=network
        )
        agent.online.load_state_dict(checkpoint["online"])
        agent.target.load_state_dict(checkpoint["target"])
        optimizer_state = checkpoint["optimizer"]
        if version == 1:
            optimizer_state = _flat_adam_state(optimizer_state)
        agent.optimizer.load_state_dict(optimizer_state)
        agent._load_counters(checkpoint["counters"])  # older checkpoints lack n_skipped_updates: 0
        return agent

    # ------------------------------------------------------------------ helpers
    def _mask(self, mask: np.ndarray | None) -> np.ndarray | None:
        if mask is None:
            return None
        array = np.asarray(mask, dtype=bool).reshape(-1)
        if array.shape[0] != self.n_actions:
            raise ValueError(f"mask must have {self.n_actions} entries, got {array.shape[0]}")
        if not array.any():
            raise ValueError("mask allows no action")
        return array


def _flat_adam_state(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A version-1 Adam state dict (one state per weight tensor) as the state of the flat tensor."""
    states = [state_dict["state"][i] for i in sorted(state_dict["state"])]
    groups = [dict(group, params=[0]) for group in state_dict["param_groups"][:1]]
    if not states:
        return {"state": {}, "param_groups": groups}
    flat = {
        "step": states[0]["step"],
        "exp_avg": torch.cat([s["exp_avg"].reshape(-1) for s in states]),
        "exp_avg_sq": torch.cat([s["exp_avg_sq"].reshape(-1) for s in states]),
    }
    return {"state": {0: flat}, "param_groups": groups}


def _poisoned_rows(
    q: torch.Tensor,
    q_taken: torch.Tensor,
    target_1: torch.Tensor,
    target_n: torch.Tensor,
    per_sample: torch.Tensor,
    grad_q: torch.Tensor,
    activations: list[torch.Tensor],
) -> torch.Tensor:
    """The rows of a batch that made its update non-finite, bool (B,); at least one.

    With finite weights a row's Q-values, targets, TD errors and per-sample loss depend only on its own
    data, so a non-finite one marks the row. When every per-row value is finite but the summed loss or
    the gradient norm overflowed, the row with the largest bound on its gradient contribution is marked:
    row i adds ``g_i,l ⊗ x_i,l`` to each layer's weight gradient, with ‖g_i,l‖ at most ‖dJ/dQ_i‖ times a
    product of weight norms common to every row, so ‖dJ/dQ_i‖ · (1 + max_l ‖x_i,l‖) orders the rows.
    """
    size = q_taken.shape[0]

    def bound() -> torch.Tensor:
        inputs = torch.stack([x[:size].double().norm(dim=1) for x in activations]).amax(dim=0)
        return grad_q.double().norm(dim=1) * (1.0 + inputs)

    return poisoned_rows([q, target_1 - q_taken, target_n - q_taken, per_sample, grad_q], bound)
