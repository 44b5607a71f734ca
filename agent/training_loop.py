"""What :class:`agent.dqfd.DQfDAgent` and :class:`agent.item_dqfd.ItemDQfDAgent` share around the update.

Both run Algorithm 1 of Hester et al. 2018 ("Deep Q-learning from Demonstrations", arXiv 1704.03732v4)
with the same :class:`agent.config.DQfDConfig`; they differ in the network, the replay's slots and the
loss over the actions, which each agent's ``_learn`` spells out top to bottom. The rest is the same code,
here in :class:`DQfDLearner`, their base class: the counters saved in checkpoints, the schedules (β of
[PER] Sec. 3.4, λ2 of :mod:`agent.schedules`), the target copies, the step of the online phase
(sample, learn, re-prioritize), the pretraining loop, and the bookkeeping of skipped updates (counters,
rate-limited warning, the loss components of the rows kept, |δ| = NaN on the rows quarantined). Three
functions serve both ``_learn``: :func:`update_values` (the update's sums in one conversion to Python),
:func:`update_info` (the loss components of an applied update from them) and :func:`poisoned_rows`
(which rows made an update non-finite).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from agent.config import DQfDConfig
from agent.progress import progress_bar
from agent.schedules import decayed_margin_weight
from agent.types import LossInfo
from agent.validation import state_problem

SKIP_WARNING_INTERVAL_S = 60.0
"""At most one warning per this many seconds about skipped updates (each says how many since the last)."""

PretrainCallback = Callable[[int, dict[str, float]], None]
"""Called as ``callback(updates_done, mean_losses_since_last_call)`` during ``pretrain``."""

COUNTERS = ("n_updates", "n_pretrain_updates", "n_target_syncs", "n_observed", "n_skipped_updates")
"""The counters a checkpoint holds, in its order."""


class _Batch(Protocol):
    """What the skipped-update report reads of a batch (:class:`agent.types.Batch` or ``ItemBatch``)."""

    is_demo: torch.Tensor
    weights: torch.Tensor


class DQfDLearner:
    """Counters, schedules, target copies, the pretraining loop and skipped-update bookkeeping of a DQfD
    agent. A subclass sets ``config``, ``state_dim``, ``online``, ``target``, ``optimizer`` and ``replay``
    (a :class:`agent.replay.PrioritizedReplay`), calls :meth:`_init_counters`, and defines ``sample`` and
    ``learn``."""

    config: DQfDConfig
    state_dim: int
    online: nn.Module
    target: nn.Module
    optimizer: torch.optim.Optimizer
    replay: Any
    sample: Callable[..., Any]
    """Draws one prioritized mini-batch (``sample(demo_only)``)."""
    learn: Callable[..., tuple[LossInfo, np.ndarray]]
    """One update on a batch (``learn(batch, demo_only)``): the loss components and |δ| per row."""
    _log: ClassVar[logging.Logger]
    """Where skipped updates are reported (the agent's module logger)."""
    _skip_name: ClassVar[str]
    """How the warning names the agent ("DQfD", "item DQfD")."""

    def _init_counters(self) -> None:
        """Zero the counters and the skip warning's state; updates flush subnormals (the default)."""
        self.n_updates = 0
        """Gradient updates done, pretraining and online together (drives β and the target copies)."""
        self.n_pretrain_updates = 0
        """Of which pretraining updates."""
        self.n_target_syncs = 0
        """Hard copies of the online network into the target network so far."""
        self.n_observed = 0
        """Agent transitions passed to ``observe``."""
        self.n_skipped_updates = 0
        """Updates not applied because their loss or gradient was not finite (``learn``); saved in
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

    # ------------------------------------------------------------------ replay
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

    # ------------------------------------------------------------------ state of the learner
    def _online_weights(self) -> list[torch.Tensor]:
        """The online network's weights as :attr:`diverged` checks them."""
        return [p.data for p in self.online.parameters()]

    @property
    def diverged(self) -> bool:
        """Whether this learner is stuck: the last ``config.diverged_after_skipped_updates`` updates were
        all skipped, or a weight of either network or Adam's state is not finite (only possible in a
        checkpoint written before the update checked its gradient). Costs one pass over the weights."""
        if self.consecutive_skipped_updates >= self.config.diverged_after_skipped_updates:
            return True
        tensors = self._online_weights() + [p.data for p in self.target.parameters()]
        for state in self.optimizer.state.values():
            tensors += [state[key] for key in ("exp_avg", "exp_avg_sq") if key in state]
        return not all(bool(torch.isfinite(t).all()) for t in tensors)

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

    def sync_target(self) -> None:
        """Hard copy of the online network into the target network."""
        self.target.load_state_dict(self.online.state_dict())
        self.n_target_syncs += 1

    def _count_update(self) -> None:
        """Count an applied update; every ``config.target_update_period`` updates, copy the online network
        into the target network ([DQfD] Algorithm 1)."""
        self.n_updates += 1
        self.consecutive_skipped_updates = 0
        if self.n_updates % self.config.target_update_period == 0:
            self.sync_target()

    def _counters(self) -> dict[str, int]:
        """The counters a checkpoint saves."""
        return {name: getattr(self, name) for name in COUNTERS}

    def _load_counters(self, counters: dict[str, Any]) -> None:
        """Set the counters of a checkpoint (an older one may lack ``n_skipped_updates``: it stays 0)."""
        for name, value in counters.items():
            setattr(self, name, int(value))

    # ------------------------------------------------------------------ training
    def train_step(self, demo_only: bool = False) -> dict[str, float]:
        """Sample, update, re-prioritize: one update of the online phase; returns the loss components.

        The priority of each sampled transition becomes |δ| + ε with δ its one-step TD error before the
        update ([PER] Alg. 1 line 12) and ε by its own part (ε_d or ε_a). ``skipped`` is 1.0 when the
        update was not applied (``learn``); the rows that made it non-finite are then quarantined.
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
        bar = progress_bar(steps, "pretraining", unit="update") if progress else None
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

    def _skip_update(
        self,
        reason: str,
        batch: _Batch,
        rows: torch.Tensor,
        keep: torch.Tensor,
        q_taken: torch.Tensor,
        j_dq: torch.Tensor,
        j_n: torch.Tensor,
        j_e: torch.Tensor,
        per_sample: torch.Tensor,
        abs_td: torch.Tensor,
        margin_weight: float,
        *,
        l2_term: float,
        j_l2: float,
    ) -> tuple[LossInfo, np.ndarray]:
        """Count and report an update that is not applied (non-finite ``reason``); |δ| is NaN on ``rows``
        (to quarantine them) and the loss components are those of the other rows, in float64 (finite),
        with ``l2_term`` the J_L2 added to the loss and ``j_l2`` the J_L2 reported."""
        self.n_skipped_updates += 1
        self.consecutive_skipped_updates += 1
        self._skips_since_warning += 1
        now = time.monotonic()
        if self._last_skip_warning is None or now - self._last_skip_warning >= SKIP_WARNING_INTERVAL_S:
            self._log.warning(
                "%s update skipped: non-finite %s; %d batch row(s) quarantined; %d update(s) skipped "
                "since the last warning, %d in all",
                self._skip_name,
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
                return float(torch.where(where, x.detach().double(), 0.0).sum())

            info = LossInfo(
                loss=total(batch.weights.double() * per_sample.detach().double(), good) / count + l2_term,
                j_dq=total(j_dq, good) / count,
                j_n=total(j_n, good) / count,
                j_e=total(j_e, demo) / max(1, int(demo.sum())),
                j_l2=j_l2,
                demo_fraction=float(batch.is_demo.double().mean()),
                mean_q=total(q_taken, good) / count,
                skipped=1.0,
                margin_weight=margin_weight,
                margin_kept=int((keep & demo).sum()) / max(1, int(demo.sum())),
            )
            td = abs_td.double().cpu().numpy()
        td[rows.cpu().numpy()] = np.nan
        return info, td

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


def update_values(
    batch: _Batch,
    per_sample: torch.Tensor,
    j_dq: torch.Tensor,
    j_n: torch.Tensor,
    j_e: torch.Tensor,
    q_taken: torch.Tensor,
    keep: torch.Tensor,
    j_l2: torch.Tensor | float,
    grad_norm: torch.Tensor,
) -> list[float]:
    """An update's sums as :func:`update_info` reads them (Σ w·J_i, Σ J_DQ, Σ J_n, Σ J_E, Σ Q(s, a),
    demonstration rows, rows J_E kept), then J_L2 and the gradient norm: one reduction, one conversion to
    Python, and one finiteness check for the caller."""
    sums = torch.stack(
        [
            batch.weights * per_sample,
            j_dq,
            j_n,
            j_e,
            q_taken,
            batch.is_demo.to(q_taken.dtype),
            keep.to(q_taken.dtype),
        ]
    ).sum(dim=1)
    return torch.cat([sums, torch.as_tensor(j_l2).reshape(1), grad_norm.reshape(1)]).tolist()


def update_info(values: list[float], size: int, l2_term: float, margin_weight: float) -> LossInfo:
    """The loss components of an applied update over ``size`` rows from its sums ``values``: Σ w·J_i,
    Σ J_DQ, Σ J_n, Σ J_E, Σ Q(s, a), demonstration rows, rows J_E kept, J_L2 as reported, gradient norm;
    ``l2_term`` is the J_L2 the loss adds. J_E is the mean over demonstration rows (0 without any)."""
    weighted, sum_dq, sum_n, sum_e, sum_q, n_demo, n_kept, l2, _ = values
    return LossInfo(
        loss=weighted / size + l2_term,
        j_dq=sum_dq / size,
        j_n=sum_n / size,
        j_e=sum_e / max(1.0, n_demo),
        j_l2=l2,
        demo_fraction=n_demo / size,
        mean_q=sum_q / size,
        margin_weight=margin_weight,
        margin_kept=n_kept / n_demo if n_demo else 1.0,
    )


def poisoned_rows(per_row: Sequence[torch.Tensor], bound: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The rows of a batch that made its update non-finite, bool (B,); at least one.

    A row with a non-finite entry in any of ``per_row`` (tensors whose first dimension is the batch row:
    with finite weights a row's values depend only on its own data) is marked. When every per-row value
    is finite but the summed loss or the gradient norm overflowed, the row with the largest ``bound()`` on
    its gradient contribution (NaN counts as largest) is marked.
    """
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1) for x in per_row]).all(
            dim=0
        )
        rows = ~finite
        if not rows.any():
            rows[int(torch.nan_to_num(bound(), nan=np.inf).argmax())] = True
    return rows
