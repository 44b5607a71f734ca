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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from agent.config import DQfDConfig
from agent.demonstrations import Episode, layout_arrays, layout_episodes
from agent.inference import NumpyQNetwork
from agent.losses import (
    double_dqn_bootstrap,
    margin_loss_and_argmax,
    masked,
    q_filter,
    q_gradient,
    td_loss,
    td_loss_derivative,
    td_targets,
)
from agent.networks import DuelingQNetwork, flatten_parameters
from agent.numerics import flush_denormals, flush_subnormal_values
from agent.optim import adam_step, make_adam
from agent.progress import progress_bar
from agent.replay import PrioritizedReplay
from agent.schedules import decayed_margin_weight
from agent.types import Batch, LossInfo
from agent.validation import state_problem, transition_problem, validate_transitions

CHECKPOINT_FORMAT = "dqfd-agent"
CHECKPOINT_VERSION = 2
"""2: Adam's state is that of the one flat parameter tensor; version 1 (one state per weight tensor, in
``online.parameters()`` order) still loads: its states are concatenated in that order."""

SKIP_WARNING_INTERVAL_S = 60.0
"""At most one warning per this many seconds about skipped updates (each says how many since the last)."""

log = logging.getLogger(__name__)

PretrainCallback = Callable[[int, dict[str, float]], None]
"""Called as ``callback(updates_done, mean_losses_since_last_call)`` during :meth:`DQfDAgent.pretrain`."""


class DQfDAgent:
    """Deep Q-learning from Demonstrations over feature-vector states and discrete actions."""

    def __init__(
        self, state_dim: int, n_actions: int, config: DQfDConfig | None = None, seed: int | None = None
    ) -> None:
        """Create the networks, the optimizer and an empty replay.

        Args:
            state_dim: length of the state feature vector.
            n_actions: number of discrete actions.
            config: hyperparameters (the paper's defaults when omitted).
            seed: seeds network initialisation, sampling and exploration; None draws fresh entropy.
        """
        if state_dim < 1 or n_actions < 1:
            raise ValueError("state_dim and n_actions must be >= 1")
        self.config = config if config is not None else DQfDConfig()
        self.state_dim = int(state_dim)
        self.n_actions = int(n_actions)
        self.seed = seed
        self.device = torch.device(self.config.device)
        self.rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.rng.integers(2**31)))
            self.online = DuelingQNetwork(self.state_dim, self.n_actions, self.config.hidden_sizes)
        self.online.to(self.device)
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
        self.n_updates = 0
        """Gradient updates done, pretraining and online together (drives β and the target copies)."""
        self.n_pretrain_updates = 0
        """Of which pretraining updates."""
        self.n_target_syncs = 0
        """Hard copies of the online network into the target network so far."""
        self.n_observed = 0
        """Agent transitions passed to :meth:`observe`."""
        self.n_skipped_updates = 0
        """Updates not applied because their loss or gradient was not finite (:meth:`learn`); saved in
        checkpoints."""
        self.consecutive_skipped_updates = 0
        """Skipped updates since the last applied one (drives :attr:`diverged`; not saved)."""
        self.n_rejected_rows = 0
        """Demonstration rows left out by ``add_demonstrations(..., skip_invalid=True)`` (not saved)."""
        self._last_skip_warning: float | None = None
        self._skips_since_warning = 0
        self.flush_denormals = True
        """Run each update with subnormal floats flushed to zero on the calling thread, its previous mode
        restored after (agent/numerics.py). Without it the weights of dead ReLU units decay into the
        subnormal range under J_L2 and Adam, and updates slow down on CPUs that handle subnormals slowly.
        False only to measure that (benchmarks/pretrain_rate.py); not saved in checkpoints."""

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

    def clear_demonstrations(self) -> None:
        """Remove every demonstration (agent data stays)."""
        self.replay.clear_demonstrations()

    @property
    def n_demonstrations(self) -> int:
        """Demonstration transitions in the replay."""
        return self.replay.demo_count

    @property
    def n_agent_transitions(self) -> int:
        """Agent transitions currently in the replay (at most ``config.replay_capacity``)."""
        return self.replay.agent_count

    @property
    def n_quarantined(self) -> int:
        """Replay transitions never drawn again because they made an update non-finite (not saved)."""
        return self.replay.n_quarantined

    @property
    def diverged(self) -> bool:
        """Whether this learner is stuck: the last ``config.diverged_after_skipped_updates`` updates were
        all skipped, or a weight of either network or Adam's state is not finite (only possible in a
        checkpoint written before the update checked its gradient). Costs one pass over the weights."""
        if self.consecutive_skipped_updates >= self.config.diverged_after_skipped_updates:
            return True
        tensors = [self._flat.data, *self.target.parameters()]
        state = self.optimizer.state.get(self._flat, {})
        tensors += [state[key] for key in ("exp_avg", "exp_avg_sq") if key in state]
        return not all(bool(torch.isfinite(t).all()) for t in tensors)

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
    def beta(self) -> float:
        """Importance-sampling exponent, annealed linearly from β0 to its end value ([PER] Sec. 3.4)."""
        cfg = self.config
        fraction = min(1.0, self.n_updates / cfg.priority_beta_anneal_updates)
        return cfg.priority_beta_start + fraction * (cfg.priority_beta_end - cfg.priority_beta_start)

    def margin_weight(self, demo_only: bool = False) -> float:
        """λ2 as applied to the next update: ``config.lambda_margin``, decayed in online updates by
        ``config.margin_decay_demo_ratio`` as the agent's own data grows (:mod:`agent.schedules`)."""
        cfg = self.config
        if demo_only:
            return cfg.lambda_margin
        return decayed_margin_weight(
            cfg.lambda_margin, self.replay.demo_count, self.n_observed, cfg.margin_decay_demo_ratio
        )

    def sample(self, demo_only: bool = False) -> Batch:
        """Draw one prioritized mini-batch (demonstrations only during pretraining)."""
        cfg = self.config
        indices, weights = self.replay.sample_indices(cfg.batch_size, self.beta, demo_only)
        return self.replay.gather(indices, weights, cfg.n_step, cfg.gamma, cfg.reward_transform, self.device)

    def learn(self, batch: Batch, demo_only: bool = False) -> tuple[LossInfo, np.ndarray]:
        """One gradient step on J(Q) for a batch; returns the loss components and |δ| of the 1-step TD.

        J(Q) = J_DQ + λ1·J_n + λ2·J_E + λ3·J_L2 ([DQfD] Eq. 3), the TD and margin terms weighted per
        sample by the importance-sampling weights of prioritized replay. The gradient is the one autograd
        would give (tests/agent/test_dqfd.py checks it), written out: dJ/dQ per sample, then
        :meth:`DuelingQNetwork.backward_q` (see agent/networks.py for why). It runs with subnormals
        flushed to zero on this thread (:attr:`flush_denormals`).

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

    def _learn(self, batch: Batch, demo_only: bool) -> tuple[LossInfo, np.ndarray]:
        cfg = self.config
        margin_weight = self.margin_weight(demo_only)
        size = batch.states.shape[0]
        with torch.no_grad():
            # One pass of the online network over s, s_{t+1} and s_{t+n}: Q(s, ·) for the loss, and the
            # online argmax of double DQN at both bootstrap states ([DDQN] Eq. 4), evaluated by the target.
            bootstrap_states = batch.stacked_states[size:]
            bootstrap_masks = None if batch.stacked_masks is None else batch.stacked_masks[size:]
            q_all, activations = self.online.forward_keeping_activations(batch.stacked_states)
            q = q_all[:size]
            bootstrap = double_dqn_bootstrap(q_all[size:], self.target(bootstrap_states), bootstrap_masks)
            bootstrap_1, bootstrap_n = bootstrap.split(size)
            target_1 = td_targets(batch.rewards, batch.discounts, bootstrap_1)
            target_n = td_targets(batch.nstep_returns, batch.nstep_discounts, bootstrap_n)

            q_taken = q.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
            j_dq = td_loss(q_taken, target_1, cfg.td_loss)
            j_n = td_loss(q_taken, target_n, cfg.td_loss)
            # The demonstrations whose J_E counts: all of them, or (Q-filter, online updates) those whose
            # demonstrated action the online network still values at least as high as its own choice.
            keep = batch.is_demo
            if cfg.q_filter and not demo_only:
                keep = keep & q_filter(q, batch.actions, batch.masks)
            j_e, margin_argmax = margin_loss_and_argmax(q, batch.actions, cfg.margin, batch.masks, keep)
            per_sample = j_dq + cfg.lambda_n * j_n + margin_weight * j_e

            # dJ/dQ of the data loss mean_i w_i·(J_DQ,i + λ1·J_n,i + λ2·J_E,i), then back through the net.
            scale = batch.weights / size
            td_coefficient = scale * (
                td_loss_derivative(q_taken - target_1, cfg.td_loss)
                + cfg.lambda_n * td_loss_derivative(q_taken - target_n, cfg.td_loss)
            )
            margin_coefficient = torch.where(keep, scale * margin_weight, 0.0)
            grad_q = q_gradient(q, batch.actions, margin_argmax, td_coefficient, margin_coefficient)
            self.online.backward_q(activations, grad_q)

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
            sums = torch.stack(
                [
                    batch.weights * per_sample,
                    j_dq,
                    j_n,
                    j_e,
                    q_taken,
                    batch.is_demo.to(q.dtype),
                    keep.to(q.dtype),
                ]
            ).sum(dim=1)
            values = torch.cat([sums, j_l2.reshape(1), grad_norm.reshape(1)]).tolist()
        if not all(map(math.isfinite, values)):
            rows = _poisoned_rows(q, q_taken, target_1, target_n, per_sample, grad_q, activations)
            return self._skip_update(
                batch, rows, keep, q_taken, j_dq, j_n, j_e, per_sample, abs_td, values, margin_weight
            )

        adam_step(self.optimizer)
        if self.flush_denormals and torch.get_num_threads() > 1 and self.device.type == "cpu":
            # Intra-op worker threads do not flush (agent/numerics.py): clear what they left in the state.
            state = self.optimizer.state[self._flat]
            flush_subnormal_values([self._flat.data, self._flat.grad, state["exp_avg"], state["exp_avg_sq"]])
        self.n_updates += 1
        self.consecutive_skipped_updates = 0
        if self.n_updates % cfg.target_update_period == 0:
            self.sync_target()

        weighted, sum_dq, sum_n, sum_e, sum_q, n_demo, n_kept, l2, _ = values
        info = LossInfo(
            loss=weighted / size + l2,
            j_dq=sum_dq / size,
            j_n=sum_n / size,
            j_e=sum_e / max(1.0, n_demo),
            j_l2=l2,
            demo_fraction=n_demo / size,
            mean_q=sum_q / size,
            margin_weight=margin_weight,
            margin_kept=n_kept / n_demo if n_demo else 1.0,
        )
        return info, abs_td.cpu().numpy()

    def _skip_update(
        self,
        batch: Batch,
        rows: torch.Tensor,
        keep: torch.Tensor,
        q_taken: torch.Tensor,
        j_dq: torch.Tensor,
        j_n: torch.Tensor,
        j_e: torch.Tensor,
        per_sample: torch.Tensor,
        abs_td: torch.Tensor,
        values: list[float],
        margin_weight: float,
    ) -> tuple[LossInfo, np.ndarray]:
        """Count and report an update that is not applied; |δ| is NaN on ``rows`` (to quarantine them) and
        the loss components are those of the other rows, in float64 (finite)."""
        self.n_skipped_updates += 1
        self.consecutive_skipped_updates += 1
        self._skips_since_warning += 1
        now = time.monotonic()
        if self._last_skip_warning is None or now - self._last_skip_warning >= SKIP_WARNING_INTERVAL_S:
            reason = "gradient norm" if all(map(math.isfinite, values[:-1])) else "loss"
            log.warning(
                "DQfD update skipped: non-finite %s; %d batch row(s) quarantined; %d update(s) skipped "
                "since the last warning, %d in all",
                reason,
                int(rows.sum()),
                self._skips_since_warning,
                self.n_skipped_updates,
            )
            self._last_skip_warning = now
            self._skips_since_warning = 0
        with torch.no_grad():
            good = ~rows
            demo = batch.is_demo & good
            count = max(1, int(good.sum()))

            def total(x: torch.Tensor, where: torch.Tensor) -> float:
                return float(torch.where(where, x.double(), 0.0).sum())

            l2 = values[-2]
            info = LossInfo(
                loss=total(batch.weights.double() * per_sample.double(), good) / count + l2,
                j_dq=total(j_dq, good) / count,
                j_n=total(j_n, good) / count,
                j_e=total(j_e, demo) / max(1, int(demo.sum())),
                j_l2=l2,
                demo_fraction=float(batch.is_demo.double().mean()),
                mean_q=total(q_taken, good) / count,
                skipped=1.0,
                margin_weight=margin_weight,
                margin_kept=int((keep & demo).sum()) / max(1, int(demo.sum())),
            )
            td = abs_td.double().cpu().numpy()
        td[rows.cpu().numpy()] = np.nan
        return info, td

    def sync_target(self) -> None:
        """Hard copy of the online network into the target network."""
        self.target.load_state_dict(self.online.state_dict())
        self.n_target_syncs += 1

    def train_step(self, demo_only: bool = False) -> dict[str, float]:
        """Sample, update, re-prioritize: one update of the online phase; returns the loss components.

        The priority of each sampled transition becomes |δ| + ε with δ its one-step TD error before the
        update ([PER] Alg. 1 line 12) and ε by its own part (ε_d or ε_a). ``skipped`` is 1.0 when the
        update was not applied (:meth:`learn`); the rows that made it non-finite are then quarantined.
        """
        batch = self.sample(demo_only)
        info, abs_td = self.learn(batch, demo_only)
        self.replay.update_priority(batch.indices, abs_td)
        return info.as_dict()

    def pretrain(
        self,
        steps: int | None = None,
        progress: bool = False,
        callback: PretrainCallback | None = None,
        log_every: int | None = None,
    ) -> dict[str, Any]:
        """Pretraining phase: ``steps`` updates on demonstrations only, touching no environment.

        Args:
            steps: number of updates (``config.pretrain_steps``, the paper's 750,000, when omitted).
            progress: show progress on stderr: a tqdm bar on a terminal; in a log file or a pipe, a plain
                line every tenth of the updates or 30 s (agent/progress.py).
            callback: called every ``log_every`` updates with the mean loss components since its last call.
            log_every: reporting interval (default: 1/100 of ``steps``).

        Returns:
            A summary: ``steps``, ``seconds``, ``updates_per_second``, ``final`` (mean components over the
            last interval) and ``history`` (one entry per interval: ``step`` and the mean components).
        """
        steps = self.config.pretrain_steps if steps is None else int(steps)
        if steps < 0:
            raise ValueError("steps must be >= 0")
        if steps and self.replay.demo_count == 0:
            raise RuntimeError("pretraining needs demonstrations: call add_demonstrations first")
        log_every = max(1, steps // 100) if log_every is None else max(1, int(log_every))
        bar = None
        if progress:
            bar = progress_bar(steps, "pretraining", unit="update")
        history: list[dict[str, float]] = []
        window: list[dict[str, float]] = []
        started = time.perf_counter()
        for step in range(1, steps + 1):
            losses = self.train_step(demo_only=True)
            window.append(losses)
            if not losses["skipped"]:
                self.n_pretrain_updates += 1
            if step % log_every == 0 or step == steps:
                means = {key: float(np.mean([w[key] for w in window])) for key in window[0]}
                history.append({"step": float(step), **means})
                window = []
                if callback is not None:
                    callback(step, means)
                if bar is not None:
                    bar.set_postfix(loss=f"{means['loss']:.4f}", j_e=f"{means['j_e']:.4f}")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - started
        return {
            "steps": steps,
            "seconds": seconds,
            "updates_per_second": steps / seconds if seconds > 0 else float("nan"),
            "final": {k: v for k, v in history[-1].items() if k != "step"} if history else {},
            "history": history,
        }

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
        """An immutable NumPy copy of the online network, for serving."""
        return NumpyQNetwork(self.online.state_dict())

    # ------------------------------------------------------------------ persistence
    def save(self, destination: str | Path | BinaryIO) -> None:
        """Write a self-describing checkpoint: config, sizes, both networks, optimizer and counters.

        It holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
        The replay is not included: demonstrations come back from their source, agent data is transient.
        """
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "state_dim": self.state_dim,
            "n_actions": self.n_actions,
            "seed": self.seed,
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "counters": {
                "n_updates": self.n_updates,
                "n_pretrain_updates": self.n_pretrain_updates,
                "n_target_syncs": self.n_target_syncs,
                "n_observed": self.n_observed,
                "n_skipped_updates": self.n_skipped_updates,
            },
        }
        torch.save(checkpoint, destination)

    @classmethod
    def load(cls, source: str | Path | BinaryIO, device: str | None = None) -> DQfDAgent:
        """Rebuild an agent from :meth:`save`'s checkpoint (with an empty replay)."""
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a DQfD agent checkpoint")
        version = checkpoint.get("version")
        if version not in (1, CHECKPOINT_VERSION):
            raise ValueError(f"unsupported checkpoint version {version}")
        config = DQfDConfig.from_dict(checkpoint["config"])
        if device is not None:
            config.device = device
        agent = cls(checkpoint["state_dim"], checkpoint["n_actions"], config, seed=checkpoint["seed"])
        agent.online.load_state_dict(checkpoint["online"])
        agent.target.load_state_dict(checkpoint["target"])
        optimizer_state = checkpoint["optimizer"]
        if version == 1:
            optimizer_state = _flat_adam_state(optimizer_state)
        agent.optimizer.load_state_dict(optimizer_state)
        for name, value in checkpoint["counters"].items():  # older checkpoints lack n_skipped_updates: 0
            setattr(agent, name, int(value))
        return agent

    # ------------------------------------------------------------------ helpers
    def _state(self, state: np.ndarray, name: str = "state") -> np.ndarray:
        with np.errstate(over="ignore"):
            array = np.asarray(state, dtype=np.float32).reshape(-1)
        if array.shape[0] != self.state_dim:
            raise ValueError(f"{name} must have {self.state_dim} features, got {array.shape[0]}")
        problem = state_problem(array, name)
        if problem is not None:
            raise ValueError(problem)
        return array

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
    finite = (
        torch.isfinite(q).all(dim=1)
        & torch.isfinite(target_1 - q_taken)
        & torch.isfinite(target_n - q_taken)
        & torch.isfinite(per_sample)
        & torch.isfinite(grad_q).all(dim=1)
    )
    rows = ~finite
    if not rows.any():
        inputs = torch.stack([x[:size].double().norm(dim=1) for x in activations]).amax(dim=0)
        bound = grad_q.double().norm(dim=1) * (1.0 + inputs)
        rows[int(torch.nan_to_num(bound, nan=np.inf).argmax())] = True
    return rows
