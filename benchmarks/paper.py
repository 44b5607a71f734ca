"""Reproduce the DQfD paper's claims on Gymnasium tasks, with peer implementations measured alongside.

Hester et al., "Deep Q-learning from Demonstrations", AAAI 2018 (arXiv 1704.03732v4). Arms: DQfD, PDD DQN,
imitation, and the ablations λ2 = 0 and λ1 = 0, on CartPole-v1, Acrobot-v1, MountainCar-v0 and
LunarLander-v3; peers: Stable-Baselines3 DQN and DI-engine's DQfD in their own virtual environments.
Everything is described in docs/paper_reproduction.md.

    .venv/bin/python benchmarks/paper.py                 # full run, about two hours on two cores
    .venv/bin/python benchmarks/paper.py --quick         # CI smoke test, under two minutes
    .venv/bin/python benchmarks/paper.py --tasks CartPole-v1 --seeds 3 --name paper_cartpole
    .venv/bin/python benchmarks/paper.py --rerender benchmarks/results/paper_raw.json

Outputs in benchmarks/results/: {name}.md (command, claims, table, throughput), {name}_{task}.png and
{name}_raw.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from paper.cli import main  # noqa: E402  (the package benchmarks/paper/, after the path set-up)

if __name__ == "__main__":
    main()
