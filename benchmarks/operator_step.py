"""What one operator application costs against one PPO update on the same batch, and where its time goes.

One application is what ``apply`` runs per batch (:func:`metaimprove.operator.runtime.operator_update`): encode
(θ, τ) into the operator's features, the operator network's forward with the ES step it forms from τ's
perturbations, and the policy θ' that comes out. It runs on the operator's own full-width batch (collected as its
teacher explores); the PPO update runs on PPO's batch, from the same policy, in this process, one torch thread each.

    python benchmarks/operator_step.py [--reps 15] [--profile]

prints ``operator_step_vs_ppo_update: <ratio>``; ``--profile`` prints instead a cProfile summary (the top entries by
own time) of ``--reps`` operator applications.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import OPERATORS

from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule, Explorer, operator_update
from metaimprove.sim.policy import Policy
from metaimprove.sim.rollout import Experience
from metaimprove.sim.tasks import get_family
from metaimprove.teachers import make_teacher

SHIPPED = OPERATORS / "halfcheetah_vel.safetensors"
"""the operator measured unless told: the shipped HalfCheetah-velocity one"""
FAMILY = "halfcheetah_vel"
"""the family of the task it is measured on (test task 0)"""


def operator_application(operator: Path = SHIPPED, family: str = FAMILY,
                         ask_k: int | None = None) -> tuple[Callable[[], Policy], Policy, OperatorCheckpoint]:
    """One operator application ready to run: a call that applies ``operator`` (asked for ``ask_k``, default the
    checkpoint's) once to its own full-width batch from its start policy on ``family``'s test task 0, that start
    policy and the checkpoint. Every call draws the same transitions (the generator is reseeded)."""
    op, ckpt = OperatorCheckpoint.load(operator)
    task = get_family(family).task("test", 0)
    start = ckpt.fresh_policy(0)
    own: Experience = Explorer(ckpt, task, start, 0, BatchSchedule.of(ckpt, []))(start, 0)
    generator = torch.Generator()
    update = operator_update(op, ckpt, task, ckpt.ask(ask_k), generator)

    def apply_once() -> Policy:
        generator.manual_seed(0)
        return update(start, own)

    return apply_once, start, ckpt


def operator_step_vs_ppo_update(reps: int = 15, operator: Path = SHIPPED, family: str = FAMILY,
                                ask_k: int | None = None) -> float:
    """Median wall time of one operator application (:func:`operator_application`) over one PPO update on PPO's
    batch from the same policy, ``reps`` of each interleaved, in this process, one torch thread each."""
    torch.set_num_threads(1)
    apply_once, start, ckpt = operator_application(operator, family, ask_k)
    task = get_family(family).task("test", 0)
    ppo = make_teacher(ckpt.teacher, "ppo")
    ppo.start(task, start, seed=0)
    batch = ppo.collect()
    op_times, ppo_times = [], []
    for _ in range(reps):
        begin = time.perf_counter()
        apply_once()
        op_times.append(time.perf_counter() - begin)
        ppo.start(task, start, seed=0)  # every timed update is the first one from the same start
        begin = time.perf_counter()
        ppo.improve(batch)
        ppo_times.append(time.perf_counter() - begin)
    return float(np.median(op_times) / np.median(ppo_times))


def profile(reps: int, top: int = 20) -> None:
    """Print the ``top`` entries by own time of ``reps`` operator applications under cProfile, one torch thread."""
    torch.set_num_threads(1)
    apply_once, _, _ = operator_application()
    apply_once()  # warm: first-call costs are not the step's
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(reps):
        apply_once()
    profiler.disable()
    pstats.Stats(profiler).strip_dirs().sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15, help="applications (and PPO updates) timed")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary of the application instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.reps)
    else:
        print(f"operator_step_vs_ppo_update: {operator_step_vs_ppo_update(args.reps):.3f}")


if __name__ == "__main__":
    main()
