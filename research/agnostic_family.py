"""What does a shape-agnostic operator give up on its own family? It against the per-family one, on validation tasks.

An operator with ``features.agnostic=true`` reads nothing that depends on the robot's observation or action size
(docs/design.md, "One operator for many robots"), so one set of weights can serve every robot; the per-family
operator also reads each sampled transition's observation and action and the role of each weight by the input or
output it touches. This study fits the agnostic variant to the shipped operator's collection with every other
setting the shipped one's, applies it on the 8 validation tasks (``train`` 32-39) × 3 seeds at B = 61440 env steps
from fresh starts, and pairs its per-task normalized scores at 1, 2, 4 and 8 batches and at B with the shipped
operator's and ARS's committed validation runs (``results/improvement_validation.csv``). Writes
``results/agnostic_family.csv``. Nothing is measured on test tasks.

The agnostic operator is fitted by (about 15 minutes on 2 cores)::

    metaimprove train dataset=runs/ars32d64s_x48 features.n_envs=32 ask_k=1 "features.warmup=[[8,4096]]" \\
        features.agnostic=true out=runs/op_agnostic

    python research/agnostic_family.py [--operator runs/op_agnostic/operator.safetensors] [--work runs/agnostic_family]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.storage import atomic_write_csv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import RESULTS, ROOT, against_validation

OUT = RESULTS / "agnostic_family.csv"
BASELINES = ("operator", "ars")
"""the committed validation methods the agnostic operator is paired with: the per-family operator and its teacher"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operator", type=Path, default=ROOT / "runs" / "op_agnostic" / "operator.safetensors")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "agnostic_family")
    args = parser.parse_args()
    if not args.operator.is_file():
        raise SystemExit(f"{args.operator} is missing: fit it with the command in this script's docstring")
    if not OperatorCheckpoint.load(args.operator)[1].features.agnostic:
        raise SystemExit(f"{args.operator} is a per-family operator: fit it with features.agnostic=true")
    rows = against_validation(args.operator, args.work, "agnostic", BASELINES)
    atomic_write_csv(OUT, list(rows[0]), rows)
    for row in rows:
        print(", ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
