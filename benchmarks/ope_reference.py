"""Open Bandit Pipeline's IPS, SNIPS and DR on seeded synthetic logged-bandit data, written as a fixture.

Run with the OBP virtual environment's Python (set-up: docs/off_policy_evaluation.md, "The OBP check"):

    benchmarks/work/venv-obp/bin/python benchmarks/ope_reference.py

It writes tests/agent/fixtures/ope_obp_reference.json: for each case the inputs (rewards, logged actions
and propensities, the full logging and target distributions, the reward model's predictions) and OBP's
point estimates and bootstrap intervals. tests/agent/test_off_policy.py checks agent/off_policy.py against
it. Seeds are fixed, so a rerun writes the same file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import obp
from obp.dataset import SyntheticBanditDataset
from obp.ope import DoublyRobust, InverseProbabilityWeighting, SelfNormalizedInverseProbabilityWeighting

OUT = Path(__file__).resolve().parent.parent / "tests" / "agent" / "fixtures" / "ope_obp_reference.json"
N_ROUNDS = 200
N_ACTIONS = 5
N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 7
ALPHA = 0.05

# (name, dataset seed, target inverse temperature on the true expected reward, deficient actions, clip)
CASES = [
    ("near", 11, 1.5, 0, None),  # target a little sharper than the logging softmax (β = 1)
    ("far", 12, 8.0, 0, None),  # nearly greedy target: large weights, small ESS
    ("clipped", 13, 8.0, 0, 1.2),  # the same distance with weights clipped at 1.2 (OBP's lambda_)
    ("deficient", 14, 1.5, 2, None),  # the logging policy never takes 2 of the 5 actions in each round
]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def interval(result: dict[str, float]) -> list[float]:
    """OBP's interval dict as [lower, upper]."""
    level = 100 * (1.0 - ALPHA)
    return [float(result[f"{level}% CI (lower)"]), float(result[f"{level}% CI (upper)"])]


def case(name: str, seed: int, target_beta: float, deficient: int, clip: float | None) -> dict[str, Any]:
    """One dataset, OBP's estimates on it and everything needed to recompute them."""
    dataset = SyntheticBanditDataset(
        n_actions=N_ACTIONS, dim_context=4, reward_type="binary", beta=1.0,
        n_deficient_actions=deficient, random_state=seed,
    )  # fmt: skip
    fb = dataset.obtain_batch_bandit_feedback(n_rounds=N_ROUNDS)
    n = fb["n_rounds"]
    expected = fb["expected_reward"]
    action_dist = softmax(target_beta * expected)[:, :, None]
    # A deliberately imperfect reward model: the truth plus seeded noise, clipped to [0, 1].
    noise = np.random.default_rng(seed).normal(0.0, 0.1, size=expected.shape)
    q_hat = np.clip(expected + noise, 0.0, 1.0)[:, :, None]
    lam = np.inf if clip is None else clip
    common = {
        "reward": fb["reward"],
        "action": fb["action"],
        "pscore": fb["pscore"],
        "action_dist": action_dist,
    }
    boot = {"alpha": ALPHA, "n_bootstrap_samples": N_BOOTSTRAP, "random_state": BOOTSTRAP_SEED}
    ipw = InverseProbabilityWeighting(lambda_=lam)
    snipw = SelfNormalizedInverseProbabilityWeighting()
    dr = DoublyRobust(lambda_=lam)
    obp_out = {
        "ips": ipw.estimate_policy_value(**common),
        "ips_interval": interval(ipw.estimate_interval(**common, **boot)),
        "snips": snipw.estimate_policy_value(**common),
        "snips_interval": interval(snipw.estimate_interval(**common, **boot)),
        "dr": dr.estimate_policy_value(**common, estimated_rewards_by_reg_model=q_hat),
        "dr_interval": interval(dr.estimate_interval(**common, estimated_rewards_by_reg_model=q_hat, **boot)),
        "ground_truth": dataset.calc_ground_truth_policy_value(expected, action_dist),
    }
    return {
        "name": name,
        "dataset_seed": seed,
        "target_beta": target_beta,
        "n_deficient_actions": deficient,
        "clip": clip,
        "inputs": {
            "reward": fb["reward"].astype(float).tolist(),
            "action": fb["action"].astype(int).tolist(),
            "pscore": fb["pscore"].tolist(),
            "logging_dist": fb["pi_b"][:, :, 0].tolist(),
            "target_dist": action_dist[:, :, 0].tolist(),
            "q_hat": q_hat[:, :, 0].tolist(),
        },
        "obp": {k: (v if isinstance(v, list) else float(v)) for k, v in obp_out.items()},
        "n": int(n),
    }


def main() -> None:
    """Write the fixture."""
    payload = {
        "generated_by": "benchmarks/work/venv-obp/bin/python benchmarks/ope_reference.py",
        "obp_version": obp.__version__,
        "numpy_version": np.__version__,
        "python": sys.version.split()[0],
        "alpha": ALPHA,
        "n_bootstrap": N_BOOTSTRAP,
        "bootstrap_seed": BOOTSTRAP_SEED,
        "cases": [case(*c) for c in CASES],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, separators=(",", ":")) + "\n")  # compact: about 250 KB
    for c in payload["cases"]:
        o = c["obp"]
        print(
            f"{c['name']:<9} IPS {o['ips']:.5f} SNIPS {o['snips']:.5f} DR {o['dr']:.5f} "
            f"truth {o['ground_truth']:.5f}"
        )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
