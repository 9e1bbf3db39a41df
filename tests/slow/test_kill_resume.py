"""Kill-safety at full size: 20 SIGKILLs of ``metaimprove collect`` at seeded-random moments, each run resumed.

What ``benchmarks/kill_resume.py`` measured for the ``kill_resume`` rows of ``results/reliability.csv`` (those rows
stay committed): every dataset a killed-and-resumed collection completes is byte for byte the uninterrupted one.
About 15 minutes on a shared 2-core machine; ``KILL_RESUME_KILLS`` sets fewer kills for a quick look.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import TINY_OVERRIDES, dataset_files
from tests.slow.kill_resume import kill_and_resume

KILLS = int(os.environ.get("KILL_RESUME_KILLS", "20"))
"""SIGKILLs to land mid-run (the committed rows: 20)"""
SEED = 0
"""seeds the kill moments"""
JITTER = 3.0
"""kill up to this many seconds after the drawn number of shards is listed"""
OVERRIDES = [*TINY_OVERRIDES, "workers=2"]


@pytest.mark.slow
def test_every_killed_and_resumed_collection_equals_the_uninterrupted_one(reference_dataset: Path,
                                                                          tmp_path: Path) -> None:
    stats = kill_and_resume(tmp_path / "killed", reference_dataset, OVERRIDES, KILLS, SEED, JITTER, tmp_path)
    assert stats.kills == KILLS, stats
    assert stats.problems == [], stats.problems
    rounds = sorted((tmp_path / "killed").iterdir())
    assert len(rounds) == stats.rounds >= 1
    expected = dataset_files(reference_dataset)
    for dataset in rounds:
        assert dataset_files(dataset) == expected, f"{dataset.name} differs from the uninterrupted collection"
