"""research/leave_one_robot_out.py end to end at ``--quick`` sizes: every stage runs, the csv holds a row per budget
with finite figures, a rerun reuses every stage's work and writes the same rows, and nothing goes to results/."""

import csv
import math
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "research" / "leave_one_robot_out.py"
SHARED = [ROOT / "results" / name for name in ("references_runs.csv", "references.csv", "leave_one_robot_out.csv")]
"""the results/ files a full run writes"""


def _stamps() -> list[float | None]:
    return [p.stat().st_mtime if p.exists() else None for p in SHARED]


def test_quick_leave_one_robot_out_runs_every_stage_and_resumes(tmp_path: pathlib.Path) -> None:
    work, before = tmp_path / "work", _stamps()
    command = [sys.executable, str(SCRIPT), "--quick", "--heldout", "hopper_rand_params", "--work", str(work)]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    table = work / "leave_one_robot_out.csv"
    written = table.read_text()
    with table.open() as f:
        rows = list(csv.DictReader(f))

    assert [(r["heldout"], r["budget"]) for r in rows] == [
        ("hopper_rand_params", b) for b in ("1 batches", "2 batches", "4 batches", "B")]
    assert {r["trained_on"] for r in rows} == {"ant_dir halfcheetah_rand_params swimmer_vel walker2d_rand_params"}
    assert {r["best_peer_method"] for r in rows} <= {"ars", "ppo", "ppo_tuned"}
    figures = ["operator", "ars", "ppo", "ppo_tuned", "best_peer", "operator_minus_ars", "operator_minus_best_peer",
               "steps_to_best_peer"]
    for row in rows:
        for name in figures:
            value, lo, hi = (float(x) for x in row[name].replace("[", "").replace("]", "").replace(",", "").split())
            assert all(math.isfinite(x) for x in (value, lo, hi)) and lo <= value <= hi, (row["budget"], name)

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(2 were already done)") == 4  # each robot's collection
    assert "after epoch 2 (the fit had finished)" in again.stdout
    assert "4 of 4 runs were already done" in again.stdout
    assert "2 reference runs done, 0 to go" in again.stdout
    assert table.read_text() == written
    assert _stamps() == before
