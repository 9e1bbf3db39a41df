"""Tune PPO on validation tasks with the effort ARS got, and write the chosen setting as a teacher config.

Each setting of :data:`SETTINGS` runs PPO from ``apply``'s fresh starts (the shipped operator's policy spec) for B env
steps on validation tasks: ``halfcheetah_vel`` ``train`` tasks from :data:`VALIDATION_START` on, which no collection
holds. Each run's deterministic return at B and its start's return (``apply``'s evaluation) are appended to
``results/tune_ppo.csv`` as the run ends, so a rerun resumes where the last one stopped.

The selection rule, fixed before any result: per task, each run's return at B is normalized to 0 at the task's start
return (the mean over its seeds) and 1 at the best setting's mean return on that task; the chosen setting has the
highest mean normalized score over every (task, seed); ties go to the setting listed first. It is written to
``configs/teacher/ppo_tuned.yaml`` (``metaimprove ... teacher=ppo_tuned``) and summarized in
``results/tune_ppo_summary.csv`` with task-then-seed bootstrap CIs.

    python benchmarks/tune_ppo.py [--tasks 8] [--seeds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor

import yaml
from common import BUDGET, OPERATORS, RESULTS, ROOT, fresh_start_run

from metaimprove.evaluation.stats import normalize, score_ci
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.sim.tasks import get_family
from metaimprove.storage import atomic_write_csv
from metaimprove.teachers import PPO, PPOConfig

FAMILY = "halfcheetah_vel"
VALIDATION_START = 32
"""the first validation task: the shipped operator's collection holds train tasks 0-31"""
SETTINGS: dict[str, dict[str, object]] = {
    "default": {},
    "lr_1e-3": {"lr": 1e-3},
    "log_std_-0.5": {"log_std_init": -0.5},
    "log_std_-1": {"log_std_init": -1.0},
    "log_std_-0.5_lr_1e-3": {"log_std_init": -0.5, "lr": 1e-3},
    "batch_1024": {"n_envs": 4},
    "batch_1024_lr_1e-3_log_std_-0.5": {"n_envs": 4, "lr": 1e-3, "log_std_init": -0.5},
    "epochs_5_lr_1e-3": {"n_epochs": 5, "lr": 1e-3},
    "batch_512_log_std_-0.5": {"n_envs": 2, "log_std_init": -0.5},
    "epochs_20_log_std_-0.5": {"n_epochs": 20, "log_std_init": -0.5},
}
"""PPO's settings tried, each as its changes to the defaults (SB3's): log-std init, learning rate, batch, epochs"""
RUNS = RESULTS / "tune_ppo.csv"
SUMMARY = RESULTS / "tune_ppo_summary.csv"
TUNED = ROOT / "configs" / "teacher" / "ppo_tuned.yaml"
FIELDS = ["setting", "task", "seed", "budget", "start_return", "return_at_budget"]


def run(setting: str, task_index: int, seed: int, budget: int) -> dict[str, object]:
    """One PPO run of ``setting`` from run ``seed``'s fresh start on validation task ``task_index``."""
    _, ckpt = OperatorCheckpoint.load(OPERATORS / f"{FAMILY}.safetensors")
    task = get_family(FAMILY).task("train", VALIDATION_START + task_index)
    start, final = fresh_start_run(PPO(PPOConfig(**SETTINGS[setting])), ckpt, task, seed, budget)  # type: ignore[arg-type]
    return {"setting": setting, "task": task.name, "seed": seed, "budget": budget, "start_return": start,
            "return_at_budget": final}


def done_runs(budget: int) -> list[dict[str, str]]:
    """The runs ``results/tune_ppo.csv`` already holds at ``budget``."""
    if not RUNS.exists():
        return []
    with RUNS.open() as f:
        return [r for r in csv.DictReader(f) if int(r["budget"]) == budget]


def choose(rows: list[dict[str, str]]) -> tuple[str, list[dict[str, object]]]:
    """The selection rule of the module docstring: the chosen setting and every setting's summary row."""
    by_task: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    scores: dict[str, dict[tuple[str, int], float]] = {s: {} for s in SETTINGS}
    for task, mine in by_task.items():
        starts = [float(r["start_return"]) for r in mine if r["setting"] == "default"]
        start = sum(starts) / len(starts)
        means = {s: [float(r["return_at_budget"]) for r in mine if r["setting"] == s] for s in SETTINGS}
        reference = max(sum(v) / len(v) for v in means.values())
        for r in mine:
            scores[r["setting"]][task, int(r["seed"])] = float(normalize([float(r["return_at_budget"])], start,
                                                                         reference)[0])
    summary = []
    for setting, changes in SETTINGS.items():
        est = score_ci(scores[setting])
        summary.append({"setting": setting, "changes": yaml.safe_dump(changes, default_flow_style=True).strip(),
                        "normalized_score": round(est.value, 4),
                        "ci": f"{est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]", "runs": est.n_runs})
    best = max(summary, key=lambda r: r["normalized_score"])  # max keeps the first of equals
    return str(best["setting"]), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="validation tasks")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per task")
    parser.add_argument("--budget", type=int, default=BUDGET, help="B in env steps per run")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    done = {(r["setting"], r["task"], int(r["seed"])) for r in done_runs(args.budget)}
    family = get_family(FAMILY)
    jobs = [(s, t, seed, args.budget) for t in range(args.tasks) for seed in range(args.seeds) for s in SETTINGS
            if (s, family.task("train", VALIDATION_START + t).name, seed) not in done]
    print(f"{len(done)} runs done, {len(jobs)} to go", flush=True)
    new = not RUNS.exists()
    with RUNS.open("a", newline="") as f, ProcessPoolExecutor(args.workers, mp.get_context("spawn")) as pool:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for i, row in enumerate(pool.map(run, *zip(*jobs, strict=True)) if jobs else [], 1):
            writer.writerow(row)
            f.flush()
            print(f"{i}/{len(jobs)} {row['setting']} {row['task']} s{row['seed']}: {row['return_at_budget']:.1f}",
                  flush=True)
    rows = done_runs(args.budget)
    complete = len(rows) == args.tasks * args.seeds * len(SETTINGS)
    if not complete:
        sys.exit(f"{len(rows)} of {args.tasks * args.seeds * len(SETTINGS)} runs in {RUNS}: rerun to finish")
    chosen, summary = choose(rows)
    atomic_write_csv(SUMMARY, list(summary[0]), summary)
    command = f"python benchmarks/tune_ppo.py --tasks {args.tasks} --seeds {args.seeds} --budget {args.budget}"
    TUNED.write_text(f"# PPO tuned on validation tasks (setting {chosen}), written by\n# {command}\n"
                     + yaml.safe_dump({"defaults": ["ppo", "_self_"], **SETTINGS[chosen]}, sort_keys=False))
    for r in summary:
        print(f"{r['setting']}: {r['ci']}{'  <- chosen' if r['setting'] == chosen else ''}")
    print(f"chosen: {chosen} -> {TUNED.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
