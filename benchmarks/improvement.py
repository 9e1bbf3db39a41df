"""Does the operator improve tasks it never saw, and with how many env steps compared with PPO?

Runs ``metaimprove apply`` (operator, PPO from the same start, no update) on held-out ``test`` tasks,
then prints one ``name: value`` line per figure and writes ``results/improvement.csv`` (the curves),
``results/improvement.png`` and ``results/improvement_summary.csv``:

* ``heldout_gain_iqm``: the operator's return gain (final − start) over (task, seed) runs, IQM [95% CI]
* ``steps_ratio_to_ppo``: env steps the operator needs to reach PPO's IQM return at the budget, over PPO's
* ``return_ratio_at_budget``: the operator's IQM return gain at the budget over PPO's (1 = as much as PPO;
  a ratio of gains, because raw returns of these tasks are negative)
* ``operator_step_vs_ppo_update_time``: wall time of one operator application over one PPO update, same batch,
  same process (median of 15)

    python benchmarks/improvement.py [--quick] [--operator results/operators/halfcheetah_vel.safetensors]
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metaimprove.apply import ApplyConfig, apply, start_policy, teacher_config
from metaimprove.features import encode, stack
from metaimprove.operator import OperatorCheckpoint
from metaimprove.plot import plot_curves, read_curves
from metaimprove.stats import Curves, common_grid, curve_band, iqm_ci, reach_ratio, value_at
from metaimprove.tasks import TaskConfig, get_family
from metaimprove.teachers import PPO

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def gains(curves: Curves, method: str) -> np.ndarray:
    """Final minus starting return of every run of ``method``, shaped [seeds, tasks]."""
    runs = curves.where(method=method).runs()
    return np.array([[r[-1] - r[0] for _, _, r in runs[task]] for task in runs]).T


def step_time_ratio(operator_path: str, family: str, ask_k: int, reps: int = 15) -> float:
    """Median wall time of one operator application (encode τ + forward) over one PPO update, both on the
    same batch, in this process, one thread each."""
    torch.set_num_threads(1)
    op, ckpt = OperatorCheckpoint.load(operator_path)
    task = get_family(family).task("test", 0)
    start = start_policy(ckpt, 0)
    ppo = PPO(teacher_config(ckpt))
    ppo.start(task, start, seed=0)
    batch = ppo.collect()
    ask = ckpt.default_ask(ask_k).unsqueeze(0)
    generator = torch.Generator().manual_seed(0)
    op_times, ppo_times = [], []
    for _ in range(reps):
        begin = time.perf_counter()
        with torch.no_grad():
            op(stack([encode(start, batch, ckpt.features, generator)]), ask)
        op_times.append(time.perf_counter() - begin)
        ppo.start(task, start, seed=0)  # every timed update is the first one from the same start
        begin = time.perf_counter()
        ppo.improve(batch)
        ppo_times.append(time.perf_counter() - begin)
    return float(np.median(op_times) / np.median(ppo_times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="10 applications, outputs in a temporary directory (under 10 minutes on 2 cores)")
    parser.add_argument("--operator", default=str(RESULTS / "operators" / "halfcheetah_vel.safetensors"))
    parser.add_argument("--family", default="halfcheetah_vel")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--applications", type=int, default=None)
    parser.add_argument("--ask-k", type=int, default=4,
                        help="jump size to ask for (4 was chosen on validation tasks train/32-35, not on test)")
    args = parser.parse_args()
    applications = args.applications or (10 if args.quick else 30)
    run_dir = Path(tempfile.mkdtemp(prefix="improvement-"))
    config = ApplyConfig(operator_path=args.operator, out=str(run_dir), task=TaskConfig(args.family), split=args.split,
                         n_tasks=args.tasks, seeds=args.seeds, applications=applications, ask_k=args.ask_k)
    apply(config)
    curves = read_curves([run_dir / "curves.csv"])
    grid = common_grid(curves)
    bands = {m: curve_band(curves.where(method=m), grid) for m in curves.methods()}
    budget = float(grid[-1])
    gain = iqm_ci(gains(curves, "operator"))
    ppo_gain = iqm_ci(gains(curves, "ppo"))
    start = value_at(bands["no_update"], 0.0)
    op_final, ppo_final = value_at(bands["operator"], budget), value_at(bands["ppo"], budget)
    ratio_gain = (op_final - start) / (ppo_final - start) if ppo_final != start else math.nan
    time_ratio = step_time_ratio(args.operator, args.family, args.ask_k)
    figures = {
        "tasks_x_seeds": f"{args.tasks}x{args.seeds} ({args.family}/{args.split})",
        "ask_k": str(args.ask_k),
        "budget_env_steps": f"{budget:.0f}",
        "heldout_gain_iqm": f"{gain.iqm:.2f} [{gain.lo:.2f}, {gain.hi:.2f}]",
        "ppo_gain_iqm": f"{ppo_gain.iqm:.2f} [{ppo_gain.lo:.2f}, {ppo_gain.hi:.2f}]",
        "operator_return_at_budget_iqm": f"{op_final:.2f}",
        "ppo_return_at_budget_iqm": f"{ppo_final:.2f}",
        "no_update_return_iqm": f"{start:.2f}",
        "return_ratio_at_budget": f"{ratio_gain:.3f}",
        "operator_step_vs_ppo_update_time": f"{time_ratio:.3f}",
        "steps_ratio_to_ppo": f"{reach_ratio(bands['operator'], bands['ppo'], budget):.3f}",
    }
    # Only the full run is committed; a quick run leaves results/ alone and writes beside its curves.
    target = run_dir if args.quick else RESULTS
    target.mkdir(exist_ok=True)
    if not args.quick:
        shutil.copy(run_dir / "curves.csv", target / "improvement.csv")
    plot_curves(curves, target / "improvement.png", budget=budget)
    with (target / "improvement_summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "value"])
        writer.writerows(figures.items())
    for name, value in figures.items():
        print(f"{name}: {value}")
    print(f"outputs: {target}")


if __name__ == "__main__":
    main()
