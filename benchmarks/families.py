"""One operator per task family: each family's ``metaimprove pipeline`` at its own sizes, shipped with its figures.

For every family asked for (default: all but ``halfcheetah_vel``, whose shipped operator comes from a larger
collection and is measured by ``benchmarks/improvement.py``), runs exactly what a user runs,
``metaimprove pipeline task=<family> teacher=<--teacher>``, at the family's sizes (``metaimprove tasks`` lists
them), timed, in a scratch directory. It then ships:

* ``results/operators/<family>.{safetensors,json}``: the operator; ``<family>.collect.yaml``: its collection config;
* ``results/families/<family>.csv``: the held-out curves (operator, PPO, ARS, no update, the nearest training
  checkpoint on the family's ``test`` tasks, fresh starts, one env-step budget B); ``<family>.png``: their plot;

and writes one row per family to ``results/families.csv``: IQM return at B with 95% CIs of the operator, PPO, ARS,
the start and the nearest checkpoint, the operator-vs-PPO and -ARS verdicts (non-overlapping CIs),
``steps_ratio_to_ppo``, the sizes and the pipeline's wall time. The ``halfcheetah_vel`` row is computed the same
way from ``results/improvement_v1.csv`` (``research/improvement_v1.py``'s ``test`` split, fresh starts), so that
every row reads the same statistic. The README's family table is generated from it.

    python benchmarks/families.py [--teacher ppo] [--families hopper_rand_params ant_dir ...]

The shipped family operators are ARS-fitted (the default ``--teacher``), as the ``halfcheetah_vel`` one is.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import OPERATORS, RESULTS, describe_collection, family_budget, finals, fmt, verdict

from metaimprove.evaluation.plot import plot_curves, read_curves, select_splits
from metaimprove.evaluation.stats import Curves, common_grid, curve_band, iqm_ci, reach_ratio
from metaimprove.sim.tasks import load_families
from metaimprove.storage import atomic_write_csv
from metaimprove.teachers import TEACHERS

FAMILIES = RESULTS / "families"
TABLE = RESULTS / "families.csv"
FIELDS = ["family", "operator_at_B", "ppo_at_B", "ars_at_B", "start_at_B", "nearest_at_B", "operator_vs_ppo",
          "operator_vs_ars", "steps_ratio_to_ppo", "budget_env_steps", "tasks_x_seeds", "training", "pipeline_minutes",
          "source"]
PEERS = ("ppo", "ars", "no_update", "nearest")


def family_row(curves: Curves, budget: float) -> dict[str, str]:
    """The table cells of one family's held-out curves (methods operator and :data:`PEERS`)."""
    at_b = {m: iqm_ci(finals(curves.where(method=m), budget)) for m in ("operator", *PEERS)}
    bands = {m: curve_band(curves.where(method=m), common_grid(curves.where(method=m))) for m in ("operator", "ppo")}
    runs = curves.where(method="operator").runs()
    return {
        "operator_at_B": fmt(at_b["operator"]), "ppo_at_B": fmt(at_b["ppo"]), "ars_at_B": fmt(at_b["ars"]),
        "start_at_B": fmt(at_b["no_update"]), "nearest_at_B": fmt(at_b["nearest"]),
        "operator_vs_ppo": verdict(at_b["operator"], at_b["ppo"]),
        "operator_vs_ars": verdict(at_b["operator"], at_b["ars"]),
        "steps_ratio_to_ppo": f"{reach_ratio(bands['operator'], bands['ppo'], budget):.3f}",
        "budget_env_steps": str(int(budget)),
        "tasks_x_seeds": f"{len(runs)} × {len(next(iter(runs.values())))}",
    }


def run_family(family: str, teacher: str, scratch: Path) -> dict[str, str]:
    """Run the family's pipeline with ``teacher``, ship its operator, collection config, curves and plot; its
    table row."""
    out = scratch / family
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "metaimprove", "pipeline", f"task={family}", f"teacher={teacher}",
                    f"out={out}"], check=True)
    minutes = (time.perf_counter() - began) / 60
    OPERATORS.mkdir(parents=True, exist_ok=True)
    FAMILIES.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".json"):
        shutil.copy(out / "operator" / f"operator{suffix}", OPERATORS / f"{family}{suffix}")
    shutil.copy(out / "dataset" / "config.yaml", OPERATORS / f"{family}.collect.yaml")
    shutil.copy(out / "apply" / "curves.csv", FAMILIES / f"{family}.csv")
    budget = float(family_budget(family, out / "operator" / "operator.safetensors"))
    curves = read_curves([FAMILIES / f"{family}.csv"])
    plot_curves(curves, FAMILIES / f"{family}.png", budget=budget)
    return {"family": family, **family_row(curves, budget),
            "training": describe_collection(yaml.safe_load((OPERATORS / f"{family}.collect.yaml").read_text())),
            "pipeline_minutes": f"{minutes:.1f}", "source": "benchmarks/families.py (metaimprove pipeline)"}


def halfcheetah_vel_row() -> dict[str, str] | None:
    """The shipped ``halfcheetah_vel`` operator's row, from ``research/improvement_v1.py``'s committed curves."""
    path = RESULTS / "improvement_v1.csv"
    if not path.exists():
        return None
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test" and r["start"] in ("fresh", "any")]
    curves = select_splits(read_curves([path]), ["test"])
    budget = float(max(int(r["env_steps"]) for r in rows if r["method"] == "ppo"))
    sizes = yaml.safe_load((OPERATORS / "halfcheetah_vel.collect.yaml").read_text())
    return {"family": "halfcheetah_vel", **family_row(curves, budget),
            "training": describe_collection(sizes), "pipeline_minutes": "",
            "source": "research/improvement_v1.py"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = [f for f in load_families() if f != "halfcheetah_vel"]
    parser.add_argument("--families", nargs="*", choices=choices, default=choices,
                        help="families whose pipeline to rerun (none: only refresh the table from the committed "
                             "curves and the halfcheetah_vel row from results/improvement_v1.csv)")
    parser.add_argument("--teacher", choices=sorted(TEACHERS), default="ars",
                        help="the teacher every stage of the pipelines uses (the operator learns from its pairs)")
    args = parser.parse_args()
    table = {}
    if TABLE.exists():
        with TABLE.open() as f:
            table = {r["family"]: r for r in csv.DictReader(f)}
    # A kept row's figures are recomputed from its committed curves, so they always agree (and a column added
    # to the table since is filled in).
    for family, row in table.items():
        if family != "halfcheetah_vel" and (FAMILIES / f"{family}.csv").exists():
            row.update(family_row(read_curves([FAMILIES / f"{family}.csv"]), float(row["budget_env_steps"])),
                       training=describe_collection(yaml.safe_load((OPERATORS / f"{family}.collect.yaml").read_text())))
    scratch = Path(tempfile.mkdtemp(prefix="families-"))
    for family in args.families:
        table[family] = run_family(family, args.teacher, scratch)
        print(", ".join(f"{k}: {v}" for k, v in table[family].items()), flush=True)
        _write(table)  # after every family: a later failure loses nothing measured
    reference = halfcheetah_vel_row()
    if reference:
        table["halfcheetah_vel"] = reference
    _write(table)
    shutil.rmtree(scratch)
    print(f"wrote {TABLE}")


def _write(table: dict[str, dict[str, str]]) -> None:
    atomic_write_csv(TABLE, FIELDS, (table[k] for k in sorted(table)))


if __name__ == "__main__":
    main()
