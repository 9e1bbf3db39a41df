"""``benchmarks/improvement.py --quick``, the evaluation's smoke run, end to end with a variant (about 3 minutes).

It must work with only the package's shipped files and leave ``results/`` alone: the evaluation issue promises it
from a fresh clone, and nothing else runs the benchmark's choosing and reporting path.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_runs_every_stage_and_reports_the_variants() -> None:
    before = subprocess.run(["git", "status", "--porcelain", "results"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    shipped = "results/operators/halfcheetah_vel.safetensors"
    result = subprocess.run([sys.executable, "benchmarks/improvement.py", "--quick", "--variants",
                             f"tasks_16={shipped}", f"tasks_32={shipped}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert figures["best_peer_validation"] in {"ars", "teacher_op_batch", "ppo_tuned", "dr_ars"}
    assert figures["best_operator_validation"] == "operator"  # the only way of deploying it that --quick runs
    # The same checkpoint twice: the same runs, so the scaling figure is exactly zero.
    assert figures["scaling_32_vs_16_validation"] == "0.000 [0.000, 0.000]"
    assert figures["variant_tasks_32_paired_vs_operator_validation"] == "0.000 [0.000, 0.000]"
    outputs = pathlib.Path(figures["outputs"])
    assert (outputs / "improvement_validation_variants.csv").is_file()
    assert subprocess.run(["git", "status", "--porcelain", "results"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout == before
