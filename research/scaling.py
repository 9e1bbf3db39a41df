"""Does more task diversity generalize better? Held-out return at budget B against the number of training tasks.

Trains one operator per task count N on the runs of the first N tasks of one collection (``pairs.max_tasks=N``;
``--envs`` sets ``features.envs``, as the shipped operator's ``features.envs=32``; every other training setting the
default), applies each on the same held-out ``test`` tasks from the same fresh starts with the same
budget, and writes:

* ``results/scaling.csv``: N, the tasks left for fitting after the validation split, the operator's IQM return
  at B [95% CI], and PPO's, ARS's and the start's on the same runs, with the collection and the settings;
* ``results/scaling.png``: the curve (N → IQM return at B with its CI), PPO and the start as bands.

The collection defaults to ``benchmarks/improvement.py``'s (ARS, 32 tasks × 48 updates; see its docstring to
recreate it); counts beyond 32 need a larger one (the first 32 tasks of any collection are the same tasks). The
committed ``results/scaling.csv`` came from the shipped operator's teacher on 128 tasks (``metaimprove collect
teacher=ars teacher.n_directions=32 teacher.top_b=16 teacher.n_steps=64 teacher.lr=0.03 task=halfcheetah_vel
n_tasks=128 seeds=1 iterations=48 out=runs/ars32d64s_x128``, 7 minutes on 2 cores) with the shipped settings,
``--envs 32 --ask-k 1`` (44 minutes in all); its table names both. Nothing is chosen on the test tasks: the ask
is ``--ask-k``.

    python research/scaling.py [--dataset runs/ars32d64s_x128] [--counts 4 8 16 32 64 128] [--envs 32] [--ask-k 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import yaml

from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.storage import atomic_write_csv
from metaimprove.training.pairs import PairConfig
from metaimprove.training.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import RESULTS, dataset_or_exit, describe_collection, fmt
from heldout import PEERS, add_arguments, apply_settings, at_budget, peer_columns, timed_train

FIELDS = ["n_tasks", "train_tasks", "operator_at_B", "operator_iqm", "operator_lo", "operator_hi",
          "train_minutes", "collection", "settings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--counts", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--envs", type=int, help="features.envs: the teacher's envs the operator reads (default all)")
    args = parser.parse_args()
    settings = ", ".join([*([f"features.envs={args.envs}"] if args.envs else []), f"asked for k = {args.ask_k}"])
    dataset = dataset_or_exit(Path(args.dataset))
    collection = describe_collection(yaml.safe_load((dataset / "config.yaml").read_text()))
    scratch = Path(tempfile.mkdtemp(prefix="scaling-"))
    rows, budget = [], 0.0
    for i, n in enumerate(args.counts):
        checkpoint, minutes = timed_train(TrainConfig(dataset=str(dataset), out=str(scratch / f"op{n}"),
                                                      pairs=PairConfig(max_tasks=n), ask_k=args.ask_k,
                                                      features=FeatureConfig(n_envs=args.envs)))
        _, ckpt = OperatorCheckpoint.load(checkpoint)
        # The teachers and the start do not depend on the operator: run them once, beside the first.
        methods = ["operator", *PEERS] if i == 0 else ["operator"]
        estimates, budget = at_budget(checkpoint, scratch / f"apply{n}", methods, apply_settings(args))
        if i == 0:
            peers = {m: estimates[m] for m in PEERS}
        est = estimates["operator"]
        rows.append({"n_tasks": n, "train_tasks": len(ckpt.tasks),
                     "operator_at_B": fmt(est), "operator_iqm": f"{est.iqm:.2f}", "operator_lo": f"{est.lo:.2f}",
                     "operator_hi": f"{est.hi:.2f}", "train_minutes": f"{minutes:.1f}", "collection": collection,
                     "settings": settings})
        print(", ".join(f"{k}: {v}" for k, v in rows[-1].items()), flush=True)
        # After every count: a run stopped later keeps the points it measured.
        write(rows, peers, budget, f"{args.tasks} test tasks × {args.seeds} seeds")
        plot(rows, peers, budget)
    print(f"wrote {RESULTS / 'scaling.csv'} and {RESULTS / 'scaling.png'}")


def write(rows: list[dict[str, object]], peers: dict, budget: float, runs: str) -> None:
    """``results/scaling.csv``, atomically."""
    atomic_write_csv(RESULTS / "scaling.csv", [*FIELDS, "ppo_at_B", "ars_at_B", "start_at_B", "budget_env_steps",
                                               "runs"],
                     ({**row, **peer_columns(peers), "budget_env_steps": int(budget), "runs": runs} for row in rows))


def plot(rows: list[dict[str, object]], peers: dict, budget: float) -> None:
    """N → the operator's IQM return at B with 95% CIs; the teachers' and the start's as horizontal bands."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    n = [int(r["n_tasks"]) for r in rows]  # type: ignore[call-overload]
    iqm = [float(r["operator_iqm"]) for r in rows]  # type: ignore[arg-type]
    lo = [float(r["operator_lo"]) for r in rows]  # type: ignore[arg-type]
    hi = [float(r["operator_hi"]) for r in rows]  # type: ignore[arg-type]
    ax.errorbar(n, iqm, yerr=[[m - a for m, a in zip(iqm, lo, strict=True)], [b - m for m, b in zip(iqm, hi,
                strict=True)]], marker="o", capsize=3, color="C0", label="operator")
    for name, color, label in (("ppo", "C1", "PPO"), ("ars", "C2", "ARS"), ("no_update", "0.5", "start (no update)")):
        est = peers[name]
        ax.axhspan(est.lo, est.hi, color=color, alpha=0.2)
        ax.axhline(est.iqm, color=color, lw=1, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(v) for v in n])
    ax.set_xlabel("training tasks")
    ax.set_ylabel(f"IQM return at B = {int(budget)} env steps")
    ax.set_title("halfcheetah_vel, held-out test tasks", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
