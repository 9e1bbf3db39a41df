"""What does each part of the operator buy? One row per variant of the shipped operator, on held-out tasks.

Trains each variant on one collection (the shipped operator's; see ``benchmarks/improvement.py``'s docstring to
recreate it) with every other training setting the default, as the shipped operator (``per_param``, the
baseline row), and applies each on the same held-out ``test`` tasks from the same fresh starts with the same
budget B (``benchmarks/heldout.py``); PPO and no update run once, beside the baseline. The variants:

* ``per_param``: the baseline, the shipped operator's settings (asked for k = 4, as it is applied)
* ``flat``: the MLP over the whole θ instead of the per-parameter network (``operator.arch=flat``)
* ``relabel_rounds=1``: one round of relabeling (DAgger for operators), its rollouts asked for the same k
* ``augment_starts=16 augment_noise=0.1``: D-REX-style pairs from noise-perturbed dataset policies
* ``task_input``: the oracle, told the task's parameters and physics scales instead of inferring them from τ
* ``ask_k=1``, ``ask_k=2``, ``ask_k=8``: the baseline operator, not retrained, asked for another jump size

Writes ``results/ablations.csv`` (variant, what changed, IQM return at B [95% CI], the verdict against the
baseline and against PPO — ``wins`` / ``loses`` only with non-overlapping 95% CIs, else ``ties`` — and training
minutes; the file is rewritten after every variant, so an interrupted run keeps the rows it finished) and prints
the rows. Nothing is chosen on the test tasks.

    python benchmarks/ablations.py [--dataset runs/vel32x48] [--quick]

``--quick`` (4 training tasks, 2 epochs, small relabel and augmentation rounds, 1 task × 1 seed, 2 applications)
only checks that every variant runs; it writes to a temporary directory and leaves results/ alone.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heldout import add_arguments, apply_settings, at_budget, timed_train
from improvement import dataset_or_exit, fmt, verdict

from metaimprove.dataset import PairConfig
from metaimprove.features import FeatureConfig
from metaimprove.operator import OperatorConfig
from metaimprove.stats import Estimate
from metaimprove.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
FIELDS = ["variant", "changed", "operator_at_B", "operator_iqm", "operator_lo", "operator_hi", "vs_baseline",
          "vs_ppo", "train_minutes", "ppo_at_B", "start_at_B", "budget_env_steps", "runs"]
# --quick: every variant's code path at a size that runs in minutes (the relabel and augmentation teacher runs
# dominate; the default sizes spend 147,456 teacher env steps per relabel round).
QUICK_TRAIN = {"max_epochs": 2, "relabel_tasks": 1, "relabel_applications": 2, "relabel_starts": 2,
               "relabel_eval_episodes": 1}
QUICK_AUGMENT_STARTS = 2


@dataclass(frozen=True)
class Variant:
    """One row: how its operator differs from the baseline's."""

    name: str
    changed: str
    """what changed against the baseline, in words"""
    train: dict[str, Any] | None = field(default_factory=dict)
    """TrainConfig settings that differ from the baseline's; None: the baseline's operator, not retrained"""
    ask_k: int | None = None
    """the jump size it is asked for when applied, if not the baseline's"""


def variants(ask_k: int, augment_starts: int) -> list[Variant]:
    """The ablation rows, baseline first."""
    return [
        Variant("per_param", f"baseline: the shipped operator's settings, asked for k = {ask_k}"),
        Variant("flat", "operator.arch=flat (one MLP over the whole θ)", {"operator": OperatorConfig(arch="flat")}),
        Variant("relabel_rounds=1", f"one relabeling round (its rollouts asked for k = {ask_k})",
                {"relabel_rounds": 1, "relabel_ask_k": ask_k}),
        Variant(f"augment_starts={augment_starts} augment_noise=0.1",
                f"teacher pairs from {augment_starts} noise-perturbed dataset policies",
                {"augment_starts": augment_starts, "augment_noise": 0.1}),
        Variant("task_input", "features.task_input=true (the oracle: told the task instead of inferring it)",
                {"features": FeatureConfig(task_input=True)}),
        *(Variant(f"ask_k={k}", f"the baseline operator (not retrained) asked for k = {k}", None, k)
          for k in (1, 2, 8) if k != ask_k),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--quick", action="store_true",
                        help="4 training tasks, 2 epochs, 1 task × 1 seed, 2 applications; results/ left alone")
    parser.add_argument("--baseline", type=Path,
                        help="an already trained baseline checkpoint (default settings on --dataset) instead of "
                             "training it again, e.g. benchmarks/scaling.py's 32-task operator")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="run only these rows (the baseline always runs) and keep the other rows already in "
                             "results/ablations.csv; default every row")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.applications = 1, 1, 2
    dataset = dataset_or_exit(Path(args.dataset))
    scratch = Path(tempfile.mkdtemp(prefix="ablations-"))
    target = scratch if args.quick else RESULTS
    base_train: dict[str, Any] = ({"pairs": PairConfig(max_tasks=4)} | QUICK_TRAIN) if args.quick else {}
    settings = apply_settings(args)
    checkpoints: dict[str, Path] = {}
    estimates: dict[str, Estimate] = {}
    rows: list[dict[str, object]] = []
    budget = 0.0
    # Rows are seeded, so a row kept from an earlier run equals what rerunning it would give.
    kept = [] if args.variants is None or not (target / "ablations.csv").exists() else [
        {k: r[k] for k in FIELDS[:9]} for r in csv.DictReader((target / "ablations.csv").open())
        if r["variant"] not in {"per_param", *args.variants}]
    chosen = [v for i, v in enumerate(variants(args.ask_k, QUICK_AUGMENT_STARTS if args.quick else 16))
              if i == 0 or args.variants is None or v.name in args.variants]
    for i, variant in enumerate(chosen):
        minutes = None
        if i == 0 and args.baseline is not None:
            checkpoint = checkpoints["per_param"] = args.baseline
        elif variant.train is None:
            checkpoint = checkpoints["per_param"]
        else:
            config = TrainConfig(dataset=str(dataset), out=str(scratch / variant.name.replace(" ", "_")),
                                 **{**base_train, **variant.train})
            checkpoint, minutes = timed_train(config)
            checkpoints[variant.name] = checkpoint
        # PPO and the start depend on neither the operator nor the ask: run them once, beside the baseline.
        methods = ["operator", "ppo", "no_update"] if i == 0 else ["operator"]
        found, budget = at_budget(checkpoint, scratch / f"apply-{i}", methods,
                                  {**settings, "ask_k": variant.ask_k or args.ask_k})
        if i == 0:
            estimates.update(found)
        est = estimates[variant.name] = found["operator"]
        rows.append({"variant": variant.name, "changed": variant.changed, "operator_at_B": fmt(est),
                     "operator_iqm": f"{est.iqm:.2f}", "operator_lo": f"{est.lo:.2f}", "operator_hi": f"{est.hi:.2f}",
                     "vs_baseline": "—" if i == 0 else verdict(est, estimates["per_param"]),
                     "vs_ppo": verdict(est, estimates["ppo"]),
                     "train_minutes": "—" if minutes is None else f"{minutes:.1f}"})
        print(", ".join(f"{k}: {v}" for k, v in rows[-1].items()), flush=True)
        write(target / "ablations.csv", rows[:1] + kept + rows[1:], estimates, budget,
              f"{args.tasks} test tasks × {args.seeds} seeds")
    print(f"PPO at B: {fmt(estimates['ppo'])}; start: {fmt(estimates['no_update'])}; B = {int(budget)} env steps")
    print(f"wrote {target / 'ablations.csv'}")


def write(path: Path, rows: list[dict[str, object]], estimates: dict[str, Estimate], budget: float,
          runs: str) -> None:
    """``ablations.csv``, atomically: the rows so far, each with the peers' figures on the same runs."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "ppo_at_B": fmt(estimates["ppo"]), "start_at_B": fmt(estimates["no_update"]),
                             "budget_env_steps": int(budget), "runs": runs})
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
