"""Collector throughput against a raw ``mj_step`` loop on the same model, its scaling to 2 threads in one process
and to 2 worker processes, the cost of one operator application against one PPO update, the outcome stage's
env-steps/s against the collector's on a batch as wide as its population's, and, with ``--quickstart``, the README's
main job timed from a fresh clone.

Prints one ``name: value`` line per figure and appends them to ``results/throughput.csv``, each row with the
instruction set torch's CPU kernels use (:data:`COLUMNS`). Every figure is a ratio measured in this one run: absolute
env-steps/s on a shared machine are noise. The collector runs at two
widths: 8 envs (an evaluation's 8 episodes) and 64 (the ARS teacher's 2 × 32 directions); per-step Python costs the
same at both, so it weighs less at 64. Thread scaling is one process stepping its batch on 1 and on 2 threads
(``threads=``); worker scaling is measured for the process pool (``collect executor=local``) and, when Ray is
installed, for Ray tasks on a local Ray instance (``collect executor=ray``): the same collector, one task per
worker. The outcome stage's figure runs one task of a generation (:data:`POPULATION` copies of the shipped operator
beside its teacher, :data:`OUTCOME_APPLICATIONS` applications on the operator's batch schedule, then the evaluation
episodes), every simulated env step counted, against the collector stepping all of the population's envs at once.
The machine these figures come from has 2 CPU cores shared with other jobs, so 2 can at best double.
``--quickstart`` clones HEAD into a temporary directory and runs the README's main-job command there (a fresh
virtual environment, the install, ``metaimprove pipeline teacher=ars``), timing it in minutes.

    python benchmarks/throughput.py [--quick] [--no-ray] [--quickstart]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import mujoco
import numpy as np
import torch
from common import OPERATORS, RESULTS, ROOT, write_rows

from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import EVAL_ENVS, FRAME_SKIP, Collector, set_threads
from metaimprove.sim.tasks import build_model, get_family
from metaimprove.training.outcome import task_outcome

THROUGHPUT = RESULTS / "throughput.csv"
COLUMNS = ("date", "host", "cpu_capability", "mode", "name", "value")
"""``throughput.csv``'s columns; ``cpu_capability`` is the instruction set torch's CPU kernels use
(``torch.backends.cpu.get_cpu_capability()``, ``unrecorded`` in rows from before it was recorded): the operator
application's ratio to a PPO update depends on it"""
N_ENVS = 8
"""the collector's width for the historic figures: an evaluation's episodes"""
WIDE = 64
"""the ARS teacher's width (2 × 32 directions)"""
POPULATION = 16
"""operators per generation in the outcome stage's figure (``outcome popsize``'s default)"""
OUTCOME_APPLICATIONS = 12
"""applications per run in the outcome stage's figure: the warm-up's 8 narrow batches and 4 full ones"""
MAIN_JOB = "Run the main job end to end"
"""the README paragraph whose command block ``--quickstart`` runs"""


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


def collector(n_steps: int, seed: int = 0, n_envs: int = N_ENVS, threads: int = 1) -> float:
    """Env-steps/s of the collector running a policy (inference, rewards, episode bookkeeping included) on
    ``n_envs`` envs stepped on ``threads`` threads."""
    torch.set_num_threads(1)
    set_threads(threads)
    task = _task()
    spec = PolicySpec(17, 6)
    policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(17))
    col = Collector(task, n_envs=n_envs, seed=seed)
    length = get_family(task.family).episode_length
    batches = max(1, n_steps // (n_envs * length))
    start = time.perf_counter()
    for _ in range(batches):
        col.collect(policy, length)
    rate = batches * n_envs * length / (time.perf_counter() - start)
    set_threads(1)
    return rate


def median_collector(n_steps: int, n_envs: int, threads: int = 1) -> float:
    """The median of three collector measurements, seeds 0-2."""
    return float(np.median([collector(n_steps, s, n_envs, threads) for s in range(3)]))


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


def operator_step_vs_ppo_update() -> float:
    """``benchmarks/operator_step.py``'s figure: one operator application over one PPO update on the same batch, in a
    process of its own (benchmarks import only ``common``, not each other)."""
    script = ROOT / "benchmarks" / "operator_step.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    figures = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    if done.returncode != 0 or "operator_step_vs_ppo_update" not in figures:
        raise SystemExit(f"{script.name} failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return float(figures["operator_step_vs_ppo_update"])


def main_job_command(readme: Path = ROOT / "README.md") -> str:
    """The README's main-job command: the first ``bash`` block after the :data:`MAIN_JOB` paragraph."""
    text = readme.read_text()
    if MAIN_JOB not in text:
        raise SystemExit(f"README.md has no paragraph '{MAIN_JOB}': --quickstart runs the command under it")
    block = text.split(MAIN_JOB, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip()


def quickstart_minutes() -> float:
    """Minutes the README's main-job command takes in a fresh clone of HEAD (its install included)."""
    command = main_job_command()
    with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
        clone = Path(tmp) / "metaimprove"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        start = time.perf_counter()
        done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True)
        minutes = (time.perf_counter() - start) / 60
    if done.returncode != 0:
        raise SystemExit(f"the README's main job failed (exit {done.returncode}): "
                         f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return minutes


def outcome_vs_collector() -> float:
    """The outcome stage's env-steps/s (every batch and evaluation episode of one task of a generation) over the
    collector's on the same batches: for each width of the operator's schedule, :data:`POPULATION` operators and the
    teacher side by side, and the evaluation's episodes on :data:`~metaimprove.sim.rollout.EVAL_ENVS` envs."""
    torch.set_num_threads(1)
    op, ckpt = OperatorCheckpoint.load(OPERATORS / "halfcheetah_vel.safetensors")
    begin = time.perf_counter()
    run = task_outcome([op] * POPULATION, ckpt, _task(), 0, ckpt.fresh_policy(0), OUTCOME_APPLICATIONS, ckpt.ask(),
                       episodes=4)
    seconds = time.perf_counter() - begin
    schedule, length = BatchSchedule.of(ckpt), get_family("halfcheetah_vel").episode_length
    steps, by_width = 0, {}
    for _ in range(OUTCOME_APPLICATIONS):
        width = (POPULATION + 1) * schedule.envs_at(steps)
        by_width[width] = by_width.get(width, 0) + width * schedule.n_steps
        steps += schedule.batch_at(steps)
    by_width[EVAL_ENVS] = by_width.get(EVAL_ENVS, 0) + run.env_steps - sum(by_width.values())
    baseline = sum(n / collector(max(n, width * length), n_envs=width) for width, n in by_width.items())
    return baseline / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (noisier)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray figures even if Ray is installed")
    parser.add_argument("--quickstart", action="store_true",
                        help="also time the README's main job from a fresh clone (several minutes)")
    args = parser.parse_args()
    if THROUGHPUT.exists() and THROUGHPUT.read_text().splitlines()[:1] != [",".join(COLUMNS)]:
        raise SystemExit(f"{THROUGHPUT} does not start with the header {','.join(COLUMNS)}: add the missing columns "
                         "(cpu_capability: unrecorded) to its rows, or move it aside; nothing measured")
    n = 40_960 if args.quick else 163_840
    collector(2048)  # warm-up
    raw = float(np.median([raw_loop(n // 4) for _ in range(3)]))
    col = median_collector(n // 4, N_ENVS)
    wide = median_collector(n // 4, WIDE)
    wide_two = median_collector(n // 4, WIDE, threads=2)
    narrow_two = median_collector(n // 4, N_ENVS, threads=2)
    one = workers(1, n // 2)
    two = workers(2, n // 2)
    figures = {
        "raw_mj_step_env_steps_per_s": raw,
        "collector_env_steps_per_s": col,
        "collector_vs_raw_ratio": col / raw,
        f"collector_vs_raw_ratio_{WIDE}_envs": wide / raw,
        "scaling_1_to_2_threads": wide_two / wide,
        f"scaling_1_to_2_threads_{N_ENVS}_envs": narrow_two / col,
        "workers_1_env_steps_per_s": one,
        "workers_2_env_steps_per_s": two,
        "scaling_1_to_2_workers": two / one,
        "operator_step_vs_ppo_update": operator_step_vs_ppo_update(),
        "outcome_vs_collector": outcome_vs_collector(),
    }
    if not args.no_ray and importlib.util.find_spec("ray") is not None:
        ray_one, ray_two = ray_workers(1, n // 2), ray_workers(2, n // 2)
        ray = {"ray_workers_1_env_steps_per_s": ray_one, "ray_workers_2_env_steps_per_s": ray_two,
               "ray_scaling_1_to_2_workers": ray_two / ray_one}
        figures |= ray
        # Ray collection is a reliability/scale-out figure too (issue: every such figure in reliability.csv).
        note = f"local Ray instance, num_cpus = workers, {n // 2} collector env steps per worker, median of 3"
        write_rows("ray_throughput", {k: (f"{v:.4g}", note) for k, v in ray.items()})
    if args.quickstart:
        figures["quickstart_minutes"] = quickstart_minutes()
    THROUGHPUT.parent.mkdir(exist_ok=True)
    new = not THROUGHPUT.exists()
    with THROUGHPUT.open("a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if new:
            writer.writerow(COLUMNS)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        capability = torch.backends.cpu.get_cpu_capability()
        for name, value in figures.items():
            writer.writerow([stamp, platform.node(), capability, "quick" if args.quick else "full", name,
                             f"{value:.4g}"])
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")


if __name__ == "__main__":
    main()
