"""Does the ablation's choice hold on more validation tasks? The top rows, re-measured on tasks that chose nothing.

``research/ablations.py`` chooses the settings to ship on 4 validation tasks × 3 seeds, where the top rows lie
within noise of each other. This benchmark takes the ``--top`` rows of ``results/ablations.csv`` by validation
IQM (the shortlist depends on validation alone), applies each again, with PPO, ARS and no update beside them, on
``--tasks`` fresh validation tasks: ``train`` tasks from ``--start`` on (36 by default: after the ablation's 32–35
and outside every 32-task collection), same fresh starts, seeds and budget B as the ablation. **Chosen** here: of
the rows whose IQM return at B ties the best one's (overlapping 95% CIs), the one that reaches PPO's return at B in
the fewest env steps (``steps_ratio_to_ppo``; then the higher IQM): the return at B first, and among returns that
cannot be told apart, speed. Nothing is measured on the test tasks.

Each row's operator is refit with its ablation settings (fits are deterministic, so this is the ablation's
operator bit for bit) unless ``--trained NAME=CHECKPOINT`` names one already trained; rows that reuse another
row's operator (the ask sweeps) reuse it here too. Writes ``results/confirm_choice.csv``: per row its ablation
validation IQM, its IQM return at B [95% CI] and ``steps_ratio_to_ppo`` on the confirmation tasks, the verdict
against the ablation's choice (non-overlapping CIs), and ``chosen``.

    python research/confirm_choice.py [--top 3] [--tasks 12] [--seeds 3] [--trained NAME=CHECKPOINT ...]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

from metaimprove.evaluation.stats import reach_ratio
from metaimprove.storage import atomic_write_csv
from metaimprove.training.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import RESULTS, dataset_or_exit, fmt, verdict
from heldout import (
    PEERS,
    Variant,
    add_arguments,
    apply_settings,
    at_budget,
    band,
    collection_variants,
    fit,
    peer_columns,
)

FIELDS = ["variant", "changed", "ablation_val_at_B", "at_B", "iqm", "lo", "hi", "steps_ratio", "vs_ablation_choice",
          "chosen", "ppo_at_B", "ars_at_B", "start_at_B", "tasks", "budget_env_steps", "runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(tasks=12)
    parser.add_argument("--start", type=int, default=36, help="the first `train` task of the confirmation set")
    parser.add_argument("--top", type=int, default=3, help="how many of the ablation's best validation rows")
    parser.add_argument("--trained", nargs="+", default=[], metavar="NAME=CHECKPOINT",
                        help="rows whose operator is already trained with their ablation settings on --dataset")
    args = parser.parse_args()
    if args.start < 36:
        raise SystemExit(f"--start {args.start} overlaps the ablation's validation tasks 32–35 or the collection")
    dataset = dataset_or_exit(Path(args.dataset))
    ablation = sorted(csv.DictReader((RESULTS / "ablations.csv").open()), key=lambda r: -float(r["val_iqm"]))
    shortlist = ablation[:args.top]
    every = {v.name: v for v in collection_variants(dataset, args.ask_k)}
    trained = {name: Path(path) for name, path in (item.rsplit("=", 1) for item in args.trained)}
    scratch = Path(tempfile.mkdtemp(prefix="confirm-"))
    settings = {**apply_settings(args, "val"), "task_start": args.start}
    estimates, bands, rows = {}, {}, []
    for i, row in enumerate(shortlist):
        variant = every[row["variant"]]
        out = scratch / f"apply-{i}"
        methods = ["operator", *PEERS] if i == 0 else ["operator"]
        found, budget = at_budget(checkpoint(variant, every, trained, dataset, args.ask_k, scratch), out, methods,
                                  {**settings, "ask_k": variant.ask_k or args.ask_k, "warmup": variant.warmup})
        estimates.update({variant.name if m == "operator" else m: est for m, est in found.items()})
        bands.update({variant.name if m == "operator" else m: band(out, m)
                      for m in methods if m in ("operator", "ppo")})
        est = estimates[variant.name]
        rows.append({"variant": variant.name, "changed": variant.changed, "ablation_val_at_B": row["val_at_B"],
                     "at_B": fmt(est), "iqm": f"{est.iqm:.2f}", "lo": f"{est.lo:.2f}", "hi": f"{est.hi:.2f}",
                     "steps_ratio": f"{reach_ratio(bands[variant.name], bands['ppo'], budget):.3f}",
                     "vs_ablation_choice": "—" if i == 0 else verdict(est, estimates[shortlist[0]["variant"]])})
        print(", ".join(f"{k}: {v}" for k, v in rows[-1].items()), flush=True)
    best = choose(rows)
    peers = peer_columns(estimates)
    where = {"tasks": f"train {args.start}–{args.start + args.tasks - 1}", "budget_env_steps": int(budget),
             "runs": f"{args.tasks} tasks × {args.seeds} seeds"}
    atomic_write_csv(RESULTS / "confirm_choice.csv", FIELDS,
                     ({**r, "chosen": "yes" if r is best else "", **peers, **where} for r in rows))
    print(f"wrote {RESULTS / 'confirm_choice.csv'}; chosen: {best['variant']}")


def choose(rows: list[dict[str, str]]) -> dict[str, str]:
    """Of the ``rows`` whose IQM at B ties the best one's (overlapping CIs), the fastest to PPO's return at B."""
    top = max(rows, key=lambda r: float(r["iqm"]))
    ties = [r for r in rows if float(r["hi"]) >= float(top["lo"])]
    return min(ties, key=lambda r: (float(r["steps_ratio"]), -float(r["iqm"])))


def checkpoint(variant: Variant, every: dict[str, Variant], trained: dict[str, Path], dataset: Path, ask_k: int,
               scratch: Path) -> Path:
    """The operator a row applies: its own, or the row's it reuses; given in ``trained``, else refit as the
    ablation fit it (the same settings, so the same weights)."""
    if variant.checkpoint is not None:
        return variant.checkpoint
    owner = variant if variant.train is not None else every[variant.reuses]
    if owner.name in trained:
        return trained[owner.name]
    out = scratch / owner.name.replace(" ", "_")
    if not (out / "operator.safetensors").exists():
        fit(TrainConfig(dataset=str(dataset), out=str(out), ask_k=ask_k, **(owner.train or {})))
    return out / "operator.safetensors"


if __name__ == "__main__":
    main()
