"""What does each variant of the shipped operator's fit give, on its own family? Each against the shipped one.

Each variant is fitted to the shipped operator's collection (``runs/ars32d64s_x48``) with every setting the shipped
one's but one, applied on the 8 validation tasks (``train`` 32-39) × 3 seeds at B = 61440 env steps from fresh
starts, and its per-task normalized scores at 1, 2, 4 and 8 batches and at B are paired with the shipped operator's
and ARS's committed validation runs (``results/improvement_validation.csv``). Writes
``results/operator_variants.csv``, one row per (variant, budget). Nothing is measured on test tasks.

- ``agnostic`` (``features.agnostic=true``): reads nothing tied to the robot's observation or action size, so one set
  of weights can serve every robot (docs/design.md, "One operator for many robots"): what does that give up?
- ``best_targets`` (``pairs.targets=best``): imitates the best policy its teacher run reached later instead of the
  next step (docs/design.md, "Hindsight pairs and the ask"): does knowing where a run goes beat its next step?
- ``memory`` (``operator.memory=16``): carries a GRU state across applications (docs/design.md, "Memory across
  applications"): does knowing how its last steps went make its next one better?

Selection rule, fixed before any variant's figures: a variant replaces the shipped fit only if its paired
difference with the shipped operator at B has a 95% CI whose lower end is above 0 and no earlier budget's CI lies
wholly below 0. Otherwise the shipped fit stays and the variant's rows are reported as they are.

Each variant's operator is fitted by (about 15 minutes each on 2 cores)::

    metaimprove train dataset=runs/ars32d64s_x48 features.n_envs=32 ask_k=1 "features.warmup=[[8,4096]]" \\
        <the variant's setting> out=runs/<its directory>       # VARIANTS below

    python research/operator_variants.py [--variants agnostic best_targets memory] [--work runs/operator_variants]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metaimprove.storage import atomic_write_csv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import RESULTS, ROOT, against_validation

OUT = RESULTS / "operator_variants.csv"
VARIANTS = {"agnostic": ("features.agnostic=true", "op_agnostic"), "best_targets": ("pairs.targets=best", "op_best"),
            "memory": ("operator.memory=16", "op_memory")}
"""each variant by name: the one setting its fit changes, and its training run's directory under runs/"""
BASELINES = ("operator", "ars")
"""the committed validation methods each variant is paired with: the shipped operator and its teacher"""


def checkpoint(name: str) -> Path:
    """Where variant ``name``'s operator is."""
    return ROOT / "runs" / VARIANTS[name][1] / "operator.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "operator_variants")
    args = parser.parse_args()
    missing = [f"{name} ({checkpoint(name)})" for name in args.variants if not checkpoint(name).is_file()]
    if missing:
        raise SystemExit(f"variant operator(s) missing: {', '.join(missing)}; fit them with the command in this "
                         "script's docstring")
    rows = [{"variant": name, "setting": VARIANTS[name][0], **row} for name in args.variants
            for row in against_validation(checkpoint(name), args.work / name, "score", BASELINES)]
    atomic_write_csv(OUT, list(rows[0]), rows)
    for row in rows:
        print(", ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
