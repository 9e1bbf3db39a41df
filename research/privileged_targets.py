"""Can an operator learn a better teacher's step from ARS's batch? Targets from ARS with 8× the directions.

ARS from 8× its directions (same α, ν, top half of the directions) improves faster per update, so an operator
that could take *that* step from the 16-env batch it reads would beat its teacher. This benchmark fits two
operators on collections of one size (16 ``halfcheetah_vel`` training tasks × 24 updates, one seed), every
training setting the default:

* ``operator (ARS targets)``: on ARS's own runs (8 directions, 16 envs): its target is a function of the batch it
  reads;
* ``operator (8× ARS targets)``: on runs of ARS with 64 directions (128 envs), reading 16 of each batch's envs
  (8 antithetic pairs, ``features.envs=16``) against the 64-direction step: privileged targets;

and applies both as ``metaimprove apply`` does (fresh starts, 16-env batches, B = 61440 env steps), beside
``ars`` and ``oracle: 8× ARS``, the 64-direction teacher run for as many updates as ARS takes within B with its
extra env steps not charged: the headroom. Validation (``train`` tasks 32–35) and ``test`` tasks, 4 × 3 seeds;
writes ``results/privileged_targets.csv``.

    python research/privileged_targets.py [--workers 2] [--runs runs]

The two collections (about 1 and 4 minutes on 2 cores) go to ``--runs``/ars16x24 and ``--runs``/ars64d16x24 and
are reused when complete (``metaimprove collect`` resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import sys
import tempfile
from multiprocessing.pool import Pool
from pathlib import Path

import torch

from metaimprove.data.collect import CollectConfig, collect
from metaimprove.evaluation.stats import Estimate, iqm_ci
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.sim.tasks import TaskConfig
from metaimprove.storage import atomic_write_csv
from metaimprove.teachers import ARS, ARSConfig, recorded_config
from metaimprove.training.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import RESULTS, ROOT, fmt
from heldout import add_arguments, apply_settings, at_budget, final_return, timed_train

FACTOR = 8
"""how many times ARS's directions the privileged teacher uses"""
N_TASKS, ITERATIONS = 16, 24
"""the size of both collections"""


def privileged(config: ARSConfig) -> ARSConfig:
    """ARS with :data:`FACTOR` times as many directions and as many of them kept (same α, ν, rollout length)."""
    return dataclasses.replace(config, n_directions=FACTOR * config.n_directions, top_b=FACTOR * config.top_b)


def collection(teacher: ARSConfig, out: Path) -> Path:
    """The :data:`N_TASKS` × :data:`ITERATIONS` collection of ``teacher`` at ``out`` (collected or resumed)."""
    collect(CollectConfig(task=TaskConfig("halfcheetah_vel"), teacher=teacher, n_tasks=N_TASKS, seeds=1,
                          iterations=ITERATIONS, workers=0, out=str(out)))
    return out


def oracle_run(job: tuple[str, str, int, int, int]) -> float:
    """One run of the privileged teacher (checkpoint, split, task index, seed, updates): return after them."""
    checkpoint, split, task_index, seed, updates = job
    _, ckpt = OperatorCheckpoint.load(checkpoint)
    teacher = ARS(privileged(recorded_config(ckpt.teacher)))
    return final_return(teacher, ckpt, split, task_index, seed, updates * teacher.steps_per_update)


def oracle(pool: Pool, checkpoint: Path, split: str, args: argparse.Namespace,
           updates: int) -> Estimate:
    """IQM [95% CI] of the privileged teacher after ``updates`` updates, on the runs ``apply`` makes."""
    jobs = [(str(checkpoint), split, t, s, updates) for s in range(args.seeds) for t in range(args.tasks)]
    return iqm_ci(torch.tensor(pool.map(oracle_run, jobs)).reshape(args.seeds, args.tasks).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, dataset=False)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="where the two collections go")
    args = parser.parse_args()
    small = collection(ARSConfig(), args.runs / f"ars{N_TASKS}x{ITERATIONS}")
    large = collection(privileged(ARSConfig()), args.runs / f"ars{FACTOR * ARSConfig().n_directions}d"
                                                          f"{N_TASKS}x{ITERATIONS}")
    n_envs = 2 * ARSConfig().n_directions
    est: dict[tuple[str, str], Estimate] = {}
    minutes: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fits = {"operator (ARS targets)": (small, FeatureConfig(), ["operator", "ars"]),
                f"operator ({FACTOR}× ARS targets)": (large, FeatureConfig(n_envs=n_envs), ["operator"])}
        checkpoints: dict[str, Path] = {}
        for name, (dataset, features, methods) in fits.items():
            config = TrainConfig(dataset=str(dataset), features=features, out=str(Path(tmp) / name.replace(" ", "_")))
            checkpoints[name], minutes[name] = timed_train(config)
            for split in ("val", "test"):
                found, budget = at_budget(checkpoints[name], Path(tmp) / f"{name}-{split}".replace(" ", "_"), methods,
                                          apply_settings(args, split))
                est.update({(name if m == "operator" else m, split): e for m, e in found.items()})
                print(f"{split} {name}: {fmt(found['operator'])}", flush=True)
        updates = int(budget) // (n_envs * ARSConfig().n_steps)
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for split in ("val", "test"):
                est[f"oracle: {FACTOR}× ARS", split] = oracle(pool, checkpoints["operator (ARS targets)"], split,
                                                            args, updates)
    what = {"ars": f"the teacher, {n_envs} envs per update",
            f"oracle: {FACTOR}× ARS": f"ARS with {FACTOR}× the directions for ARS's {updates} updates, "
                                      f"{FACTOR - 1}/{FACTOR} of its env steps not charged",
            "operator (ARS targets)": "fitted to ARS's steps",
            f"operator ({FACTOR}× ARS targets)": f"fitted to the {FACTOR}× ARS's steps, reading {n_envs} of its "
                                                 f"{FACTOR * n_envs} envs"}
    rows = [{"method": m, "what": what[m], "val_at_B": fmt(est[m, "val"]), "test_at_B": fmt(est[m, "test"]),
             "val_iqm": round(est[m, "val"].iqm, 2), "test_iqm": round(est[m, "test"].iqm, 2),
             "fit_minutes": round(minutes[m], 1) if m in minutes else "", "budget": int(budget),
             "tasks": args.tasks, "seeds": args.seeds, "collection": f"{N_TASKS} tasks × {ITERATIONS} updates"}
            for m in what]
    atomic_write_csv(RESULTS / "privileged_targets.csv", list(rows[0]), rows)
    print(f"wrote {RESULTS / 'privileged_targets.csv'}")


if __name__ == "__main__":
    main()
