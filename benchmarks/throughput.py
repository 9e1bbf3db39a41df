"""Collector throughput against a raw ``mj_step`` loop on the same model, and its scaling to 2 workers.

Prints one ``name: value`` line per figure and appends them to ``results/throughput.csv``. Every figure
is a ratio measured in this one run: absolute env-steps/s on a shared machine are noise. Worker scaling
is measured for the process pool (``collect executor=local``) and, when Ray is installed, for Ray tasks
on a local Ray instance (``collect executor=ray``): the same collector, one task per worker. The
machine these figures come from has 2 CPU cores shared with other jobs, so 2 workers can at best double.

    python benchmarks/throughput.py [--quick] [--no-ray]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import multiprocessing as mp
import platform
import time
from datetime import UTC, datetime

import mujoco
import numpy as np
import torch
from common import RESULTS, write_rows

from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import FRAME_SKIP, Collector
from metaimprove.sim.tasks import build_model, get_family

THROUGHPUT = RESULTS / "throughput.csv"
N_ENVS = 8


def _task():
    return get_family("halfcheetah_vel").task("train", 0)


def raw_loop(n_steps: int) -> float:
    """Env-steps/s of a bare ``mj_step`` loop (no observation, reward or policy) on the task's model."""
    model = build_model(_task())
    data = mujoco.MjData(model)
    actions = np.random.default_rng(0).uniform(-1, 1, (n_steps, model.nu))
    start = time.perf_counter()
    for a in actions:
        data.ctrl[:] = a
        mujoco.mj_step(model, data, nstep=FRAME_SKIP)
    return n_steps / (time.perf_counter() - start)


def collector(n_steps: int, seed: int = 0) -> float:
    """Env-steps/s of the collector running a policy (inference, rewards, episode bookkeeping included)."""
    torch.set_num_threads(1)
    task = _task()
    spec = PolicySpec(17, 6)
    policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(17))
    col = Collector(task, n_envs=N_ENVS, seed=seed)
    length = get_family(task.family).episode_length
    batches = max(1, n_steps // (N_ENVS * length))
    start = time.perf_counter()
    for _ in range(batches):
        col.collect(policy, length)
    return batches * N_ENVS * length / (time.perf_counter() - start)


def _worker(args: tuple[int, int]) -> float:
    return collector(*args)


def workers(n_workers: int, n_steps: int, repeats: int = 3) -> float:
    """Total env-steps/s of ``n_workers`` collector processes running at once (median of ``repeats``)."""
    rates = []
    with mp.get_context("spawn").Pool(n_workers) as pool:
        pool.map(_worker, [(2048, i) for i in range(n_workers)])  # warm-up: imports, model compile
        for _ in range(repeats):
            start = time.perf_counter()
            pool.map(_worker, [(n_steps, i) for i in range(n_workers)])
            rates.append(n_workers * n_steps / (time.perf_counter() - start))
    return float(np.median(rates))


def ray_workers(n_workers: int, n_steps: int, repeats: int = 3) -> float:
    """Total env-steps/s of ``n_workers`` collector Ray tasks running at once on a local ``n_workers``-CPU Ray."""
    import ray

    ray.init(num_cpus=n_workers, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        remote = ray.remote(num_cpus=1)(collector)
        ray.get([remote.remote(2048, i) for i in range(n_workers)])  # warm-up: worker start, imports, compile
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            ray.get([remote.remote(n_steps, i) for i in range(n_workers)])
            rates.append(n_workers * n_steps / (time.perf_counter() - start))
    finally:
        ray.shutdown()
    return float(np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (noisier)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray figures even if Ray is installed")
    args = parser.parse_args()
    n = 40_960 if args.quick else 163_840
    collector(2048)  # warm-up
    raw = float(np.median([raw_loop(n // 4) for _ in range(3)]))
    col = float(np.median([collector(n // 4, seed=s) for s in range(3)]))
    one = workers(1, n // 2)
    two = workers(2, n // 2)
    figures = {
        "raw_mj_step_env_steps_per_s": raw,
        "collector_env_steps_per_s": col,
        "collector_vs_raw_ratio": col / raw,
        "workers_1_env_steps_per_s": one,
        "workers_2_env_steps_per_s": two,
        "scaling_1_to_2_workers": two / one,
    }
    if not args.no_ray and importlib.util.find_spec("ray") is not None:
        ray_one, ray_two = ray_workers(1, n // 2), ray_workers(2, n // 2)
        ray = {"ray_workers_1_env_steps_per_s": ray_one, "ray_workers_2_env_steps_per_s": ray_two,
               "ray_scaling_1_to_2_workers": ray_two / ray_one}
        figures |= ray
        # Ray collection is a reliability/scale-out figure too (issue: every such figure in reliability.csv).
        note = f"local Ray instance, num_cpus = workers, {n // 2} collector env steps per worker, median of 3"
        write_rows("ray_throughput", {k: (f"{v:.4g}", note) for k, v in ray.items()})
    THROUGHPUT.parent.mkdir(exist_ok=True)
    new = not THROUGHPUT.exists()
    with THROUGHPUT.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["date", "host", "mode", "name", "value"])
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for name, value in figures.items():
            writer.writerow([stamp, platform.node(), "quick" if args.quick else "full", name, f"{value:.4g}"])
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")


if __name__ == "__main__":
    main()
