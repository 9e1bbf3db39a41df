"""What does each part of the operator buy, and which settings ship? One row per variant, on validation and test tasks.

Trains each variant on one collection (the shipped operator's: ARS on 32 ``halfcheetah_vel`` tasks; see
``benchmarks/improvement.py``'s docstring to recreate it) with every other training setting the default
(``per_param``, the baseline row), and applies each from the same fresh starts with the same
budget B in env steps on two sets of tasks (``research/heldout.py``): validation tasks (``train`` tasks 32–35,
in no 32-task collection) and the held-out ``test`` tasks. PPO, ARS and no update run once per set, beside the baseline.
The variants:

* ``per_param``: the baseline, the default training settings (asked for k = ``--ask-k``)
* ``teacher=ppo``: the per-parameter operator fitted to PPO's pairs instead of ARS's (``--ppo-operator``:
  ``metaimprove train`` on ``results/operators/halfcheetah_vel.ppo.collect.yaml``'s collection with the default
  settings, asked for the k = 1 chosen for it on the same validation tasks)
* ``es_gradient=false``: without the ES step formed from τ's perturbations (the PPO-style features alone)
* ``flat``: the MLP over the whole θ instead of the per-parameter network (``operator.arch=flat``)
* ``relabel_rounds=1``: one round of relabeling (DAgger for operators), its rollouts asked for the same k
* ``augment_starts=16 augment_noise=0.1``: D-REX-style pairs from noise-perturbed dataset policies
* ``task_input``: the oracle, told the task's parameters and physics scales instead of inferring them from τ
* ``features.envs=<half>``: the operator reads half of the teacher's envs per τ (whole antithetic pairs) against
  the teacher's whole-batch step, and collects batches that wide when applied: half the env steps per application
* ``ask_k=1``, ``ask_k=4``, ``ask_k=8`` (those other than ``--ask-k``): the baseline operator, not retrained,
  asked for another jump size; ``features.envs=<half> ask_k=<k>``: the same sweep for the half-width operator (the ask
  is chosen at apply time, so each operator that is fitted once gets every jump it was trained for)
* ``features.envs=<half> ask_k=1 warmup=...``: the half-width operator asked for its best validation jump, collecting
  narrower batches first (``warmup``, see :class:`metaimprove.operator.runtime.BatchSchedule`): a few warm-up widths
  and lengths

Writes ``results/ablations.csv``: per variant what changed, its IQM return at B [95% CI] on the validation and on
the test tasks, its ``steps_ratio_to_ppo`` on each (env steps to reach PPO's IQM return at B on the same runs over
PPO's own, as ``benchmarks/improvement.py`` reports it; ``—`` on a row kept from a run before the column), the
verdicts on test against the baseline and against PPO (``wins`` / ``loses`` only with non-overlapping 95% CIs, else
``ties``), the minutes its fits took, and ``chosen`` on the one row with the best validation IQM: the settings to
ship once ``research/confirm_choice.py`` has re-measured it and its runners-up on more validation tasks. The
file is rewritten after every variant, so an interrupted run keeps the rows it finished. Nothing is chosen on the
test tasks.

    python research/ablations.py [--dataset runs/ars32d64s_x48] [--variants NAME ...] [--quick]

``--quick`` (4 training tasks, 2 epochs, small relabel and augmentation rounds, 1 task × 1 seed, B = 2 ARS
batches) only checks that every variant runs; it writes to a temporary directory and leaves results/ alone.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path
from typing import Any

from metaimprove.evaluation.stats import Band, Estimate, reach_ratio
from metaimprove.storage import atomic_write_csv
from metaimprove.training.pairs import PairConfig
from metaimprove.training.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import RESULTS, dataset_or_exit, fmt, verdict
from heldout import (
    AUGMENT_STARTS,
    PEERS,
    PPO_OPERATOR,
    add_arguments,
    apply_settings,
    at_budget,
    band,
    collection_variants,
    fit,
    peer_columns,
)

SETS = ("val", "test")
FIELDS = ["variant", "changed", "val_at_B", "val_iqm", "operator_at_B", "operator_iqm", "operator_lo", "operator_hi",
          "val_steps_ratio", "steps_ratio", "vs_baseline", "vs_ppo", "train_minutes", "chosen", "val_ppo_at_B",
          "val_ars_at_B", "val_start_at_B", "ppo_at_B", "ars_at_B", "start_at_B", "budget_env_steps", "runs"]
KEPT = FIELDS[:13]
"""the columns of a row itself (the rest are its peers' figures and the choice, rewritten with every file)"""
# --quick: every variant's code path at a size that runs in minutes (the relabel and augmentation teacher runs
# dominate the default sizes).
QUICK_TRAIN = {"max_epochs": 2, "relabel_tasks": 1, "relabel_applications": 2, "relabel_starts": 2,
               "relabel_eval_episodes": 1}
QUICK_AUGMENT_STARTS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--quick", action="store_true",
                        help="4 training tasks, 2 epochs, 1 task × 1 seed, B = 2 ARS batches; results/ left alone")
    parser.add_argument("--trained", nargs="+", default=[], metavar="NAME=CHECKPOINT",
                        help="variants already trained with their settings on --dataset (e.g. per_param=runs/op/"
                             "operator.safetensors): applied instead of training them again")
    parser.add_argument("--ppo-operator", type=Path, default=PPO_OPERATOR,
                        help="the per-parameter operator trained on PPO's pairs (the teacher=ppo row)")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="run only these rows (the baseline always runs) and keep the other rows already in "
                             "results/ablations.csv; default every row")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.budget = 1, 1, 2 * 4096
    dataset = dataset_or_exit(Path(args.dataset))
    scratch = Path(tempfile.mkdtemp(prefix="ablations-"))
    target = scratch if args.quick else RESULTS
    # Every fit records the ask it is applied with (its relabel rollouts use it too), so the chosen row's
    # checkpoint is the operator to ship as it stands.
    base_train: dict[str, Any] = {"ask_k": args.ask_k} | (
        ({"pairs": PairConfig(max_tasks=4)} | QUICK_TRAIN) if args.quick else {})
    checkpoints: dict[str, Path] = {}
    estimates: dict[tuple[str, str], Estimate] = {}
    rows: list[dict[str, object]] = []
    budget = float(args.budget)
    # Rows are seeded, so a row kept from an earlier run equals what rerunning it would give.
    kept = [] if args.variants is None or not (target / "ablations.csv").exists() else [
        {k: r.get(k, "—") for k in KEPT} for r in csv.DictReader((target / "ablations.csv").open())
        if r["variant"] not in {"per_param", *args.variants}]
    every = collection_variants(dataset, args.ask_k, QUICK_AUGMENT_STARTS if args.quick else AUGMENT_STARTS,
                                args.ppo_operator)
    wanted = {"per_param", *(args.variants or [v.name for v in every])}
    # A row that applies another row's operator needs that one trained first (it comes earlier in the list).
    wanted |= {v.reuses for v in every if v.name in wanted and v.train is None and v.checkpoint is None}
    chosen = [v for v in every if v.name in wanted]
    bands: dict[tuple[str, str], Band] = {}
    trained = dict(item.rsplit("=", 1) for item in args.trained)  # variant names hold "=", paths do not
    for i, variant in enumerate(chosen):
        minutes = None
        if variant.name in trained:
            checkpoint = checkpoints[variant.name] = Path(trained[variant.name])
            minutes = fit_minutes(checkpoint)
        elif variant.train is None:
            checkpoint = variant.checkpoint or checkpoints[variant.reuses]
        else:
            config = TrainConfig(dataset=str(dataset), out=str(scratch / variant.name.replace(" ", "_")),
                                 **{**base_train, **variant.train})
            checkpoint = checkpoints[variant.name] = fit(config)
            minutes = fit_minutes(checkpoint)
        # The peers depend on neither the operator nor the ask: run them once, beside the baseline.
        methods = ["operator", *PEERS] if i == 0 else ["operator"]
        for where in SETS:
            out = scratch / f"apply-{i}-{where}"
            found, budget = at_budget(checkpoint, out, methods, {**apply_settings(args, where),
                                                                 "ask_k": variant.ask_k or args.ask_k,
                                                                 "warmup": variant.warmup})
            estimates.update({(m if m != "operator" else variant.name, where): est for m, est in found.items()})
            bands.update({(m if m != "operator" else variant.name, where): band(out, m) for m in methods
                          if m in ("operator", "ppo")})
        val, est = estimates[variant.name, "val"], estimates[variant.name, "test"]
        ratio = {where: reach_ratio(bands[variant.name, where], bands["ppo", where], budget) for where in SETS}
        rows.append({"variant": variant.name, "changed": variant.changed, "val_at_B": fmt(val),
                     "val_iqm": f"{val.iqm:.2f}", "operator_at_B": fmt(est), "operator_iqm": f"{est.iqm:.2f}",
                     "operator_lo": f"{est.lo:.2f}", "operator_hi": f"{est.hi:.2f}",
                     "val_steps_ratio": f"{ratio['val']:.3f}", "steps_ratio": f"{ratio['test']:.3f}",
                     "vs_baseline": "—" if i == 0 else verdict(est, estimates["per_param", "test"]),
                     "vs_ppo": verdict(est, estimates["ppo", "test"]),
                     "train_minutes": "—" if minutes is None else f"{minutes:.1f}"})
        print(", ".join(f"{k}: {v}" for k, v in rows[-1].items()), flush=True)
        order = {v.name: i for i, v in enumerate(every)}  # rows kept from variants no longer listed go last
        write(target / "ablations.csv", sorted(kept + rows, key=lambda r: order.get(str(r["variant"]), len(order))),
              estimates, budget, f"{args.tasks} tasks × {args.seeds} seeds per set")
    print(f"wrote {target / 'ablations.csv'}")


def fit_minutes(checkpoint: Path) -> float | None:
    """The minutes the fits of a training run took (every round's, from the ``metrics.csv`` beside its checkpoint;
    None without one), so that rows trained here and elsewhere count the same work."""
    path = checkpoint.parent / "metrics.csv"
    if not path.exists():
        return None
    last: dict[str, float] = {}
    for row in csv.DictReader(path.open()):
        last[row["round"]] = float(row["seconds"])  # seconds count from the start of each round's fit
    return sum(last.values()) / 60


def write(path: Path, rows: list[dict[str, object]], estimates: dict[tuple[str, str], Estimate], budget: float,
          runs: str) -> None:
    """``ablations.csv``, atomically: the rows so far, each with the peers' figures on the same runs, and the row
    with the best validation IQM marked ``chosen``."""
    best = max(rows, key=lambda r: float(str(r["val_iqm"])))
    peers = {k: v for where, prefix in (("val", "val_"), ("test", ""))
             for k, v in peer_columns({m: estimates[m, where] for m in PEERS}, prefix).items()}
    atomic_write_csv(path, FIELDS, ({**row, "chosen": "yes" if row is best else "", **peers,
                                     "budget_env_steps": int(budget), "runs": runs} for row in rows))


if __name__ == "__main__":
    main()
