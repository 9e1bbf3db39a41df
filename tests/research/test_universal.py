"""research/universal.py end to end at ``--quick`` sizes: every stage runs, both csvs hold a row per budget with finite
figures, the shipped operator resolves by name, a rerun reuses every stage's work and writes the same rows, a
``--variant`` fits its candidate beside it and writes under its own name, a family without a score scale gets a row
that says so, and nothing goes to results/."""

import csv
import math
import pathlib
import subprocess
import sys

import pytest
import yaml

from metaimprove.operator import checkpoint
from metaimprove.operator.checkpoint import OperatorCheckpoint, resolve_operator

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "research" / "universal.py"
ROBOTS = ["halfcheetah_rand_params", "hopper_rand_params", "walker2d_rand_params", "ant_dir", "swimmer_vel"]
SHARED = [ROOT / "results" / name for name in ("references_runs.csv", "references.csv", "universal_families.csv",
                                               "universal_unseen_env.csv", "operators/universal.safetensors")]
"""the results/ files a full run writes"""


def _stamps() -> list[float | None]:
    return [p.stat().st_mtime if p.exists() else None for p in SHARED]


def _rows(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _assert_finite(row: dict[str, str], names: list[str]) -> None:
    for name in names:
        value, lo, hi = (float(x) for x in row[name].replace("[", "").replace("]", "").replace(",", "").split())
        assert all(math.isfinite(x) for x in (value, lo, hi)) and lo <= value <= hi, (row["budget"], name)


def test_quick_universal_runs_every_stage_ships_by_name_and_resumes(tmp_path: pathlib.Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    work, before = tmp_path / "work", _stamps()
    command = [sys.executable, str(SCRIPT), "--quick", "--ship", "--work", str(work)]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    tables = [work / "results" / "universal_families.csv", work / "results" / "universal_unseen_env.csv"]
    written = [t.read_text() for t in tables]
    families, env = (_rows(t) for t in tables)

    assert [(r["family"], r["budget"]) for r in families] == [
        ("hopper_rand_params", b) for b in ("1 batches", "2 batches", "4 batches", "8 batches", "B")]
    assert {r["trained_on"] for r in families} == {" ".join(sorted(ROBOTS))}
    for row in families:
        _assert_finite(row, ["universal", "per_family", "universal_minus_per_family"])
        assert row["verdict"] in {"within", "better", "worse"} and row["paired_verdict"] in {"better", "worse", "tie"}
    assert [(r["env"], r["budget"]) for r in env] == [("InvertedDoublePendulum-v5", b) for b in ("1 batches", "B")]
    for row in env:
        _assert_finite(row, ["universal", "ars", "sac", "universal_minus_ars", "universal_minus_sac", "universal_gain",
                             "ars_gain", "sac_gain"])
        assert math.isfinite(float(row["reference_return"])) and float(row["reward_threshold"]) == 9100.0
    assert {p.name for p in (work / "results" / "universal").iterdir()} == {
        f"{name}.{suffix}" for name in ("hopper_rand_params", "InvertedDoublePendulum-v5") for suffix in ("csv", "png")}

    # --ship: the operator and its five collections' configs, found by name where the shipped operators live.
    shipped = work / "operators"
    collections = yaml.safe_load((shipped / "universal.collect.yaml").read_text())["collections"]
    assert [c["task"]["family"] for c in collections] == ROBOTS
    assert {c["teacher_name"] for c in collections} == {"ars"}
    monkeypatch.setattr(checkpoint, "shipped_dir", lambda: shipped)
    assert resolve_operator("universal") == shipped / "universal.safetensors"
    _, ckpt = OperatorCheckpoint.load("universal")
    assert ckpt.features.agnostic and ckpt.families == sorted(ROBOTS)

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(2 were already done)") == 5  # each robot's collection
    assert "after epoch 2 (the fit had finished)" in again.stdout
    assert again.stdout.count("1 of 1 runs were already done") == 2  # the universal and the per-family operator
    assert "6 of 6 runs were already done" in again.stdout  # the env's three methods × two seeds
    assert again.stdout.count("2 reference runs done, 0 to go") == 2  # the family's task and the env
    assert [t.read_text() for t in tables] == written

    # --variant: the same collections, a fit of its own with the variant's settings, outputs under its own name.
    # ant_dir's tiny references end below its fresh starts: one row that says so; --env alone: no env stage.
    unscored = subprocess.run([*command[:3], "--variant", "raw", "--families", "ant_dir", "--env", "--work",
                               str(work)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert unscored.returncode == 0, unscored.stderr[-3000:]
    assert unscored.stdout.count("(2 were already done)") == 5 and "[6/8]" not in unscored.stdout
    [row] = _rows(work / "results" / "universal_raw_families.csv")
    assert (row["family"], row["budget"], row["verdict"], row["paired_verdict"]) == (
        "ant_dir", "B", "no score scale", "no score scale")
    assert not (work / "results" / "universal_raw_unseen_env.csv").exists()
    variant = subprocess.run([*command[:3], "--variant", "raw", "--families", "--no-sac", "--work", str(work)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert variant.returncode == 0, variant.stderr[-3000:]
    assert "after epoch 2 (the fit had finished)" in variant.stdout
    _, candidate = OperatorCheckpoint.load(work / "universal_raw" / "operator" / "operator.safetensors")
    assert candidate.features.agnostic and not candidate.features.reward_symlog
    assert ckpt.features.reward_symlog
    rows = _rows(work / "results" / "universal_raw_unseen_env.csv")
    assert [r["budget"] for r in rows] == ["1 batches", "B"] and "sac_gain" not in rows[0]
    for row in rows:
        _assert_finite(row, ["universal", "ars", "universal_minus_ars", "universal_gain", "ars_gain"])
    assert [t.read_text() for t in tables] == written
    assert _stamps() == before


def test_a_variant_is_never_shipped() -> None:
    refused = subprocess.run([sys.executable, str(SCRIPT), "--variant", "raw", "--ship"], capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "--variant measures a candidate and ships nothing" in refused.stderr
