"""Which meta-learned start ships as the operator's learned start? Each candidate θ₀, measured on validation tasks.

Both candidates are meta-trained by first-order Reptile on the shipped operator's training collection
(``runs/ars32d64s_x48``) for its 6.29 M env steps: ``operator``, with the operator's own applications as the inner
loop (``metaimprove metalearn task=halfcheetah_vel inner=operator operator_path=halfcheetah_vel
dataset=runs/ars32d64s_x48 out=runs/meta_op``), and ``ars``, with ARS's (the shipped
``results/operators/halfcheetah_vel.meta.safetensors``, the ``meta_ars`` peer's start). Each is applied as
``operator_learned_start`` on the 8 validation tasks (``train`` 32-39) × 3 seeds at B = 61440 env steps, and scored
per task, normalized (0: the task's fresh start return, 1: its reference return, ``results/references.csv``), at 1,
2, 4 and 8 of the operator's batches and at B, each with a 95% CI resampling tasks, then seeds.

**Chosen**, by the rule committed before these runs (docs/evaluation.md, "Rules that keep it honest"): the higher
mean of those five mean scores; a tie to three decimals goes to ``operator``. ``--ship`` copies the chosen start to
``results/operators/halfcheetah_vel.start.safetensors`` (with its JSON, and a YAML saying where it came from), the
file ``apply start=learned`` and ``operator_learned_start`` read beside the operator. Writes
``results/learned_start.csv``. Nothing is measured on test tasks.

    python research/learned_start.py [--candidate NAME=POLICY ...] [--work runs/learned_start] [--ship]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.plot import read_curves
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.evaluation.stats import report_budgets, score_ci
from metaimprove.operator.checkpoint import LEARNED_START_SUFFIX, OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.tasks import TaskConfig
from metaimprove.storage import atomic_write_csv, meta_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import BUDGET, OPERATORS, RESULTS, ROOT, normalized_scores

FAMILY = "halfcheetah_vel"
VALIDATION = ("train", 32, 8, 3)
"""split, first task, tasks, seeds: the validation tasks no collection holds"""
CANDIDATES = {"operator": ROOT / "runs" / "meta_op" / "policy.safetensors",
              "ars": OPERATORS / f"{FAMILY}.meta.safetensors"}
"""the candidates by name: the operator-inner and ARS-inner Reptile starts (the tie goes to the first)"""
COMMANDS = {"operator": f"metaimprove metalearn task={FAMILY} inner=operator operator_path={FAMILY} "
                        "dataset=runs/ars32d64s_x48 out=runs/meta_op",
            "ars": f"metaimprove metalearn task={FAMILY} dataset=runs/ars32d64s_x48"}
"""the command that made each default candidate"""
OUT = RESULTS / "learned_start.csv"
SHIPPED = OPERATORS / f"{FAMILY}{LEARNED_START_SUFFIX}"


def measure(name: str, policy: Path, work: Path, batch: float) -> dict[str, object]:
    """Candidate ``name``'s row: its mean normalized score [95% CI] at each budget, and their mean."""
    split, start, n_tasks, seeds = VALIDATION
    out = work / name
    apply(ApplyConfig(operator_path=FAMILY, out=str(out), task=TaskConfig(FAMILY), split=split, task_start=start,
                      n_tasks=n_tasks, seeds=seeds, budget=BUDGET, methods=["operator_learned_start"],
                      learned_start=str(policy), workers=2))
    budgets = [b for b in report_budgets(batch, BUDGET) if b <= BUDGET]
    scores = normalized_scores(read_curves([out / "curves.csv"]), budgets)["operator_learned_start"]
    row: dict[str, object] = {"candidate": name, "policy": str(policy.relative_to(ROOT)) if policy.is_relative_to(ROOT)
                              else str(policy)}
    means = []
    for budget in budgets:
        est = score_ci(scores[budget])
        means.append(est.value)
        label = "B" if budget == BUDGET else f"{budget / batch:g}_batches"
        row[f"score_{label}"] = f"{est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]"
    row["mean_score"] = f"{np.mean(means):.3f}"
    return row


def ship(name: str, policy: Path) -> None:
    """Copy the chosen start beside the operator, with a YAML saying which it is and what made it."""
    shutil.copyfile(policy, SHIPPED)
    shutil.copyfile(meta_path(policy), meta_path(SHIPPED))
    SHIPPED.with_suffix(".yaml").write_text(
        f"# The operator's learned start {SHIPPED.name}: the '{name}' candidate of research/learned_start.py "
        f"(results/learned_start.csv),\n# written by\n# {COMMANDS.get(name, str(policy))}\n"
        f"candidate: {name}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", action="append", default=None, metavar="NAME=POLICY",
                        help="a candidate start (default: the two of CANDIDATES)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "learned_start")
    parser.add_argument("--ship", action="store_true", help="copy the chosen start beside the operator")
    args = parser.parse_args()
    try:
        candidates = (dict(c.split("=", 1) for c in args.candidate) if args.candidate
                      else {k: str(v) for k, v in CANDIDATES.items()})
    except ValueError:
        raise SystemExit("--candidate takes NAME=POLICY") from None
    missing = [f"{n} ({p})" for n, p in candidates.items() if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"candidate start(s) missing: {', '.join(missing)}; see this script's docstring for the "
                         "commands that make them")
    _, ckpt = OperatorCheckpoint.load(OPERATORS / f"{FAMILY}.safetensors")
    batch = float(BatchSchedule.of(ckpt).batch)
    rows = [measure(name, Path(path), args.work, batch) for name, path in candidates.items()]
    best = max(rows, key=lambda r: float(str(r["mean_score"])))  # max keeps the first of equals
    for row in rows:
        row["chosen"] = row is best
    atomic_write_csv(OUT, list(rows[0]), rows)
    for row in rows:
        print(", ".join(f"{k}: {v}" for k, v in row.items()))
    if args.ship:
        ship(str(best["candidate"]), Path(candidates[str(best["candidate"])]))
        print(f"shipped: {SHIPPED.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
