"""Cost of each task family relative to HalfCheetah, measured in one process: per env step of the collector,
and per PPO update (collect + improve with the default teacher config).

Writes ``results/family_cost.csv`` (one row per family), which ``metaimprove tasks`` shows. Rounds are
interleaved over the families and the median ratio kept, so a burst of load from other processes on the
shared machine hits every family alike (in a fresh order each round). Every figure is a ratio to
``halfcheetah_vel`` measured in the same round.

    python benchmarks/family_cost.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Collector
from metaimprove.sim.tasks import get_family, load_families
from metaimprove.teachers import PPO, PPOConfig

RESULTS = Path(__file__).resolve().parent.parent / "results" / "family_cost.csv"
BASELINE = "halfcheetah_vel"
N_ENVS = 8
FIELDS = ("family", "robot", "obs_dim", "act_dim", "episode_length", "step_cost_ratio", "ppo_update_cost_ratio",
          "rounds", "measured", "machine")


def _policy(family: str) -> tuple[Policy, Collector]:
    collector = Collector(get_family(family).task("train", 0), n_envs=N_ENVS, seed=0)
    spec = PolicySpec(collector.sim.obs_dim, collector.sim.act_dim)
    policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(0)), ObsNormalizer.identity(spec.obs_dim))
    return policy, collector


def step_seconds(family: str, n_steps: int) -> float:
    """Seconds per env step of the collector running a fresh (32, 32) policy on ``N_ENVS`` envs."""
    policy, collector = _policy(family)
    start = time.perf_counter()
    collector.collect(policy, n_steps)
    return (time.perf_counter() - start) / (n_steps * N_ENVS)


def ppo_update_seconds(family: str, updates: int) -> float:
    """Seconds per PPO update (its collection included) with the default teacher config."""
    policy, _ = _policy(family)
    teacher = PPO(PPOConfig())
    teacher.start(get_family(family).task("train", 0), policy, seed=0)
    start = time.perf_counter()
    for _ in range(updates):
        teacher.improve(teacher.collect())
    return (time.perf_counter() - start) / updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test, not for results/)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds, n_steps, updates = (1, 64, 1) if args.quick else (5, 256, 2)
    families = sorted(load_families())
    step_ratio: dict[str, list[float]] = {f: [] for f in families}
    ppo_ratio: dict[str, list[float]] = {f: [] for f in families}
    for family in families:  # warm-up: first calls pay for imports, model compilation and caches
        step_seconds(family, 8)
        ppo_update_seconds(family, 1)
    order = np.random.default_rng(0)
    for _ in range(rounds):
        steps, ppos = {}, {}
        for family in order.permutation(families):  # a fresh order each round: no family always goes first
            steps[family], ppos[family] = step_seconds(family, n_steps), ppo_update_seconds(family, updates)
        for family in families:
            step_ratio[family].append(steps[family] / steps[BASELINE])
            ppo_ratio[family].append(ppos[family] / ppos[BASELINE])
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    machine = f"{platform.machine()} {os.cpu_count()} cpu"
    rows = []
    for family in families:
        fam, (policy, _) = get_family(family), _policy(family)
        rows.append({"family": family, "robot": fam.robot, "obs_dim": policy.spec.obs_dim,
                     "act_dim": policy.spec.act_dim, "episode_length": fam.episode_length,
                     "step_cost_ratio": f"{statistics.median(step_ratio[family]):.2f}",
                     "ppo_update_cost_ratio": f"{statistics.median(ppo_ratio[family]):.2f}",
                     "rounds": rounds, "measured": stamp, "machine": machine})
        print(f"{family}: step {rows[-1]['step_cost_ratio']}x, PPO update {rows[-1]['ppo_update_cost_ratio']}x "
              f"{BASELINE}'s")
    if args.quick:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=RESULTS.parent, delete=False, newline="", suffix=".tmp") as tmp:
        writer = csv.DictWriter(tmp, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp.name, RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
