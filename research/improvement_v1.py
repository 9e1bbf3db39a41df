"""Evaluation v1, settled: IQM raw returns of the operator against its peers on held-out tasks, the guarded
operator's record and the memorization audit. ``benchmarks/improvement.py`` (evaluation v2: per-task normalized,
paired, many tasks, the strongest peers, a sealed test split) replaced it as the benchmark; this study read the test
split during development, before the ledger existed.

Runs ``metaimprove apply`` with every method (the operator, the guarded operator, every teacher, no update,
the checkpoint baselines, the domain-randomized policy zero-shot and PPO-fine-tuned) on held-out ``test``
(interpolation) and ``ood`` (extrapolation) tasks, equal env-step budget B per run, from two starts: fresh
initializations no training run used, and the training runs' own initialization (methods suffixed
``@train_init``; the other methods do not depend on the start). Writes:

* ``results/improvement_v1.csv``: every curve (method, task, seed, env_steps, return, fallbacks, split, start)
* ``results/improvement_v1_<split>.png``: IQM curves with 95% CI bands, B marked
* ``results/improvement_v1.md``: method × split → IQM return at B [95% CI] and ``steps_ratio_to_ppo`` (env steps to
  reach PPO's IQM return at B over PPO's own, same start), the guarded operator's record, the memorization audit
  (the operator's final θ distance to its nearest training checkpoint against the distance between two PPO
  seeds' final θ on one task, all folded into one normalizer), and the key figures as ``name: value``

and prints the key figures as ``name: value`` lines. It needs the operator's training dataset, which is not
in git; recreate it (2.2 minutes on 2 cores) with::

    metaimprove collect teacher=ars teacher.n_directions=32 teacher.top_b=16 teacher.n_steps=64 teacher.lr=0.03 \
        task=halfcheetah_vel n_tasks=32 seeds=1 iterations=48 workers=2 out=runs/ars32d64s_x48

(the settings of ``results/operators/halfcheetah_vel.collect.yaml``). The domain-randomized policy is shipped
(``results/operators/halfcheetah_vel.dr.safetensors``, from ``metaimprove dr task=halfcheetah_vel n_tasks=32
iterations=1536``); when it is missing the benchmark trains it first.

    python research/improvement_v1.py [--quick] [--dataset runs/ars32d64s_x48] [--only METHOD ...]

``--render`` runs nothing and rewrites the summary, plots and figures from the committed curves. ``--only`` reruns
just the methods named (both starts where the start matters) and replaces their rows in the
committed ``results/improvement_v1.csv``; every other method's rows, and the figures that need methods not rerun
(the memorization audit needs ``operator`` and ``ppo``), are kept from ``results/improvement_v1_figures.csv``.
Runs are seeded, so a method's rows do not depend on which other methods ran beside it.

Full run: 4 tasks × 5 seeds per split, B = 61,440 env steps per run, every method: measured 23.6 minutes of apply
on the shared 2-core machine while a collection ran beside it (58.8 minutes for the PPO-trained operator, whose 30
applications each cost a PPO-sized encoding). ``--quick`` (2 tasks × 3 seeds, B / 3) leaves results/ alone.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import (
    BUDGET,
    DATASET,
    OPERATORS,
    RESULTS,
    ROOT,
    collect_command,
    dataset_or_exit,
    finals,
    fmt,
    memorization,
    training_snapshots,
    verdict,
    write_rows,
)
from operator_step import operator_step_vs_ppo_update

from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.baselines import DRConfig, train_dr
from metaimprove.evaluation.methods import method_names, starts_from_theta0
from metaimprove.evaluation.plot import plot_curves, read_curves, select_splits
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.evaluation.stats import Curves, Estimate, common_grid, curve_band, iqm_ci, reach_ratio
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule, describe_warmup
from metaimprove.sim.tasks import TaskConfig

SPLITS = ("test", "ood")
TRAIN_INIT = "@train_init"
"""suffix of the methods run from the training runs' initialization"""


# ------------------------------------------------------------------------------------------ figures


def starts(curves: Curves) -> np.ndarray:
    """Each run's first evaluated return, shaped like :func:`finals`."""
    runs = curves.runs()
    return np.array([[r[0] for _, _, r in runs[t]] for t in runs]).T


# ----------------------------------------------------------------------------------------------- run


def dr_policy(path: Path, family: str, quick: bool, scratch: Path) -> Path:
    """The domain-randomized policy: the shipped file, or one trained now (a short one for --quick)."""
    if path.exists():
        return path
    out = scratch / "dr" if quick else path.parent / "dr_run"
    print(f"no DR policy at {path}: training it (metaimprove dr) into {out}", flush=True)
    trained = train_dr(DRConfig(task=TaskConfig(family), iterations=64 if quick else 1536, out=str(out)))
    if quick:
        return trained
    shutil.copy(trained, path)
    shutil.copy(trained.with_suffix(".json"), path.with_suffix(".json"))
    shutil.rmtree(out)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"2 tasks × 3 seeds, B = {BUDGET // 3} env steps; results/ left alone")
    parser.add_argument("--operator", default=str(OPERATORS / "halfcheetah_vel.safetensors"))
    parser.add_argument("--dataset", default=str(DATASET),
                        help="the operator's training dataset (see the module docstring for the command)")
    parser.add_argument("--dr-policy", default=str(OPERATORS / "halfcheetah_vel.dr.safetensors"))
    parser.add_argument("--family", default="halfcheetah_vel")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per split (default 4; quick 2)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per task (default 5; quick 3)")
    parser.add_argument("--budget", type=int, default=None,
                        help=f"budget B in env steps per run (default {BUDGET}; quick {BUDGET // 3})")
    parser.add_argument("--ask-k", type=int, default=None,
                        help="jump size to ask for (default: the one the checkpoint records, chosen on validation "
                             "tasks train/32-35, not on test)")
    parser.add_argument("--guard-threshold", type=float, default=ApplyConfig.guard_threshold)
    parser.add_argument("--guard-episodes", type=int, default=ApplyConfig.guard_episodes)
    parser.add_argument("--guard-margin", type=float, default=ApplyConfig.guard_margin)
    parser.add_argument("--only", nargs="+", choices=method_names(), metavar="METHOD",
                        help="rerun only these methods; keep the other rows of results/improvement_v1.csv")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: rewrite summary, plots and figures from results/improvement_v1.csv")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    committed = bool(args.only or args.render)
    if committed and (args.quick or not (RESULTS / "improvement_v1.csv").exists()):
        raise SystemExit("--only and --render work on a full run's results/improvement_v1.csv: run the full benchmark "
                         "first, and not with --quick")
    n_tasks = args.tasks or (2 if args.quick else 4)
    n_seeds = args.seeds or (3 if args.quick else 5)
    budget = args.budget or (BUDGET // 3 if args.quick else BUDGET)
    _, ckpt = OperatorCheckpoint.load(args.operator)
    args.ask_k = ckpt.resolve_ask_k(args.ask_k)
    # The teacher at the operator's batch is the teacher itself unless the operator reads a narrower batch.
    every = [m for m in method_names() if m != "teacher_op_batch" or ckpt.features.n_envs is not None]
    methods = [] if args.render else args.only or every
    # Rendering runs nothing, so it needs neither the training dataset nor the DR policy.
    dataset = Path(args.dataset) if args.render else dataset_or_exit(Path(args.dataset))
    scratch = Path(tempfile.mkdtemp(prefix="improvement-"))
    dr = Path(args.dr_policy) if args.render else dr_policy(Path(args.dr_policy), args.family, args.quick, scratch)
    began = time.perf_counter()
    rows: list[dict[str, object]] = []
    for split in SPLITS:
        for start in ("fresh", "train_init"):
            chosen = methods if start == "fresh" else [m for m in methods if starts_from_theta0(m)]
            if not chosen:
                continue
            out = scratch / f"{split}-{start}"
            apply(ApplyConfig(operator_path=args.operator, out=str(out), task=TaskConfig(args.family), split=split,
                              n_tasks=n_tasks, seeds=n_seeds, budget=budget, methods=chosen,
                              start=start, dataset=str(dataset), dr_policy=str(dr), ask_k=args.ask_k,
                              guard_threshold=args.guard_threshold, guard_episodes=args.guard_episodes,
                              guard_margin=args.guard_margin, save_policies=start == "fresh",
                              workers=args.workers))
            with (out / "curves.csv").open() as f:
                for row in csv.DictReader(f):
                    dependent = starts_from_theta0(row["method"])
                    suffix = TRAIN_INIT if start == "train_init" else ""
                    rows.append({**row, "method": row["method"] + suffix, "split": split,
                                 "start": start if dependent else "any"})
    apply_minutes = (time.perf_counter() - began) / 60
    target = scratch if args.quick else RESULTS  # only the full run is committed
    curves_csv = target / "improvement_v1.csv"
    if committed:
        rows = merged(curves_csv, rows, set(methods))
    with curves_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    curves = read_curves([curves_csv])
    batch = BatchSchedule.of(ckpt).batch
    present = {str(r["method"]) for r in rows}
    labels = [label for m in method_names() for label in ((m, m + TRAIN_INIT) if starts_from_theta0(m) else (m,))
              if label in present]
    table: dict[tuple[str, str], tuple[Estimate, float]] = {}
    for split in SPLITS:
        in_split = select_splits(curves, [split])
        plot_curves(in_split, target / f"improvement_v1_{split}.png", budget=budget)
        bands = {m: curve_band(in_split.where(method=m), common_grid(in_split.where(method=m))) for m in labels}
        for label in labels:
            ppo = "ppo" + (TRAIN_INIT if label.endswith(TRAIN_INIT) else "")
            table[label, split] = (iqm_ci(finals(in_split.where(method=label), budget)),
                                   reach_ratio(bands[label], bands[ppo], budget))
    figures_csv = target / "improvement_v1_figures.csv"
    figures = read_figures(figures_csv) if committed else {}
    figures.update(key_figures(curves, rows, table, budget, batch))
    if {"operator", "ppo"} <= set(methods):
        snapshots = training_snapshots(dataset)
        for split in SPLITS:
            audit = memorization(scratch / f"{split}-fresh", snapshots)
            figures.update({f"{split}_{k}": f"{v:.2f}" for k, v in audit.items()})
            figures[f"{split}_memorization_ratio"] = (
                f"{audit['operator_to_nearest_checkpoint'] / audit['ppo_seed_to_seed']:.3f}")
    if not args.render:
        figures["operator_step_vs_ppo_update_time"] = (
            f"{operator_step_vs_ppo_update(operator=Path(args.operator), family=args.family, ask_k=args.ask_k):.3f}")
    if args.only:
        figures["rerun"] = f"{' '.join(args.only)} on {time.strftime('%Y-%m-%d')}, {apply_minutes:.1f} min of apply"
    elif not args.render:
        figures["apply_wall_minutes"] = f"{apply_minutes:.1f}"
    summary = render(table, labels, figures, args, n_tasks, n_seeds, budget, ckpt.teacher["name"],
                     BatchSchedule.of(ckpt), dataset)
    (target / "improvement_v1.md").write_text(summary)
    with figures_csv.open("w", newline="") as f:
        csv.writer(f).writerows([["name", "value"], *figures.items()])
    if not args.quick and "operator_guarded" in methods:
        write_rows("guarded_apply", guard_rows(figures, args))
    for name, value in figures.items():
        print(f"{name}: {value}")
    print(f"outputs: {target}")


def guard_rows(figures: dict[str, str], args: argparse.Namespace) -> dict[str, tuple[object, str]]:
    """The guarded operator's record as ``results/reliability.csv`` rows (name → (value, note))."""
    setting = (f"{args.family} test+ood, fresh+train_init starts, guard_threshold {args.guard_threshold:g}, "
               f"guard_episodes {args.guard_episodes}, guard_margin {args.guard_margin:g}")
    return {
        "guarded_runs_ending_below_start": (figures["operator_guarded_runs_ending_below_start"], setting),
        "unguarded_runs_ending_below_start": (figures["operator_runs_ending_below_start"], "the same runs, no guard"),
        "guarded_worst_final_minus_start": (figures["operator_guarded_worst_final_minus_start"], ""),
        "guard_fallbacks_per_run": (figures["guard_fallbacks_per_run"], "rollbacks to a teacher step"),
        "guard_rejected_env_steps_share_of_budget": (figures["guard_rejected_env_steps_share_of_budget"], ""),
        "guard_verification_env_steps_share_of_budget": (figures["guard_verification_env_steps_share_of_budget"],
                                                         "deterministic verification episodes"),
    }


def merged(curves_csv: Path, rows: list[dict[str, object]], rerun: set[str]) -> list[dict[str, object]]:
    """The committed rows of every method not in ``rerun``, then ``rows``. A column the older rows lack is a
    count the code that wrote them did not have (such as ``guard_steps``): 0."""
    with curves_csv.open() as f:
        kept = [r for r in csv.DictReader(f) if r["method"].removesuffix(TRAIN_INIT) not in rerun]
    columns = list(dict.fromkeys([*(kept[:1] or [{}])[0], *(rows[:1] or [{}])[0]]))
    return [{c: r.get(c, 0) for c in columns} for r in [*kept, *rows]]


def read_figures(path: Path) -> dict[str, str]:
    """The key figures a previous full run wrote (``name,value`` rows)."""
    with path.open() as f:
        return {r["name"]: r["value"] for r in csv.DictReader(f)}


def key_figures(curves: Curves, rows: list[dict[str, object]], table: dict[tuple[str, str], tuple[Estimate, float]],
                budget: float, batch: int) -> dict[str, str]:
    """The ``name: value`` figures: operator vs PPO per split, and the guarded operator's record."""
    figures: dict[str, str] = {}
    for split in SPLITS:
        for label in ("operator", "operator_guarded"):
            if (label, split) in table:
                figures[f"{split}_{label}_steps_ratio_to_ppo"] = f"{table[label, split][1]:.3f}"
        op, ppo = table["operator", split][0], table["ppo", split][0]
        figures[f"{split}_operator_vs_ppo_at_budget"] = verdict(op, ppo)
    for label in ("operator", "operator_guarded"):
        runs = [curves.where(method=label + s) for s in ("", TRAIN_INIT)]
        gain = np.concatenate([(finals(r, budget) - starts(r)).ravel() for r in runs])
        figures[f"{label}_runs_ending_below_start"] = f"{int((gain < 0).sum())}/{gain.size}"
        figures[f"{label}_worst_final_minus_start"] = f"{gain.min():.2f}"
    # A guarded run's last row holds its fallback count and the env steps it spent verifying.
    last: dict[tuple[object, ...], tuple[float, int, int]] = {}
    for row in rows:
        if str(row["method"]).startswith("operator_guarded"):
            key = (row["method"], row["split"], row["task"], row["seed"])
            steps = float(row["env_steps"])  # type: ignore[arg-type]
            if key not in last or steps > last[key][0]:
                last[key] = (steps, int(row["fallbacks"]), int(row["guard_steps"]))  # type: ignore[call-overload]
    fallbacks = np.array([n for _, n, _ in last.values()])
    verification = np.array([v for _, _, v in last.values()])
    figures["guard_fallbacks_per_run"] = f"{fallbacks.mean():.2f}"
    # Each fallback spends one batch on a rejected policy before the teacher's step.
    figures["guard_rejected_env_steps_share_of_budget"] = f"{fallbacks.mean() * batch / budget:.3f}"
    figures["guard_verification_env_steps_share_of_budget"] = f"{verification.mean() / budget:.3f}"
    return figures


def operator_batches(schedule: BatchSchedule, budget: int) -> str:
    """The batches the operator collects within ``budget`` in words: their count and size, and its warm-up."""
    batch = schedule.n_envs * schedule.n_steps
    if not schedule.warmup:
        return f"{schedule.batches(budget)} batches of {batch}"
    return (f"{schedule.batches(budget)} batches: {describe_warmup(schedule.warmup)}, then {schedule.n_envs}-env "
            f"batches of {batch}")


def render(table: dict[tuple[str, str], tuple[Estimate, float]], labels: list[str], figures: dict[str, str],
           args: argparse.Namespace, n_tasks: int, n_seeds: int, budget: int, teacher: str, schedule: BatchSchedule,
           dataset: Path) -> str:
    """``results/improvement_v1.md``."""
    operator = Path(args.operator).resolve()
    lines = [
        "# Held-out improvement: the operator against its peers (`research/improvement_v1.py`)",
        "",
        f"Operator `{operator.relative_to(ROOT) if operator.is_relative_to(ROOT) else operator}` "
        f"(fitted to {teacher.upper()}'s pairs, asked for k = {args.ask_k}); {n_tasks} tasks × {n_seeds} seeds per "
        f"split; budget B = {budget} env steps per run (the operator: {operator_batches(schedule, budget)}); returns "
        "are the mean of 8 deterministic episodes. "
        "`test`: new draws inside the training ranges; `ood`: target velocities and masses outside them. "
        f"`@train_init`: started from the training runs' initialization instead of a fresh one. "
        "IQM over tasks × seeds with 95% stratified-bootstrap CIs; `steps_ratio_to_ppo`: env steps to reach PPO's "
        "IQM return at B (same start) over PPO's own (inf: never within B; 0: already there at the start; nan: PPO "
        "ends no higher than it started, so there is nothing to reach).",
        "",
        "| method | test: return at B | test: steps_ratio_to_ppo | ood: return at B | ood: steps_ratio_to_ppo |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label in labels:
        cells = [f"{fmt(table[label, s][0])} | {table[label, s][1]:.3f}" for s in SPLITS]
        lines.append(f"| `{label}` | {' | '.join(cells)} |")
    lines += ["", "## Where the operator wins and loses", ""]
    for split in SPLITS:
        op = table["operator", split][0]
        results = {v: [f"`{label}`" for label in labels if not label.startswith("operator") and
                       verdict(op, table[label, split][0]) == v] for v in ("wins", "ties", "loses")}
        lines.append(f"- `{split}`, fresh start: the operator beats {', '.join(results['wins']) or 'nothing'}; "
                     f"ties with {', '.join(results['ties']) or 'nothing'}; loses to "
                     f"{', '.join(results['loses']) or 'nothing'} (non-overlapping 95% CIs of the return at B).")
    lines += [
        "",
        "## Guarded operator",
        "",
        f"After each operator step, a batch whose return falls more than {args.guard_threshold:g} below the best batch "
        f"so far rolls the policy back to that best one and takes one {teacher.upper()} step from it instead. The run "
        "deploys θ⁰ "
        f"until a policy whose batch is a new best returns more than {args.guard_margin:g} above the deployed one "
        f"on {args.guard_episodes} deterministic verification episodes (seeds of their own, never the evaluation's; "
        "their env steps are charged to the run). Runs (both splits, both "
        f"starts) ending below their starting return: guarded {figures['operator_guarded_runs_ending_below_start']}, "
        f"unguarded {figures['operator_runs_ending_below_start']}; worst final − start: guarded "
        f"{figures['operator_guarded_worst_final_minus_start']}, "
        f"unguarded {figures['operator_worst_final_minus_start']}. "
        f"Fallbacks per run: {figures['guard_fallbacks_per_run']}; env steps spent on rejected batches: "
        f"{figures['guard_rejected_env_steps_share_of_budget']} of B, on verification: "
        f"{figures['guard_verification_env_steps_share_of_budget']} of B.",
        "",
        "## Memorization audit",
        "",
        "Distances between policies as parameter vectors, after folding every normalizer into the identity one "
        "(so each θ is the same function of raw observations). A weight generator that recalls training "
        "checkpoints ends much nearer to one than two PPO runs on one task end to each other.",
        "",
        "| split | operator final → nearest training checkpoint | PPO final → nearest training checkpoint | "
        "PPO seed ↔ PPO seed, same task | ratio operator / PPO seeds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for split in SPLITS:
        lines.append(f"| {split} | {figures[f'{split}_operator_to_nearest_checkpoint']} | "
                     f"{figures[f'{split}_ppo_to_nearest_checkpoint']} | {figures[f'{split}_ppo_seed_to_seed']} | "
                     f"{figures[f'{split}_memorization_ratio']} |")
    lines += ["", "## Key figures", "", "```"] + [f"{k}: {v}" for k, v in figures.items()] + ["```", ""]
    lines += [f"Curves: `improvement_v1.csv`, `improvement_v1_test.png`, `improvement_v1_ood.png`. Training dataset: "
              f"`{dataset.name}` (not in git; `{collect_command()}` recreates it)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
