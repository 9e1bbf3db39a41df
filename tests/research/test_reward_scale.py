"""research/reward_scale.py at ``--quick`` sizes: its s = 1 run reproduces the committed unseen-env curves, it writes
a row per reward scale and budget and the terms of every task, and nothing goes to results/."""

import csv
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "research" / "reward_scale.py"
ENV = "InvertedDoublePendulum-v5"
OUTPUTS = [ROOT / "results" / name for name in ("universal_terms.csv", "universal_reward_scale.csv",
                                               "universal_raw/reward_scale.csv", "universal_raw/reward_scale.png")]


def _rows(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_quick_reward_scale_reproduces_the_committed_run_and_writes_only_under_work(tmp_path: pathlib.Path) -> None:
    before = [p.stat().st_mtime if p.exists() else None for p in OUTPUTS]
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--work", str(work)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "s = 1 reproduces the committed operator curves" in done.stdout

    scales = _rows(work / "universal_reward_scale.csv")
    assert [(r["reward_scale"], r["budget"]) for r in scales] == [
        (s, b) for s in ("1.0", "0.3", "0.1") for b in ("1 batches", "B")]
    assert {r["env"] for r in scales} == {ENV} and {r["seeds"] for r in scales} == {"1"}
    totals = {(r["task"], r["reward_scale"]): r for r in _rows(work / "universal_terms.csv") if r["block"] == "all"}
    assert {(ENV, s) for s in ("1.0", "0.3", "0.1")} <= set(totals)
    assert {task.split("/")[0] for task, _ in totals if task != ENV} == {
        "halfcheetah_rand_params", "hopper_rand_params", "walker2d_rand_params", "ant_dir", "swimmer_vel"}
    # The operator reads the rewards × s: the batch's reward per step as read scales with s.
    as_is, tenth = (float(totals[(ENV, s)]["reward_per_step"]) for s in ("1.0", "0.1"))
    assert abs(tenth - as_is / 10) < 1e-3 * abs(as_is)
    assert (work / "reward_scale.png").stat().st_size > 0
    assert [p.stat().st_mtime if p.exists() else None for p in OUTPUTS] == before
