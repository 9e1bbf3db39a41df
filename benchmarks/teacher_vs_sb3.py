"""Our teachers against their trusted references, same hyperparameters, same tasks, ≥ 5 seeds each.

``--teacher ppo`` (default) compares our PPO with Stable-Baselines3's PPO on ``halfcheetah_vel`` train tasks with
8 envs × 256 steps per update, 10 epochs of minibatches of 64, lr 3e-4, γ 0.99, λ 0.95, clip 0.2, no entropy
bonus, vf_coef 0.5, grad-norm 0.5, a [32, 32] tanh actor and a [64, 64] tanh critic, and observation
normalization (SB3: ``VecNormalize(norm_obs=True, norm_reward=False, clip_obs=10)``). The learning curve is the
mean return of the training episodes of each update against env steps.

``--teacher ars`` compares our ARS (V2-t, :class:`~metaimprove.teachers.ARSConfig` defaults: 8 directions, top 4,
α 0.02, ν 0.03, one 256-step episode per perturbed policy) with sb3-contrib's ``ARS`` given the same settings,
its ``MlpPolicy`` made our [32, 32] tanh MLP with clipped (not tanh-squashed) actions, started from our initial
θ (``zero_policy=False``), with the same observation normalization. The learning curve is the mean return of
the 2N perturbed policies' episodes of each update. Differences that remain: sb3-contrib's single-process ARS
evaluates the candidates one after another and updates the normalizer at every step; ours runs the 2N
candidates as one batch with the statistics frozen and folds them in after the update (the original ARS's
per-iteration sync).

Reported, all measured in this one session:

- whether our mean curve lies inside the reference's 95% bootstrap interval (over seeds), as the fraction of
  updates inside, and the final return (mean of the last 5 updates) of both;
- end-to-end env-steps/s of each (construction, collection and updates; no evaluation) and their ratio.

Writes ``<out>.csv`` (curve rows per method, task, seed and update; one row per run with its wall time;
summary rows ``name, value``) and ``<out>.png`` (mean curves with 95% bootstrap bands). In both the reference
is method ``sb3`` (for ARS: sb3-contrib).

Usage::

    python benchmarks/teacher_vs_sb3.py --quick              # ~2 min, writes to a temporary directory
    python benchmarks/teacher_vs_sb3.py                      # PPO, full: 2 tasks × 5 seeds × 64 updates, 10-20 min
    python benchmarks/teacher_vs_sb3.py --teacher ars        # ARS, full: 1 task × 5 seeds × 20 updates, 10-30 min
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from metaimprove.sim.policy import Policy
    from metaimprove.sim.tasks import Task

FAMILY = "halfcheetah_vel"
HIDDEN = (32, 32)
REPO = Path(__file__).resolve().parent.parent
# If both methods were the same algorithm, our mean would fall inside SB3's 95% interval of the mean with
# probability P(|Z| < 1.96/√2) ≈ 0.83 (two independent means of n seeds differ with sd √2·σ/√n).
INSIDE_IF_IDENTICAL = math.erf(1.96 / 2)
FINAL_UPDATES = 5


@dataclass(frozen=True)
class Job:
    """One training run."""

    teacher: str
    """which comparison: a key of COMPARISONS"""
    method: str
    task_index: int
    seed: int
    iterations: int


@dataclass
class RunResult:
    """A run's learning curve and wall time."""

    job: Job
    returns: list[float]
    env_steps: list[int]
    wall_s: float


@dataclass(frozen=True)
class Comparison:
    """One of our teachers against its reference implementation, and the run plan's defaults."""

    ours_label: str
    reference_label: str
    run_reference: Callable[[Task, int, int], tuple[list[float], list[int]]]
    """(task, seed, updates) -> (mean training return per update, env steps after each update)"""
    iterations: int
    """updates per run of the full benchmark"""
    quick_iterations: int
    """updates per run with --quick"""
    tasks: tuple[int, ...]
    """train-task indices of the full benchmark"""
    out: str
    """output prefix under results/ of the full benchmark"""


def _worker_init(workdir: str) -> None:
    import torch

    from metaimprove.sim.envs import route_mujoco_warnings

    torch.set_num_threads(1)  # tiny networks: more threads only add synchronization
    route_mujoco_warnings(Path(workdir))


def run_job(job: Job) -> RunResult:
    """Train one method on one task from one seed; the wall time covers construction and training."""
    from metaimprove.sim.tasks import get_family

    task = get_family(FAMILY).task("train", job.task_index)
    start = time.perf_counter()
    if job.method == "ours":
        returns, steps = _run_ours(job.teacher, task, job.seed, job.iterations)
    else:
        returns, steps = COMPARISONS[job.teacher].run_reference(task, job.seed, job.iterations)
    return RunResult(job, returns, steps, time.perf_counter() - start)


def _initial_policy(task: Task, seed: int) -> Policy:
    """θ⁰ of a run: our initialization for ``seed``, identity normalizer (the references start from it too)."""
    import torch

    from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
    from metaimprove.sim.rollout import Simulator

    sim = Simulator(task, 1, seed)
    spec = PolicySpec(sim.obs_dim, sim.act_dim, HIDDEN)
    return Policy(spec, init_params(spec, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(sim.obs_dim))


def _run_ours(teacher: str, task: Task, seed: int, iterations: int) -> tuple[list[float], list[int]]:
    from metaimprove.teachers import TEACHERS

    config_type, teacher_type = TEACHERS[teacher]
    returns, steps = [], []
    for record in teacher_type(config_type()).run(task, _initial_policy(task, seed), iterations, seed):
        returns.append(record.mean_return)
        steps.append(record.env_steps)
    return returns, steps


def _curve_callback(from_infos: bool) -> Any:
    """An SB3 callback whose ``returns``/``steps`` get, per rollout, its episodes' mean return and the env steps so far.

    ``from_infos`` (PPO): the episodes that reached the time limit, from each step's Monitor infos, as our
    Experience counts them. Otherwise (sb3-contrib's ARS, whose steps carry no infos): the rollout's candidate
    episodes, which its ARS puts into ``ep_info_buffer`` afresh every update.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class RolloutReturns(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: list[float] = []
            self.steps: list[int] = []
            self._episodes: list[float] = []

        def _on_rollout_start(self) -> None:
            self._episodes = []

        def _on_step(self) -> bool:
            if from_infos:
                for info in self.locals["infos"]:
                    if "episode" in info and info.get("TimeLimit.truncated", False):
                        self._episodes.append(float(info["episode"]["r"]))
            return True

        def _on_rollout_end(self) -> None:
            if not from_infos:
                self._episodes = [float(info["r"]) for info in self.model.ep_info_buffer]
            self.returns.append(float(np.mean(self._episodes)) if self._episodes else float("nan"))
            self.steps.append(self.num_timesteps)

    return RolloutReturns()


def _run_sb3_ppo(task: Task, seed: int, iterations: int) -> tuple[list[float], list[int]]:
    import torch.nn as nn
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from metaimprove.sim.envs import make_env

    venv = VecNormalize(DummyVecEnv([lambda: Monitor(make_env(task)) for _ in range(8)]),
                        norm_obs=True, norm_reward=False, clip_obs=10.0)
    model = SB3PPO(
        "MlpPolicy", venv, n_steps=256, batch_size=64, n_epochs=10, learning_rate=3e-4, gamma=0.99,
        gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, seed=seed, device="cpu",
        policy_kwargs=dict(net_arch=dict(pi=list(HIDDEN), vf=[64, 64]), activation_fn=nn.Tanh, log_std_init=0.0),
    )
    callback = _curve_callback(from_infos=True)
    model.learn(total_timesteps=iterations * 8 * 256, callback=callback)
    return callback.returns, callback.steps


def _run_sb3_ars(task: Task, seed: int, iterations: int) -> tuple[list[float], list[int]]:
    import torch
    import torch.nn as nn
    from sb3_contrib import ARS as SB3ARS
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from metaimprove.sim.envs import make_env
    from metaimprove.sim.tasks import get_family
    from metaimprove.teachers import ARSConfig

    cfg = ARSConfig()
    if cfg.n_steps != get_family(FAMILY).episode_length:
        raise ValueError("sb3-contrib's ARS rolls out whole episodes: ARSConfig.n_steps must be the episode length")
    venv = VecNormalize(DummyVecEnv([lambda: make_env(task)]), norm_obs=True, norm_reward=False, clip_obs=10.0)
    model = SB3ARS(
        "MlpPolicy", venv, n_delta=cfg.n_directions, n_top=cfg.top_b, learning_rate=cfg.lr, delta_std=cfg.noise_std,
        zero_policy=False, seed=seed, device="cpu",
        policy_kwargs=dict(net_arch=list(HIDDEN), activation_fn=nn.Tanh, squash_output=False),
    )
    # The same θ⁰ as ours; sb3-contrib's parameter order is ours (W0, b0, W1, b1, ...) without log_std.
    theta = _initial_policy(task, seed).theta
    model.weights = theta[: model.n_params].clone()
    model.policy.load_from_vector(model.weights.numpy())
    callback = _curve_callback(from_infos=False)
    model.learn(total_timesteps=iterations * 2 * cfg.n_directions * cfg.n_steps, callback=callback)
    if torch.equal(model.weights, theta[: model.n_params]):
        raise RuntimeError("sb3-contrib's ARS did not move θ")
    return callback.returns, callback.steps


COMPARISONS = {
    "ppo": Comparison("metaimprove PPO", "SB3 PPO", _run_sb3_ppo, 64, 12, (0, 1), "teacher_vs_sb3"),
    "ars": Comparison("metaimprove ARS", "sb3-contrib ARS", _run_sb3_ars, 20, 3, (0,), "ars_vs_sb3"),
}


def bootstrap_mean_ci(x: np.ndarray, rng: np.random.Generator, reps: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile-bootstrap interval of the mean over axis 0 (seeds) of ``x [seeds, ...]``."""
    idx = rng.integers(0, len(x), size=(reps, len(x)))
    means = x[idx].mean(1)
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def summarize(results: list[RunResult], rng: np.random.Generator) -> tuple[list[tuple[str, str]], dict]:
    """``name: value`` summary lines and the per-task curves for the plot."""
    lines: list[tuple[str, str]] = []
    curves: dict = {}
    tasks = sorted({r.job.task_index for r in results})
    inside_all, ok_final = [], []
    for t in tasks:
        by = {m: sorted((r for r in results if r.job.task_index == t and r.job.method == m), key=lambda r: r.job.seed)
              for m in ("ours", "sb3")}
        ours = np.array([r.returns for r in by["ours"]])
        sb3 = np.array([r.returns for r in by["sb3"]])
        steps = np.array(by["ours"][0].env_steps)
        assert steps.tolist() == by["sb3"][0].env_steps, "the two methods must share the env-step axis"
        lo, hi = bootstrap_mean_ci(sb3, rng)
        ours_lo, ours_hi = bootstrap_mean_ci(ours, rng)
        inside = (ours.mean(0) >= lo) & (ours.mean(0) <= hi)
        inside_all.append(inside)
        curves[t] = {"steps": steps, "ours": (ours.mean(0), ours_lo, ours_hi), "sb3": (sb3.mean(0), lo, hi)}
        final_ours = ours[:, -FINAL_UPDATES:].mean(1)
        final_sb3 = sb3[:, -FINAL_UPDATES:].mean(1)
        f_lo, f_hi = bootstrap_mean_ci(final_sb3, rng)
        fo_lo, fo_hi = bootstrap_mean_ci(final_ours, rng)
        in_final = bool(f_lo <= final_ours.mean() <= f_hi)
        ok_final.append(in_final)
        name = f"task{t}"
        lines += [
            (f"{name}_target_velocity", f"{_target(t):.3f}"),
            (f"{name}_first_return_ours_vs_sb3", f"{ours[:, 0].mean():.1f} vs {sb3[:, 0].mean():.1f}"),
            (f"{name}_final_return_ours", f"{final_ours.mean():.1f} [{fo_lo:.1f}, {fo_hi:.1f}]"),
            (f"{name}_final_return_sb3", f"{final_sb3.mean():.1f} [{f_lo:.1f}, {f_hi:.1f}]"),
            (f"{name}_final_return_ours_inside_sb3_ci", "yes" if in_final else "no"),
            (f"{name}_fraction_updates_inside_sb3_ci", f"{inside.mean():.2f}"),
        ]
    lines += [
        ("seeds", str(len({r.job.seed for r in results}))),
        ("updates_per_run", str(len(results[0].returns))),
        ("env_steps_per_run", str(results[0].env_steps[-1])),
        ("fraction_updates_inside_sb3_ci", f"{np.concatenate(inside_all).mean():.2f}"),
        ("fraction_expected_if_identical", f"{INSIDE_IF_IDENTICAL:.2f}"),
        ("final_return_inside_sb3_ci_all_tasks", "yes" if all(ok_final) else "no"),
    ]
    speed = {}
    for m in ("ours", "sb3"):
        runs = [r for r in results if r.job.method == m]
        speed[m] = sum(r.env_steps[-1] for r in runs) / sum(r.wall_s for r in runs)
        lines.append((f"{m}_env_steps_per_s", f"{speed[m]:.0f}"))
    sb3_runs = {(r.job.task_index, r.job.seed): r for r in results if r.job.method == "sb3"}
    pair = [(a.env_steps[-1] / a.wall_s) / (b.env_steps[-1] / b.wall_s)
            for a in results if a.job.method == "ours" for b in [sb3_runs[(a.job.task_index, a.job.seed)]]]
    lines.append(("speed_ratio_median_over_paired_runs", f"{np.median(pair):.2f}"))
    lines.append(("speed_target_5x_met", "yes" if speed["ours"] / speed["sb3"] >= 5 else "no"))
    lines.append(("speed_ratio_ours_over_sb3", f"{speed['ours'] / speed['sb3']:.2f}"))
    return lines, curves


def _target(task_index: int) -> float:
    from metaimprove.sim.tasks import get_family

    return get_family(FAMILY).task("train", task_index).param("target_velocity")


def write_csv(path: Path, results: list[RunResult], lines: list[tuple[str, str]]) -> None:
    """Curve rows, run rows (wall time) and summary rows in one table, told apart by ``kind``."""
    cols = ["kind", "method", "task", "seed", "iteration", "env_steps", "return", "wall_s", "name", "value"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for r in sorted(results, key=lambda r: (r.job.method, r.job.task_index, r.job.seed)):
            task = f"{FAMILY}/train/{r.job.task_index}"
            for i, (ret, st) in enumerate(zip(r.returns, r.env_steps, strict=True)):
                w.writerow({"kind": "curve", "method": r.job.method, "task": task, "seed": r.job.seed,
                            "iteration": i, "env_steps": st, "return": f"{ret:.3f}"})
            w.writerow({"kind": "run", "method": r.job.method, "task": task, "seed": r.job.seed,
                        "env_steps": r.env_steps[-1], "wall_s": f"{r.wall_s:.2f}"})
        for name, value in lines:
            w.writerow({"kind": "summary", "name": name, "value": value})


def plot(path: Path, curves: dict, comparison: Comparison) -> None:
    """Mean training return vs env steps with 95% bootstrap bands, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (t, c) in zip(axes[0], sorted(curves.items()), strict=True):
        for method, color, label in (("sb3", "tab:blue", comparison.reference_label),
                                     ("ours", "tab:orange", comparison.ours_label)):
            mean, lo, hi = c[method]
            ax.plot(c["steps"], mean, color=color, label=label)
            ax.fill_between(c["steps"], lo, hi, color=color, alpha=0.25)
        ax.set_title(f"{FAMILY}/train/{t} (v* = {_target(t):.2f})")
        ax.set_xlabel("env steps")
        ax.set_ylabel("mean training-episode return")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def same_process_speed(teacher: str, task_index: int, iterations: int, repeats: int = 2) -> list[tuple[str, str]]:
    """env-steps/s of ours and the reference run alternately in this process (``repeats`` runs each), and the ratio."""
    steps = {"ours": 0, "sb3": 0}
    wall = {"ours": 0.0, "sb3": 0.0}
    for _ in range(repeats):
        for method in ("ours", "sb3"):
            r = run_job(Job(teacher, method, task_index, 0, iterations))
            steps[method] += r.env_steps[-1]
            wall[method] += r.wall_s
    speed = {m: steps[m] / wall[m] for m in steps}
    return [("ours_env_steps_per_s_same_process", f"{speed['ours']:.0f}"),
            ("sb3_env_steps_per_s_same_process", f"{speed['sb3']:.0f}"),
            ("speed_ratio_same_process", f"{speed['ours'] / speed['sb3']:.2f}")]


def main() -> None:
    """Run both methods, print ``name: value`` lines (speed ratios last), write the CSV and PNG."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", choices=sorted(COMPARISONS), default="ppo", help="which teacher to check")
    parser.add_argument("--quick", action="store_true", help="1 task, 5 seeds, a few updates (~2 min)")
    parser.add_argument("--tasks", type=int, nargs="+", help="train-task indices (default: per teacher; quick: 0)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--iterations", type=int, help="updates per run (default: per teacher)")
    parser.add_argument("--workers", type=int, default=2, help="processes (the machine has 2 cores)")
    parser.add_argument("--out", type=Path, help="output prefix (default results/<per teacher>; quick: a temp dir)")
    args = parser.parse_args()
    comparison = COMPARISONS[args.teacher]
    tasks = args.tasks or ([0] if args.quick else list(comparison.tasks))
    iterations = args.iterations or (comparison.quick_iterations if args.quick else comparison.iterations)
    out = args.out or (Path(tempfile.mkdtemp(prefix="teacher_vs_sb3_")) / comparison.out if args.quick
                       else REPO / "results" / comparison.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Each (task, seed) pair's reference run next to ours, so both methods see the same machine load.
    jobs = [Job(args.teacher, m, t, s, iterations) for t in tasks for s in range(args.seeds) for m in ("sb3", "ours")]
    workdir = tempfile.mkdtemp(prefix="teacher_vs_sb3_work_")
    # One BLAS/OpenMP thread per worker: two workers already fill the two cores.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers, initializer=_worker_init, initargs=(workdir,)) as pool:
        results = []
        for r in pool.imap_unordered(run_job, jobs):
            results.append(r)
            print(f"# {r.job.method} task {r.job.task_index} seed {r.job.seed}: final {r.returns[-1]:.1f}, "
                  f"{r.env_steps[-1] / r.wall_s:.0f} steps/s ({len(results)}/{len(jobs)})", flush=True)
    lines, curves = summarize(results, np.random.default_rng(0))
    _worker_init(workdir)
    lines += same_process_speed(args.teacher, tasks[0], comparison.quick_iterations)
    lines.insert(0, ("wall_minutes", f"{(time.perf_counter() - start) / 60:.1f}"))
    lines.insert(0, ("teacher", args.teacher))
    write_csv(out.with_suffix(".csv"), results, lines)
    plot(out.with_suffix(".png"), curves, comparison)
    print(f"# wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}; worker logs in {workdir}")
    for name, value in lines:
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
